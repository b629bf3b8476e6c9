"""Traffic shaping's configuration (issue 16): `tern check-config` prints [[shaping]], [[backoff]],
[egress] and the dead-destination keys as TOML that loads back; errors name the array element's key
and line; an egress source whose address is not on the machine stops `tern serve` and refuses a
SIGHUP, naming it; a good reload says which shaping tables changed."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import TERN_BIN, Tern

SHAPING = """
[[shaping]]
name = "provider"
domains = ["one.test", ".two.test"]
mx = [".mx.provider.test"]
max_connections = 4
max_messages_per_connection = 50
max_message_rate = "20/s"
max_connection_rate = "300/min"
connection_cache_time = "5s"
tls = "none"
pool = "bulk"

[[backoff]]
reply = '^421 4\\.7\\.0 .*too many connections'
threshold = "3 in 5m"
action = "throttle"
connections = 1
duration = "10m"
rules = ["provider"]

[[backoff]]
name = "slow-down"
reply = "try again later"
threshold = "1 in 1m"
action = "suspend"
duration = "2m"

[egress.sources.a]
address = "127.0.0.21"
ehlo = "mta-a.relay.test"

[egress.sources.b]
address = "127.0.0.22"

[egress.pools.bulk]
sources = { a = 2, b = 1 }

[egress.select]
sender_domains = { "news.relay.test" = "bulk" }
default = "bulk"
"""


def check(path: Path) -> subprocess.CompletedProcess:
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}")
    return subprocess.run([str(TERN_BIN), "check-config", str(path)], capture_output=True, timeout=30)


def test_check_config_prints_the_shaping_tables(tmp_path: Path):
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n[delivery]\ndead_destination_failures = 3\n' + SHAPING)
    p = check(f)
    assert p.returncode == 0, p.stderr.decode()
    doc = tomllib.loads(p.stdout.decode())
    assert doc["delivery"]["dead_destination_failures"] == 3
    assert doc["delivery"]["dead_destination_initial"] == "1m"
    assert doc["delivery"]["dead_destination_maximum"] == "1h"
    (rule,) = doc["shaping"]
    assert rule == {"name": "provider", "domains": ["one.test", ".two.test"], "mx": [".mx.provider.test"],
                    "max_connections": 4, "max_messages_per_connection": 50, "max_message_rate": "20/s",
                    "max_connection_rate": "300/min", "connection_cache_time": "5s", "tls": "none", "pool": "bulk"}
    first, second = doc["backoff"]
    assert first["reply"] == r"^421 4\.7\.0 .*too many connections" and "name" not in first
    assert first["action"] == "throttle" and first["connections"] == 1 and first["rules"] == ["provider"]
    assert second["name"] == "slow-down" and second["action"] == "suspend" and second["duration"] == "2m"
    assert doc["egress"]["sources"] == {"a": {"address": "127.0.0.21", "ehlo": "mta-a.relay.test"},
                                        "b": {"address": "127.0.0.22"}}
    assert doc["egress"]["pools"] == {"bulk": {"sources": {"a": 2, "b": 1}}}
    assert doc["egress"]["select"] == {"sender_domains": {"news.relay.test": "bulk"}, "default": "bulk"}
    # A fixed point: the printed configuration checks and prints the same again.
    again = tmp_path / "effective.toml"
    again.write_bytes(p.stdout)
    q = check(again)
    assert q.returncode == 0 and q.stdout == p.stdout, q.stderr.decode()


@pytest.mark.parametrize("text,line,key", [
    ('[[shaping]]\nname = "a"\ndomains = ["a.test"]\n\n[[shaping]]\nname = "b"\ndomains = ["a.test"]\n',
     8, "shaping[1].domains"),
    ('[[shaping]]\nname = "a"\ndomains = ["a.test"]\nmax_message_rate = "fast"\n', 5, "shaping[0].max_message_rate"),
    ('[[backoff]]\nreply = "(421"\nthreshold = "1 in 1m"\naction = "suspend"\nduration = "1m"\n', 3, "backoff[0].reply"),
    ('[delivery]\ndead_destination_initial = "2h"\n', 3, "delivery.dead_destination_initial"),
    ('[egress.pools.bulk]\nsources = { nowhere = 1 }\n', 3, "egress.pools.bulk.sources.nowhere"),
])
def test_errors_name_key_and_line(tmp_path: Path, text, line, key):
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n' + text)
    p = check(f)
    err = p.stderr.decode()
    assert p.returncode == 78, err
    assert f"line {line}: {key}: " in err, err


def test_a_source_address_not_on_the_machine_stops_serve(tmp_path: Path):
    t = Tern(tmp_path / "t", extra_tables={"egress.sources.far": {"address": "192.0.2.10"}})
    p = subprocess.run([str(TERN_BIN), "serve", "--config", str(t.config_path)], cwd=t.dir,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, err
    assert "egress.sources.far.address: cannot send from 192.0.2.10: the address is not on this machine" in err, err


def test_hup_reports_shaping_changes_and_refuses_an_absent_source(tmp_path: Path):
    t = Tern(tmp_path / "t")
    base = t.config_path.read_text()
    t.start()
    try:
        t.config_path.write_text(base + SHAPING)
        line = t.hup("reloaded ")
        assert "changed shaping, backoff, egress" in line, line
        t.config_path.write_text(base + SHAPING.replace('"127.0.0.22"', '"192.0.2.10"'))
        line = t.hup("reload refused")
        assert "egress.sources.b.address" in line and "not on this machine" in line, line
        assert t.alive()
    finally:
        t.stop()
