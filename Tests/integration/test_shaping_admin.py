"""Seeing and steering traffic shaping (issue 16): `tern queue destinations` (and GET /queue/destinations),
`tern queue suspend DEST [--for 1h] [--reason TEXT]` and `tern queue resume DEST` as postmaster actions
in the log, bad input refused with a 400 naming the field, and the per-rule metrics (bounded labels:
rule and source names, never a raw domain).

Run inside `unshare --net` (scripts/test.sh): the providers listen on 127.0.0.30 and up.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request

from conftest import OTHER_IP, TERN_BIN, make_message, send_message, wait_until
from delivery_helpers import log_entries
from test_admin import metrics

SENDER = "sender@sender.test"
WAIT = 30.0
PROVIDER_RULE = {"shaping": [{"name": "provider", "domains": ["a.test", "b.test"]}]}


def send(tern, rcpts: list[str], subject: str) -> str:
    msg = make_message(subject=subject, sender=SENDER, to=", ".join(rcpts))
    return send_message(tern.port, SENDER, rcpts, msg)


def queue(tern, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    p = subprocess.run([str(TERN_BIN), "queue", *args, "--config", str(tern.config_path)],
                       capture_output=True, text=True, timeout=60)
    if expect is not None:
        assert p.returncode == expect, f"tern queue {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def destinations(tern) -> dict[str, dict]:
    """`tern queue destinations --json`: rows by destination (one source: no egress configured)."""
    data = json.loads(queue(tern, "destinations", "--json").stdout)
    assert data["count"] == len(data["destinations"]) and data["delivery_enabled"] is True
    rows = {}
    for row in data["destinations"]:
        assert row["destination"] not in rows, data
        rows[row["destination"]] = row
    return rows


def post(tern, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{tern.admin_port}{path}", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def attempts(tern, qid: str) -> int:
    return json.loads(queue(tern, "show", qid, "--json").stdout)["attempts"]


def sent(tern, qid: str) -> list[dict]:
    return log_entries(tern.stderr(), qid, "sent")


def test_destinations_lists_each_destination_with_its_queue(provider, provider_relay):
    # Both next hops down (nothing listens): the mail stays queued, retried every second.
    tern = provider_relay()
    for i in range(2):
        send(tern, [f"user{i}@a.test"], f"to a {i}")
    send(tern, ["carol@c.test"], "to c")
    rows = wait_until(lambda: (r := destinations(tern)).get("a.test", {}).get("queued") == 2
                      and r.get("c.test", {}).get("queued") == 1 and r, WAIT,
                      "a.test with 2 queued and c.test with 1", lambda: f"{destinations(tern)}\n{tern.stderr()[-3000:]}")
    for name in ("a.test", "c.test"):
        assert rows[name]["kind"] == "domain" and rows[name]["rule"] == "default", rows[name]
        assert rows[name]["source"] == ""
        assert rows[name]["state"] in ("active", "dead", "suspended"), rows[name]

    def table() -> str | None:
        # Retried every second: a table printed while an attempt is in flight counts it there instead.
        text = queue(tern, "destinations").stdout
        by_name = {line.split()[0]: line for line in text.splitlines()[1:] if line.split()}
        ok = (by_name.get("a.test", "").split()[1:4] == ["-", "default", "2"]
              and by_name.get("c.test", "").split()[1:4] == ["-", "default", "1"])
        return text if ok else None
    text = wait_until(table, WAIT, "the table with a.test 2 and c.test 1 queued",
                      lambda: queue(tern, "destinations").stdout)
    lines = text.splitlines()
    assert lines[0].split() == ["DESTINATION", "SOURCE", "RULE", "QUEUED", "INFLIGHT", "CONNS", "MSG/MIN", "STATE"]
    # Aligned: the QUEUED column ends at the same place on every line.
    ends = {line.index(cell) + len(cell) for line in lines for cell in [line.split()[3]]}
    assert len(ends) == 1, text


def test_in_flight_counts_messages_a_slow_next_hop_holds(provider, provider_relay):
    # The next hop takes DATA and answers the end of data only when released: what tern handed to its
    # two connections is in flight, the third message queued; once answered, nothing is.
    hop = provider(hold=True)
    rule = {"shaping": [{"name": "provider", "domains": ["a.test", "b.test"], "max_connections": 2}]}
    tern = provider_relay(tables=rule)
    ids = [send(tern, [f"user{i}@a.test", f"other{i}@a.test"], f"held {i}") for i in range(3)]
    row = wait_until(lambda: (r := destinations(tern).get("provider", {})).get("in_flight") == 2 and r, 20.0,
                     "two messages in flight at the held next hop", lambda: f"{destinations(tern)}\n{tern.stderr()[-3000:]}")
    assert row["kind"] == "rule" and row["connections"] == 2 and row["queued"] == 1, row
    assert not any(sent(tern, qid) for qid in ids), "answered while held"
    text = queue(tern, "destinations").stdout
    line = next(line for line in text.splitlines() if line.startswith("provider (rule)"))
    assert line.split()[2:7] == ["-", "provider", "1", "2", "2/2"], text

    hop.release()
    for qid in ids:
        wait_until(lambda: sent(tern, qid), WAIT, f"{qid} delivered once released", lambda: tern.stderr()[-3000:])
    row = wait_until(lambda: (r := destinations(tern).get("provider", {"in_flight": 0})).get("in_flight") == 0 and r,
                     WAIT, "nothing in flight once every message was answered", lambda: f"{destinations(tern)}")
    assert row.get("queued", 0) == 0, row
    assert sorted(hop.delivered_rcpts()) == sorted([f"user{i}@a.test" for i in range(3)] + [f"other{i}@a.test" for i in range(3)])


def test_suspend_holds_a_destination_without_a_connection_then_resume_sends_it(provider, provider_relay):
    hop = provider()
    other = provider(OTHER_IP)
    tern = provider_relay()

    # Suspended with nothing queued: the suspension holds for mail that arrives later.
    out = queue(tern, "suspend", "a.test", "--for", "2h", "--reason", "maintenance window").stdout
    assert "a.test suspended for 2h: maintenance window" in out, out
    waiting = send(tern, ["alice@a.test"], "waits")
    # Mail to another destination goes meanwhile: once it is delivered, a.test's was not even tried.
    passing = send(tern, ["carol@c.test"], "goes")
    wait_until(lambda: sent(tern, passing), WAIT, "c.test delivered", lambda: tern.stderr()[-3000:])
    row = wait_until(lambda: destinations(tern).get("a.test", {}).get("queued") == 1 and destinations(tern)["a.test"],
                     WAIT, "a.test listed with its message", lambda: f"{destinations(tern)}")
    assert row["state"] == "suspended" and row["reason"] == "maintenance window", row
    assert row["until"] > 0
    assert hop.sessions_seen() == [], hop
    assert attempts(tern, waiting) == 0
    assert not sent(tern, waiting) and not log_entries(tern.stderr(), waiting, "deferred")
    assert other.delivered_rcpts() == ["carol@c.test"]

    text = queue(tern, "destinations").stdout
    line = next(line for line in text.splitlines() if line.startswith("a.test "))
    assert re.search(r"suspended until .+ \(in 1h 5\dm\): maintenance window$", line), text
    assert re.search(r"suspend by the postmaster: a\.test for 2h until \d+: maintenance window", tern.stderr())

    out = queue(tern, "resume", "a.test").stdout
    assert "a.test resumed" in out, out
    wait_until(lambda: sent(tern, waiting), WAIT, "a.test delivered after resume", lambda: tern.stderr()[-3000:])
    assert hop.delivered_rcpts() == ["alice@a.test"]
    assert "resume by the postmaster: a.test" in tern.stderr()
    assert destinations(tern).get("a.test", {}).get("state", "active") == "active"


def test_a_domain_under_a_rule_suspends_the_rule(provider, provider_relay):
    hop = provider()
    tern = provider_relay(tables=PROVIDER_RULE)
    status, reply = post(tern, "/queue/suspend?destination=b.test&reason=provider+asked")
    assert status == 200, reply
    assert reply["group"] == "provider" and reply["kind"] == "rule" and reply["reason"] == "provider asked"
    assert reply["message"].startswith("b.test (rule provider) suspended for 1h"), reply
    # The default duration: an hour.
    assert 3500 < reply["until"] - __import__("time").time() <= 3600
    qa = send(tern, ["alice@a.test"], "under the rule too")
    rows = wait_until(lambda: (r := destinations(tern)).get("provider", {}).get("queued") == 1 and r, WAIT,
                      "the rule's row with a.test's message", lambda: f"{destinations(tern)}")
    assert rows["provider"]["kind"] == "rule" and rows["provider"]["state"] == "suspended", rows
    assert "a.test" not in rows and "b.test" not in rows, rows
    assert queue(tern, "destinations").stdout.splitlines()[1].startswith("provider (rule) ")

    status, reply = post(tern, "/queue/resume?destination=provider")
    assert status == 200 and reply["group"] == "provider", reply
    assert reply["message"] == "rule provider resumed: configured limits again"
    wait_until(lambda: sent(tern, qa), WAIT, "a.test delivered after the rule's resume", lambda: tern.stderr()[-3000:])
    assert hop.delivered_rcpts() == ["alice@a.test"]

    # Per-rule metrics: the rule's name as label, never the domain.
    m = wait_until(lambda: (x := metrics(tern)).get('tern_shaping_recipients_delivered_total{rule=provider,source=}', 0) >= 1
                   and x, WAIT, "the provider rule's delivered counter", lambda: f"{metrics(tern)}")
    # The postmaster's suspension of the rule (every source: source="") counted from suspend to resume.
    assert m.get('tern_shaping_suspended_seconds_total{rule=provider,source=}', 0) > 0, m
    assert 'tern_shaping_connections{rule=provider,source=}' in m
    assert not any("a.test" in key or "b.test" in key for key in m), [k for k in m if "test" in k]


def test_bad_input_gets_a_400_naming_the_field(provider, provider_relay):
    tern = provider_relay()
    cases = {
        "/queue/suspend": "destination: required",
        "/queue/suspend?destination=": "destination: must not be empty",
        "/queue/suspend?destination=a%20b": "destination: ",
        "/queue/suspend?destination=a.test&for=5x": "for: ",
        "/queue/suspend?destination=a.test&for=0s": "for: must be longer than 0s",
        "/queue/suspend?destination=a.test&for=40d": "for: at most 30d",
        "/queue/suspend?destination=a.test&reason=%1b%5b31m": "reason: must not contain control characters",
        "/queue/suspend?destination=a.test&reason=" + "x" * 201: "reason: at most 200 characters",
        "/queue/suspend?destination=a.test&until=1": "unknown parameter \"until\"",
        "/queue/resume": "destination: required",
        "/queue/resume?destination=a.test&for=1h": "unknown parameter \"for\"",
    }
    for path, error in cases.items():
        status, reply = post(tern, path)
        assert status == 400 and reply["error"].startswith(error), (path, status, reply)
    # Actions are POST only; the listing GET only.
    with urllib.request.urlopen(f"http://127.0.0.1:{tern.admin_port}/queue/destinations", timeout=10) as r:
        assert r.status == 200
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{tern.admin_port}/queue/suspend?destination=a.test", timeout=10)
        raise AssertionError("GET /queue/suspend was answered")
    except urllib.error.HTTPError as e:
        assert e.code == 405
    assert post(tern, "/queue/destinations")[0] == 405
    # Nothing of it was carried out.
    assert "by the postmaster" not in tern.stderr()
    # The CLI checks the duration itself (usage error, 64) and passes the endpoint's refusals on (1).
    p = queue(tern, "suspend", "a.test", "--for", "5x", expect=64)
    assert "--for:" in p.stderr
    p = queue(tern, "suspend", "a b", expect=1)
    assert "destination: " in p.stderr and "neither a domain nor a rule" in p.stderr, p.stderr


def test_suspend_with_delivery_off_is_refused(start_tern):
    tern = start_tern(delivery={"enabled": False})
    status, reply = post(tern, "/queue/suspend?destination=a.test")
    assert status == 409 and "delivery is switched off" in reply["error"], reply
    data = json.loads(queue(tern, "destinations", "--json").stdout)
    assert data == {"count": 0, "destinations": [], "delivery_enabled": False}
    out = queue(tern, "destinations").stdout
    assert out.startswith("Delivery disabled"), out


def test_suspend_queued_mail_while_the_next_hops_are_down_then_resume(provider, provider_relay):
    # Both next hops down; dead destinations come back to a probe within a second.
    hop, other = provider(), provider(OTHER_IP)
    hop.stop()
    other.stop()
    tern = provider_relay(delivery={"dead_destination_initial": "1s", "dead_destination_maximum": "1s"})
    to_a = send(tern, ["alice@a.test"], "to a")
    to_c = send(tern, ["carol@c.test"], "to c")
    wait_until(lambda: (r := destinations(tern)).get("a.test", {}).get("queued") == 1
               and r.get("c.test", {}).get("queued") == 1, WAIT, "both destinations listed with their message",
               lambda: f"{destinations(tern)}")
    queue(tern, "suspend", "c.test", "--for", "30m", "--reason", "provider asked us to pause")
    # An attempt already under way when the suspension came ends first; none starts after it.
    wait_until(lambda: destinations(tern)["c.test"].get("in_flight", 0) == 0, WAIT, "c.test's attempt in flight to end")
    tried = attempts(tern, to_c)

    hop.start()
    other.start()
    wait_until(lambda: sent(tern, to_a), WAIT, "a.test delivered once its next hop is back", lambda: tern.stderr()[-3000:])
    # c.test's hop is up too, but it is suspended: no connection, no further attempt.
    row = destinations(tern)["c.test"]
    assert row["state"] == "suspended" and row["reason"] == "provider asked us to pause" and row["queued"] == 1, row
    assert other.sessions_seen() == [], other
    assert attempts(tern, to_c) == tried
    assert re.search(r"suspend by the postmaster: c\.test for 30m until \d+: provider asked us to pause", tern.stderr())

    queue(tern, "resume", "c.test")
    wait_until(lambda: sent(tern, to_c), WAIT, "c.test delivered after resume", lambda: tern.stderr()[-3000:])
    assert other.delivered_rcpts() == ["carol@c.test"] and hop.delivered_rcpts() == ["alice@a.test"]
