"""etc/systemd/tern.service: systemd-analyze verify accepts it (when systemd-analyze is installed), and it
says what the README promises: Type=notify, reload by SIGHUP, the tern user of tern.sysusers, the spool of
tern.tmpfiles writable, CAP_NET_BIND_SERVICE as the only capability, a stop timeout above the grace."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO, TERN_BIN

UNIT = REPO / "etc" / "systemd" / "tern.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


def test_unit_says_what_the_readme_promises():
    d = directives()
    assert d["Type"] == ["notify"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"][0].split()[1:] == ["serve", "--config", "/etc/tern/tern.toml"]
    assert d["User"] == ["tern"] and d["Group"] == ["tern"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"] == d["AmbientCapabilities"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["SystemCallFilter"] == ["@system-service"]
    assert int(d["TimeoutStopSec"][0].rstrip("s")) > 30, "systemd must wait longer than the 30 s grace"
    sysusers = (REPO / "etc" / "systemd" / "tern.sysusers").read_text()
    assert re.search(r"^u tern ", sysusers, re.M)
    tmpfiles = (REPO / "etc" / "systemd" / "tern.tmpfiles").read_text()
    spool = re.search(r"^d (\S+) 0750 tern tern", tmpfiles, re.M).group(1)
    assert d["ReadWritePaths"] == [spool]


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "tern.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tern", str(TERN_BIN)))
    # --man=no: the pages are in etc/man, not installed here.
    p = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
