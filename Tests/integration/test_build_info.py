"""What an operator checks on day one: `tern --version` (and every subcommand's), the version and commit
in the ready line, the tern_build_info metric, and a # HELP and # TYPE line for every metric family of
`tern serve` and `tern sink`."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request

from conftest import REPO, TERN_BIN, make_message
from test_sink import Sink

VERSION_RE = re.compile(
    r"^tern (?P<version>\d+\.\d+\.\d+\S*) \(commit (?P<commit>[0-9a-f]{12}(?:-dirty)?|unknown), "
    r"Swift (?P<swift>\d+\.\d+(?:\.\d+)?|unknown)\)$")
SUBCOMMANDS = [[], ["serve"], ["sink"], ["blast"], ["trace"], ["check-config"], ["passwd"], ["queue"],
               ["queue", "list"]]


def version_line() -> re.Match:
    out = subprocess.run([str(TERN_BIN), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    m = VERSION_RE.match(out.stdout.rstrip("\n"))
    assert m, f"tern --version: {out.stdout!r}"
    return m


def test_version_of_tern_and_each_subcommand():
    expected = version_line().group(0)
    for sub in SUBCOMMANDS:
        out = subprocess.run([str(TERN_BIN), *sub, "--version"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"tern {' '.join(sub)} --version: exit {out.returncode}: {out.stderr}"
        assert out.stdout == expected + "\n", f"tern {' '.join(sub)} --version: {out.stdout!r}"


def test_version_names_the_commit_built():
    """In a git checkout the binary names its HEAD, not the commit of an earlier build."""
    git = shutil.which("git")
    head = subprocess.run([git, "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True) if git and (REPO / ".git").exists() else None
    commit = version_line().group("commit")
    if head is None or head.returncode != 0:
        assert commit == "unknown"
    else:
        assert commit.removesuffix("-dirty") == head.stdout.strip(), (commit, head.stdout)


def families(text: str) -> dict[str, dict]:
    """Metric families of a Prometheus text exposition: name -> {help, type, samples}; asserts that
    each family has exactly one HELP and one TYPE line, HELP first, before its samples."""
    fams: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if not line:
            continue
        m = re.match(r"^# (HELP|TYPE) (\S+) ?(.*)$", line)
        if m:
            kind, name, rest = m.groups()
            fam = fams.setdefault(name, {"help": None, "type": None, "samples": []})
            if kind == "HELP":
                assert fam["help"] is None and fam["type"] is None, f"HELP of {name} again or after its TYPE"
                assert rest.strip(), f"empty HELP for {name}"
                fam["help"] = rest
            else:
                assert fam["type"] is None, f"second TYPE line for {name}"
                fam["type"] = rest
            current = name
            continue
        assert not line.startswith("#"), f"unexpected comment line {line!r}"
        name = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", line).group(1)
        base = name
        if current and fams[current]["type"] == "histogram":
            base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert base == current, f"sample {line!r} outside its family ({current})"
        fams[current]["samples"].append(line)
    for name, fam in fams.items():
        assert fam["help"], f"{name} has no # HELP line"
        assert fam["type"] in ("counter", "gauge", "histogram"), f"{name}: TYPE {fam['type']!r}"
    return fams


def check_build_info(fams: dict[str, dict]) -> None:
    v = version_line()
    assert fams["tern_build_info"]["type"] == "gauge"
    samples = fams["tern_build_info"]["samples"]
    assert len(samples) == 1, samples
    m = re.match(r'^tern_build_info\{(.*)\} (\S+)$', samples[0])
    assert m and float(m.group(2)) == 1, samples
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    assert labels == {"version": v["version"], "commit": v["commit"], "swift": v["swift"]}, labels


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def test_serve_ready_line_and_metrics(start_tern):
    tern = start_tern()
    v = version_line()
    assert f"tern ready: version {v['version']}, commit {v['commit']}, " in tern.stderr(), tern.stderr()
    # A queued message, so that the families that appear only once seen (by priority) are there too.
    tern.send("alice@example.test", ["bob@example.test"], make_message())
    fams = families(scrape(tern.admin_port))
    check_build_info(fams)
    for name in ("tern_sessions_total", "tern_commands_refused_total", "tern_delivery_delay_seconds",
                 "tern_queue_messages", "tern_queue_messages_by_priority"):
        assert name in fams, sorted(fams)
    assert len(fams) >= 20, sorted(fams)


def test_sink_metrics(tmp_path):
    sink = Sink(tmp_path / "sink", args=["--fault", "stage=rcpt,fraction=0.5,reply=451"]).start()
    try:
        fams = families(scrape(sink.metrics_port))
    finally:
        sink.stop()
    check_build_info(fams)
    for name in ("tern_sink_sessions_total", "tern_sink_faults_total", "tern_sink_sessions_active"):
        assert name in fams, sorted(fams)
