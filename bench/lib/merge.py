#!/usr/bin/python3
"""merge.py RESULTS_DIR: concatenate RESULTS_DIR/runs/rep<K>/{sink,relay,concurrency}.tsv
(written by the shared harness, one harness call per repetition) into
RESULTS_DIR/<name>.tsv, with the 'rep' column set to K."""
import glob
import os
import re
import sys

d = sys.argv[1]
reps = sorted(glob.glob(os.path.join(d, "runs", "rep*")),
              key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)) or 0))
for name in ("sink.tsv", "relay.tsv", "concurrency.tsv"):
    header, rows = None, []
    for r in reps:
        k = re.sub(r"\D", "", os.path.basename(r))
        path = os.path.join(r, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = [l.rstrip("\n") for l in f if l.strip()]
        if not lines:
            continue
        header = header or lines[0]
        cols = lines[0].split("\t")
        for l in lines[1:]:
            v = l.split("\t")
            if "rep" in cols:
                v[cols.index("rep")] = k
            rows.append("\t".join(v))
    if header:
        with open(os.path.join(d, name), "w") as f:
            f.write(header + "\n" + "".join(r + "\n" for r in rows))
