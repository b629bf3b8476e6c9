"""`tern check-config PATH`: a valid file prints the effective config (defaults filled in) as TOML that
loads back the same; a bad one names the key and the line and exits 78."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, TERN_BIN


def check(path: Path, *args: str) -> subprocess.CompletedProcess:
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}")
    return subprocess.run([str(TERN_BIN), "check-config", *args, str(path)], capture_output=True, timeout=30)


def test_defaults_are_filled_in_and_the_output_loads_back(tmp_path: Path):
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n[server]\nmax_recipients = 7\nlisten = ["127.0.0.1:2600"]\n'
                 '[routes]\n"corp.example" = "[10.0.0.5]:25"\n[aliases]\npostmaster = "root@relay.test"\n')
    p = check(f)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    doc = tomllib.loads(out)  # a real TOML parser
    assert doc["hostname"] == "relay.test"
    assert doc["server"]["max_recipients"] == 7
    assert doc["server"]["listen"] == ["127.0.0.1:2600"]
    # Defaults the file left out (the built-in defaults, not etc/tern.toml's values).
    assert doc["server"]["max_connections"] == 20000
    assert doc["server"]["data_timeout"] == "5m"
    assert doc["spool"]["path"] == "var/spool"
    assert doc["delivery"]["retry_schedule"] == ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
    assert doc["routes"] == {"corp.example": "[10.0.0.5]:25"}
    assert doc["aliases"] == {"postmaster": ["root@relay.test"]}
    # A fixed point: checking the printed config prints it again, byte for byte.
    again = tmp_path / "effective.toml"
    again.write_bytes(p.stdout)
    q = check(again)
    assert q.returncode == 0 and q.stdout == p.stdout


def test_shipped_config_is_valid():
    p = check(REPO / "etc" / "tern.toml")
    assert p.returncode == 0, p.stderr.decode()
    assert tomllib.loads(p.stdout.decode())["server"]["listen"] == ["127.0.0.1:2525"]


def test_quiet(tmp_path: Path):
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n')
    p = check(f, "--quiet")
    assert p.returncode == 0 and p.stdout == b""


@pytest.mark.parametrize("text,line,key", [
    ('hostname = "relay.test"\n\n[server]\nvrfy = false\nmax_recipents = 10\n', 5, "server.max_recipents"),
    ('hostname = "relay.test"\n[server]\nmax_recipients = "many"\n', 3, "server.max_recipients"),
    ('[delivery]\nretry_schedule = ["1m", "soon"]\n', 2, "delivery.retry_schedule"),
    ('[routes]\n"corp.example" = "[10.0.0.5]:99999"\n', 2, "routes.\"corp.example\""),
    ('hostname = "relay.test"\n[server\n', 2, None),  # TOML syntax error: the line, no key
])
def test_errors_name_key_and_line(tmp_path: Path, text, line, key):
    f = tmp_path / "tern.toml"
    f.write_text(text)
    p = check(f)
    err = p.stderr.decode()
    assert p.returncode == 78, err
    assert p.stdout == b""
    assert f"line {line}" in err, err
    if key:
        assert key in err, err
    assert str(f) in err, err


def test_missing_file(tmp_path: Path):
    p = check(tmp_path / "nope.toml")
    assert p.returncode == 78
    assert "nope.toml" in p.stderr.decode()
