"""The delivery driver carries out traffic shaping (issue 16): smoke tests of the wiring. A rule's
max_connections and max_messages_per_connection hold at the provider, with MX rollup putting two
domains under the rule; a dead destination's state reaches spool/shaping.state and holds after a
restart; an unreadable state file is reported and delivery goes on without it. The issue's full list is
test_shaping.py's.

Run inside `unshare --net` (scripts/test.sh): the providers listen on 127.0.0.30 and up.
"""

from __future__ import annotations

import json

from conftest import EGRESS_SOURCES, OTHER_IP, make_message, send_message, wait_until
from delivery_helpers import log_entries

SENDER = "sender@sender.test"
WAIT = 30.0  # the longest any single wait may take


def send(tern, rcpts: list[str], subject: str) -> str:
    msg = make_message(subject=subject, sender=SENDER, to=", ".join(rcpts))
    return send_message(tern.port, SENDER, rcpts, msg)


def sent_lines(tern) -> list[dict]:
    return log_entries(tern.stderr(), status="sent")


def test_a_rule_by_mx_limits_connections_and_messages_per_connection(provider, provider_relay):
    # A slow provider, so mail piles up and the relay would open more connections if it could.
    hop = provider(delay=0.05)
    rule = {"name": "provider", "mx": [".provider.test"], "max_connections": 2, "max_messages_per_connection": 3}
    tern = provider_relay(tables={"shaping": [rule]})
    rcpts = [f"u{i}@{'a' if i % 2 else 'b'}.test" for i in range(24)]
    for i, rcpt in enumerate(rcpts):
        send(tern, [rcpt], f"message {i}")
    wait_until(lambda: len(sent_lines(tern)) >= len(rcpts), WAIT, f"{len(rcpts)} status=sent lines",
               lambda: f"{hop}\n{tern.stderr()[-4000:]}")

    sessions = hop.sessions_seen()
    assert sorted(hop.delivered_rcpts()) == sorted(rcpts)
    # Both domains under the one rule (their MX is the provider's host): two connections at most.
    assert 1 <= hop.max_open <= 2, (hop.max_open, sessions)
    assert all(len(s.messages) <= 3 for s in sessions), [len(s.messages) for s in sessions]
    assert len(sessions) >= len(rcpts) // 3, sessions


def test_a_dead_destination_is_kept_across_a_restart(provider, provider_relay):
    other = provider(ip=OTHER_IP)
    # Nothing listens at the provider's address: one refused connection makes it dead for an hour.
    tern = provider_relay(delivery={"dead_destination_failures": 1, "dead_destination_initial": "1h",
                                    "dead_destination_maximum": "1h"})
    send(tern, ["alice@a.test"], "to a dead destination")
    tern.wait_log("destination=a.test: delivery temporarily suspended")
    state = tern.spool / "shaping.state"
    wait_until(lambda: state.exists() and "a.test" in state.read_text(), WAIT, "the state file naming a.test",
               lambda: tern.stderr()[-4000:])
    lanes = json.loads(state.read_text())["lanes"]
    assert [lane["lane"]["group"]["name"] for lane in lanes] == ["a.test"], lanes
    assert lanes[0]["dead"] is True and lanes[0]["suspendedUntil"] > 0, lanes

    # The provider comes back while the relay is down: after the restart it is still suspended.
    hop = provider()
    tern.stop()
    tern.start()
    tern.wait_log("shaping state: restored 1 lane(s)")
    # Mail to another provider goes out: the relay is delivering, and still leaves a.test alone.
    qid = send(tern, ["carol@c.test"], "to another provider")
    wait_until(lambda: log_entries(tern.stderr(), qid, "sent"), WAIT, "delivery to c.test",
               lambda: f"{other}\n{tern.stderr()[-4000:]}")
    assert hop.sessions_seen() == [], hop.sessions_seen()
    assert tern.stderr().count("destination=a.test: delivery temporarily suspended") == 1


def test_an_unreadable_state_file_is_reported_and_delivery_goes_on(provider, provider_relay, tmp_path):
    hop = provider()
    tern = provider_relay()
    tern.stop()
    (tern.spool / "shaping.state").write_text("{ not json")
    tern.start()
    tern.wait_log("shaping state: cannot read")
    qid = send(tern, ["alice@a.test"], "after a bad state file")
    wait_until(lambda: log_entries(tern.stderr(), qid, "sent"), WAIT, "delivery to a.test",
               lambda: f"{hop}\n{tern.stderr()[-4000:]}")


def test_hup_moves_a_destination_to_another_source(provider, provider_relay):
    hop = provider()
    sources = {f"egress.sources.{name}": {"address": ip, "ehlo": ehlo} for name, (ip, ehlo) in EGRESS_SOURCES.items()}
    tern = provider_relay(tables={**sources, "egress.pools.p": {"sources": {"a": 1}}, "egress.select": {"default": "p"}})
    first = send(tern, ["alice@a.test"], "from source a")
    wait_until(lambda: log_entries(tern.stderr(), first, "sent"), WAIT, "delivery from a",
               lambda: f"{hop}\n{tern.stderr()[-4000:]}")
    ip_a, ehlo_a = EGRESS_SOURCES["a"]
    ip_b, ehlo_b = EGRESS_SOURCES["b"]
    assert hop.ehlo_by_peer() == {ip_a: {ehlo_a}}
    assert log_entries(tern.stderr(), first, "sent")[0]["source"] == f"a[{ip_a}]"

    # SIGHUP: the pool now holds b only; the idle connection from a QUITs, the next message goes from b.
    text = tern.config_path.read_text()
    assert text.count("sources = { a = 1 }") == 1, text
    tern.config_path.write_text(text.replace("sources = { a = 1 }", "sources = { b = 1 }"))
    tern.hup("reloaded")
    second = send(tern, ["bob@a.test"], "from source b")
    wait_until(lambda: log_entries(tern.stderr(), second, "sent"), WAIT, "delivery from b",
               lambda: f"{hop}\n{tern.stderr()[-4000:]}")
    assert log_entries(tern.stderr(), second, "sent")[0]["source"] == f"b[{ip_b}]"
    assert hop.ehlo_by_peer() == {ip_a: {ehlo_a}, ip_b: {ehlo_b}}
