#!/usr/bin/python3
"""Medians of bench/blast.sh's runs.tsv, and blast/smtp-source ratios per repetition and overall."""
import csv
import statistics
import sys
from pathlib import Path

d = Path(sys.argv[1])
rows = list(csv.DictReader(open(d / "runs.tsv"), delimiter="\t"))
env = (d / "env.txt").read_text().splitlines()
by = {}
for r in rows:
    by.setdefault(r["generator"], []).append(r)

print(f"# tern blast vs smtp-source into smtp-sink ({d.name})\n")
for line in env[:5]:
    print(f"- {line}")
print()
print("| generator | runs | msg/s median (min–max) | CPU ms/msg median | wall s median | sink counted (all runs) |")
print("|---|---|---|---|---|---|")
med = {}
for gen, rs in by.items():
    mps = [float(r["msg_per_s"]) for r in rs]
    cpu = [float(r["cpu_ms_per_msg"]) for r in rs]
    wall = [float(r["wall_s"]) for r in rs]
    med[gen] = (statistics.median(mps), statistics.median(cpu))
    counted = ", ".join(r["sink_messages"] for r in rs)
    name = {"source": "smtp-source", "blast": "tern blast", "blast-nopipe": "tern blast --no-pipelining"}.get(gen, gen)
    print(f"| {name} | {len(rs)} | {med[gen][0]:,.0f} ({min(mps):,.0f}–{max(mps):,.0f}) | "
          f"{med[gen][1]:.3f} | {statistics.median(wall):.2f} | {counted} |")
for gen in ("blast", "blast-nopipe"):
    if "source" not in med or gen not in med:
        continue
    reps = sorted({r["rep"] for r in rows}, key=int)
    per = []
    for rep in reps:
        s = [float(r["msg_per_s"]) for r in by["source"] if r["rep"] == rep]
        b = [float(r["msg_per_s"]) for r in by[gen] if r["rep"] == rep]
        if s and b and s[0] > 0:
            per.append(b[0] / s[0])
    label = "tern blast" if gen == "blast" else "tern blast --no-pipelining"
    print()
    print(f"Ratio of medians, {label} / smtp-source: **{med[gen][0] / med['source'][0]:.2f}×** msg/s, "
          f"{med[gen][1] / med['source'][1]:.2f}× CPU per message. "
          "Per repetition (msg/s): " + ", ".join(f"{x:.2f}×" for x in per))
