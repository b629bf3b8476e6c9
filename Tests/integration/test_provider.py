"""The traffic shaping tests' scaffolding, proven with today's relay: a "provider" (delivery_helpers.NextHop
on PROVIDER_IP) behind the MX records of two domains (conftest's PROVIDER_RECORDS), which records each
session's peer address, EHLO name, start and end, the messages in it and how many were open at once; it
can refuse connections at the greeting, answer RCPT with a 4xx, and die and come back.

Run inside `unshare --net` (scripts/test.sh): the providers listen on 127.0.0.30 and up.
"""

from __future__ import annotations

from conftest import (HOSTNAME, OTHER_HOST, OTHER_IP, PROVIDER_DOMAINS, PROVIDER_HOST, PROVIDER_IP, make_message,
                      send_message, wait_until)
from delivery_helpers import log_entries

SENDER = "sender@sender.test"
WAIT = 30.0  # the longest any single wait may take


def send(tern, rcpts: list[str], subject: str) -> str:
    msg = make_message(subject=subject, sender=SENDER, to=", ".join(rcpts))
    return send_message(tern.port, SENDER, rcpts, msg)


def wait_sent(tern, qid: str, count: int, *hops) -> list[dict]:
    """Waits until `count` recipients of qid have their status=sent line; returns those lines."""
    return wait_until(lambda: len(sent := log_entries(tern.stderr(), qid, "sent")) >= count and sent, WAIT,
                      f"{count} status=sent line(s) for {qid}", lambda: f"{hops}\n{tern.stderr()[-4000:]}")


def test_two_domains_reach_one_provider_through_their_mx_records(provider, provider_relay, provider_dns):
    # The name server says what the tests assume: both domains' MX is the provider's host.
    for domain in PROVIDER_DOMAINS:
        assert provider_dns.query(domain, "MX").of_type("MX") == [(10, PROVIDER_HOST)]
    assert provider_dns.query(PROVIDER_HOST, "A").of_type("A") == [PROVIDER_IP]
    assert provider_dns.query(OTHER_HOST, "A").of_type("A") == [OTHER_IP]

    hop = provider()
    tern = provider_relay()
    first = send(tern, ["alice@a.test"], "to a")
    second = send(tern, ["bob@b.test", "carol@a.test"], "to b and a")
    wait_sent(tern, first, 1, hop)
    lines = wait_sent(tern, second, 2, hop)

    assert sorted(hop.delivered_rcpts()) == ["alice@a.test", "bob@b.test", "carol@a.test"]
    assert {line["relay"] for line in lines} == {f"{PROVIDER_HOST}[{PROVIDER_IP}]:{hop.port}"}
    assert all(line["source"] is None for line in lines)  # no egress sources configured

    # The provider's view: every session from the relay's address, saying the relay's hostname.
    sessions = hop.sessions_seen()
    assert sessions, hop
    assert hop.peers() == {"127.0.0.1"}
    assert hop.ehlo_by_peer() == {"127.0.0.1": {HOSTNAME}}
    assert sum(len(s.messages) for s in sessions) == 3  # one transaction per domain and message
    assert not any(s.refused for s in sessions)
    assert 1 <= hop.max_open <= len(sessions)
    assert hop.most_in_window(1.0) >= 1
    # Every session ends (QUIT after the connection cache time); its messages lie within it.
    wait_until(lambda: all(s.ended is not None for s in hop.sessions_seen()), WAIT, "every session to end",
               lambda: f"{hop.sessions_seen()}")
    for s in hop.sessions_seen():
        assert all(s.started <= t <= s.ended for t in s.messages), s


def test_the_provider_refuses_at_the_greeting_and_at_rcpt_then_takes_the_mail(provider, provider_relay):
    hop = provider(refuse_first=1, rcpt_fail_first=1)
    tern = provider_relay()
    qid = send(tern, ["alice@a.test"], "refused, then taken")
    # 1: refused at the greeting; 2: RCPT answered 421; then (retry after a second) accepted.
    wait_sent(tern, qid, 1, hop)
    sessions = hop.sessions_seen()
    assert sessions[0].refused and sessions[0].messages == [] and sessions[0].ehlo is None
    assert not any(s.refused for s in sessions[1:])
    assert hop.rcpt_failures == 1
    deferred = log_entries(tern.stderr(), qid, "deferred")
    assert any(d["reply"].startswith("421 4.7.0 Too many connections") for d in deferred), deferred
    assert any("421 4.7.0 Rate limited" in d["reply"] for d in deferred), deferred
    assert sum(len(s.messages) for s in sessions) == 1


def test_a_provider_that_dies_and_comes_back(provider, provider_relay):
    hop = provider()
    tern = provider_relay(delivery={"connection_cache_time": "30s"})
    qid = send(tern, ["alice@a.test"], "before")
    wait_sent(tern, qid, 1, hop)
    # The relay keeps its session open (connection cache): stopping the provider closes it.
    assert hop.open_now == 1
    hop.stop()
    assert not hop.running and hop.open_now == 0
    assert all(s.ended is not None for s in hop.sessions_seen())
    down = send(tern, ["bob@b.test"], "while down")
    wait_until(lambda: log_entries(tern.stderr(), down, "deferred"), WAIT, f"{down} deferred while the provider is down",
               lambda: tern.stderr()[-4000:])
    seen = len(hop.sessions_seen())
    hop.start()  # the same address and port, the records go on
    wait_sent(tern, down, 1, hop)
    assert len(hop.sessions_seen()) > seen
    assert sorted(hop.delivered_rcpts()) == ["alice@a.test", "bob@b.test"]
