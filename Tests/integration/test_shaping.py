"""Traffic shaping end to end (issue 16): a relay in front of mailbox providers (delivery_helpers.NextHop
behind conftest's PROVIDER_RECORDS: a.test and b.test have the MX mx.provider.test on PROVIDER_IP, c.test
has mx.other.test on OTHER_IP). The provider records each session's peer, EHLO name, start and end
(open from accept to TCP close, as a provider counts connections) and the time of each message, so the
tests judge the relay by what a provider sees.

Mail is queued first where a test needs a backlog: a relay with delivery off takes the messages, stops,
and a relay with delivery on starts on the same spool with every message due at once. Every wait is for
an event (a count at the provider, a log line) and bounded; times compare the provider's clock
(time.monotonic(), turned into wall-clock seconds) with tern's log timestamps (UTC, milliseconds).

Run inside `unshare --net` (scripts/test.sh): providers listen on 127.0.0.30 and up, the egress
sources are 127.0.0.21 and 127.0.0.22.
"""

from __future__ import annotations

import datetime
import re
import threading
import time

from conftest import (EGRESS_SOURCES, OTHER_IP, PROVIDER_HOST, PROVIDER_IP, SMTPConn, assert_reply, make_message,
                      queue_id_of, wait_until)
from delivery_helpers import log_entries

SENDER = "sender@sender.test"
WAIT = 30.0
def wall(monotonic: float) -> float:
    """time.monotonic() (the provider's records) to wall-clock seconds (tern's log and its "until T").
    The offset is taken now, not once at import: a fresh CI machine steps its wall clock (NTP) while
    the suite runs, and an offset from minutes before was 11 s off there."""
    return monotonic + (time.time() - time.monotonic())


# --------------------------------------------------------------------------------------------
# Mail in


def inject(tern, rcpts: list[str], sessions: int = 4) -> list[str]:
    """One message per recipient, over `sessions` SMTP sessions at once, many transactions each;
    returns the queue ids."""
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(share: list[tuple[int, str]]) -> None:
        try:
            with SMTPConn(tern.port, timeout=60) as c:
                c.greeting()
                c.ehlo()
                for i, rcpt in share:
                    assert_reply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250, "2.1.0")
                    assert_reply(c.cmd(f"RCPT TO:<{rcpt}>"), 250, "2.1.5")
                    msg = make_message(subject=f"shaping {i}", sender=SENDER, to=rcpt)
                    qid = queue_id_of(assert_reply(c.data(msg), 250, "2.0.0"))
                    with lock:
                        ids.append(qid)
                c.cmd("QUIT")
        except (OSError, EOFError, AssertionError) as e:
            with lock:
                errors.append(repr(e))

    numbered = list(enumerate(rcpts))
    threads = [threading.Thread(target=run, args=(numbered[k::sessions],), daemon=True) for k in range(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "injection sessions still running after 120s"
    assert not errors, errors
    assert len(ids) == len(rcpts)
    return ids


def prequeued(provider_relay, rcpts: list[str], delivery: dict | None = None, tables: dict | None = None):
    """A relay that starts with one message per recipient already queued, every one due: a relay with
    delivery off takes them and stops, then this one starts on its spool."""
    loader = provider_relay(delivery={"enabled": False})
    inject(loader, rcpts)
    loader.stop()
    return provider_relay(delivery=delivery, tables=tables, spool={"path": str(loader.spool)})


# --------------------------------------------------------------------------------------------
# tern's log

LINE_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z ")


def line_time(line: str) -> float:
    """Wall-clock seconds of a log line's timestamp."""
    m = LINE_TIME.match(line)
    assert m, f"log line without a timestamp: {line!r}"
    return datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()


def lines_with(tern, text: str) -> list[str]:
    return [line for line in tern.stderr().splitlines() if text in line]


def until_of(line: str) -> int:
    """The T of "... until T" (whole Unix seconds, rounded down: the state lasts until T or a little after)."""
    m = re.search(r" until (\d+)\b", line)
    assert m, f"no 'until T' in {line!r}"
    return int(m.group(1))


def refused_attempts(tern, port: int, log: str | None = None) -> list[float]:
    """Times of the delivery lines that say a connection to the provider was refused: one per attempt
    (each message has one recipient, and a failed connection carries one message)."""
    target = f"connect to {PROVIDER_HOST}[{PROVIDER_IP}]:{port}: "
    return [line_time(line) for line in (tern.stderr() if log is None else log).splitlines()
            if "status=deferred" in line and target in line and "ECONNREFUSED" in line]


def most_within(times: list[float], window: float) -> int:
    """The most of `times` within any `window` seconds."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def diagnostics(tern, *hops) -> str:
    return f"{hops}\n{tern.stderr()[-6000:]}"


def delivered_all(tern, hop, count: int, timeout: float = 90.0) -> None:
    hop.wait_for(count, timeout, on_timeout=lambda: diagnostics(tern, hop))


# --------------------------------------------------------------------------------------------
# Limits per destination


def test_a_message_rate_is_never_exceeded_and_nearly_reached(provider, provider_relay):
    hop = provider()
    rules = {"shaping": [{"name": "paced", "domains": ["a.test"], "max_message_rate": "20/s"}]}
    tern = prequeued(provider_relay, [f"user{i}@a.test" for i in range(200)], tables=rules)
    delivered_all(tern, hop, 200)

    times = hop.message_times()
    assert len(times) == 200
    # Never more than the rate in any second: GCRA lets one permit through early (limit + 1), and the
    # provider stamps a message when its DATA reply goes out, after the spool read and the SMTP round
    # trips, whose time varies by up to one interval (50 ms) on a busy machine: limit + 2. A relay that
    # sent in bursts at each second's start would show up to 40 here.
    assert hop.most_in_window(1.0) <= 22, f"{hop.most_in_window(1.0)} messages within one second at 20/s"
    assert hop.most_in_window(5.0) <= 102, f"{hop.most_in_window(5.0)} messages within five seconds at 20/s"
    # Every message was queued at start-up, so the rate alone paces them: at least 80 % of it.
    span = times[-1] - times[0]
    rate = (len(times) - 1) / span
    assert rate >= 16.0, f"200 messages in {span:.2f}s: {rate:.1f}/s, less than 80 % of 20/s"
    # The hop counts a message before Tern reads its 250 and logs it: wait for the last line.
    sent = wait_until(lambda: (lambda s: s if len(s) >= 200 else None)(log_entries(tern.stderr(), status="sent")),
                      WAIT, "200 status=sent lines")
    assert len(sent) == 200 and {s["rcpt"].split("@")[1] for s in sent} == {"a.test"}


def test_max_connections_is_never_exceeded_with_many_queued(provider, provider_relay):
    hop = provider(delay=0.05)  # each message takes a while: sessions overlap
    rules = {"shaping": [{"name": "narrow", "domains": ["a.test"], "max_connections": 3}]}
    tern = prequeued(provider_relay, [f"user{i}@a.test" for i in range(60)], tables=rules)
    delivered_all(tern, hop, 60)

    assert hop.max_open <= 3, f"{hop.max_open} sessions open at once, max_connections = 3"
    # 60 messages were due at once and [delivery] allows 20 per destination: the rule's limit was
    # reached, not merely never needed.
    assert hop.max_open == 3, f"only {hop.max_open} sessions at once with 60 messages queued"
    assert sorted(hop.delivered_rcpts()) == sorted(f"user{i}@a.test" for i in range(60))


def test_mx_rollup_puts_two_domains_under_one_limit(provider, provider_relay):
    hop = provider(delay=0.05)
    other = provider(ip=OTHER_IP, delay=0.05)
    rules = {"shaping": [{"name": "provider", "mx": [".provider.test"], "max_connections": 2}]}
    rcpts = ([f"a{i}@a.test" for i in range(30)] + [f"b{i}@b.test" for i in range(30)]
             + [f"c{i}@c.test" for i in range(20)])
    tern = prequeued(provider_relay, rcpts, tables=rules)
    delivered_all(tern, hop, 60)
    delivered_all(tern, other, 20)

    # a.test and b.test resolve to mx.provider.test: one limit of 2 across both, not 2 each.
    assert hop.max_open <= 2, f"{hop.max_open} sessions open at once at the provider of a.test and b.test"
    assert hop.max_open == 2, f"only {hop.max_open} session(s) at once with 60 messages queued"
    assert {r.split("@")[1] for r in hop.delivered_rcpts()} == {"a.test", "b.test"}
    # c.test's MX is another provider's: no rule matches it, it gets [delivery]'s 20 per destination.
    assert other.max_open > 2, f"c.test ({other.max_open} at once) was held to the other provider's rule"


def test_max_messages_per_connection_is_honoured(provider, provider_relay):
    hop = provider()
    rules = {"shaping": [{"name": "short", "domains": ["a.test"], "max_connections": 1,
                          "max_messages_per_connection": 5}]}
    tern = prequeued(provider_relay, [f"user{i}@a.test" for i in range(23)], tables=rules)
    delivered_all(tern, hop, 23)

    per_session = [len(s.messages) for s in hop.sessions_seen() if s.messages]
    assert sum(per_session) == 23
    assert max(per_session) <= 5, f"messages per session: {per_session}, max_messages_per_connection = 5"
    # One connection at a time and 23 queued: sessions were reused up to the limit, then closed.
    assert per_session.count(5) >= 4, f"messages per session: {per_session}"
    assert hop.max_open == 1, f"{hop.max_open} sessions at once, max_connections = 1"


# --------------------------------------------------------------------------------------------
# Backoff that listens


def test_a_dead_next_hop_gets_a_probe_per_interval_and_its_mail_when_it_returns(provider, provider_port,
                                                                                provider_relay):
    interval = 2.0
    delivery = {"dead_destination_failures": 3, "dead_destination_initial": "2s",
                "dead_destination_maximum": "2s", "max_connections_per_destination": 4}
    # Nothing listens on the provider's address yet: every connection is refused.
    tern = prequeued(provider_relay, [f"user{i}@a.test" for i in range(2000)], delivery=delivery)
    first = wait_until(lambda: lines_with(tern, "delivery temporarily suspended"), WAIT,
                       "the destination suspended", lambda: diagnostics(tern))[0]
    suspended_at = line_time(first)

    def split(attempts: list[float]) -> tuple[list[float], list[float]]:
        # Connections already open when the destination was found dead fail within moments of it; a
        # probe comes no sooner than an interval later.
        burst = [t for t in attempts if t < suspended_at + interval / 2]
        return burst, [t for t in attempts if t >= suspended_at + interval / 2]

    # Two probes after the suspension, each refused (and the destination suspended again).
    wait_until(lambda: len(split(refused_attempts(tern, provider_port))[1]) >= 2, WAIT,
               "two probe connections", lambda: diagnostics(tern))

    log = tern.stderr()
    attempts = refused_attempts(tern, provider_port, log)
    burst, probes = split(attempts)
    # Until the destination is found dead: the connections open at once (4 per destination) and
    # those that replace the first failures, a handful, not one per queued message.
    assert 3 <= len(burst) <= 8, f"{len(burst)} connection attempts before the suspension"
    # After it: one probe at a time, an interval apart.
    assert most_within(probes, interval) <= 1, f"probes at {probes}"
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert all(g >= interval - 0.1 for g in gaps), f"probes {gaps} s apart, dead_destination_initial = 2s"
    # Logged per change of state (the suspension, each failed probe's renewal), never per message.
    suspensions = [line for line in log.splitlines() if "delivery temporarily suspended" in line]
    assert 1 <= len(suspensions) <= len(probes) + 2, suspensions
    deferred = log_entries(log, status="deferred")
    assert len(deferred) == len(attempts), f"{len(deferred)} deferred lines for {len(attempts)} attempts"

    # The provider returns: the next probe finds it, and the whole queue goes.
    hop = provider()
    back = time.time()
    delivered_all(tern, hop, 2000, timeout=180)
    resumed = wait_until(lambda: lines_with(tern, "delivery resumed"), WAIT, "the destination resumed",
                         lambda: diagnostics(tern, hop))
    assert "probe succeeded" in resumed[0], resumed
    sessions = hop.sessions_seen()
    assert wall(sessions[0].started) - back <= 2 * interval + 1, (
        f"first session {wall(sessions[0].started) - back:.1f}s after the provider returned")
    # Once resumed, nothing waited for another suspension or probe.
    resumed_at = line_time(resumed[0])
    assert not [t for t in refused_attempts(tern, provider_port) if t > resumed_at]
    assert not [line for line in lines_with(tern, "delivery temporarily suspended") if line_time(line) > resumed_at]
    assert len(hop.received()) == 2000 and len(set(hop.delivered_rcpts())) == 2000


def test_a_backoff_rule_throttles_on_421_and_the_throttle_expires(provider, provider_relay):
    hop = provider(rcpt_fail_first=2)  # "421 4.7.0 Rate limited, try again later"
    backoff = {"backoff": [{"name": "slow-down", "reply": r"^421 4\.7\.0 Rate limited", "threshold": "2 in 1m",
                            "action": "throttle", "rate": "2/s", "duration": "6s"}]}
    tern = provider_relay(tables=backoff)
    inject(tern, ["first@a.test", "second@a.test"], sessions=1)
    throttled = wait_until(lambda: lines_with(tern, "throttled by slow-down"), WAIT, "the throttle",
                           lambda: diagnostics(tern, hop))
    assert len(throttled) == 1 and "rate=2/s" in throttled[0], throttled
    start, until = line_time(throttled[0]), until_of(throttled[0])
    assert until - start >= 4.5, throttled[0]
    inject(tern, [f"user{i}@a.test" for i in range(40)])
    delivered_all(tern, hop, 42)
    ended = wait_until(lambda: lines_with(tern, "throttle by slow-down ended"), WAIT, "the throttle's end",
                       lambda: diagnostics(tern, hop))
    assert len(ended) == 1 and line_time(ended[0]) >= until, (ended, until)

    times = [wall(t) for t in hop.message_times()]
    during = [t for t in times if start <= t < until]
    after = [t for t in times if t >= line_time(ended[0])]
    # While throttled: 2 a second (one early permit), and mail still flowed.
    assert most_within(during, 1.0) <= 3, f"{most_within(during, 1.0)} messages within a second at 2/s"
    assert len(during) >= 5, f"{len(during)} messages during the throttle: {during}"
    # Then the configured limits (none) return: the rest goes faster than the throttle allowed.
    assert most_within(after, 1.0) > 3, f"after the throttle: {len(after)} messages, at most {most_within(after, 1.0)} a second"
    assert sorted(hop.delivered_rcpts()) == sorted(["first@a.test", "second@a.test"] + [f"user{i}@a.test" for i in range(40)])


# --------------------------------------------------------------------------------------------
# Egress sources and pools


def test_two_egress_sources_in_a_weighted_pool(provider, provider_relay):
    hop = provider()
    (a_ip, a_ehlo), (b_ip, b_ehlo) = EGRESS_SOURCES["a"], EGRESS_SOURCES["b"]
    tables = {
        "egress.sources.a": {"address": a_ip, "ehlo": a_ehlo},
        "egress.sources.b": {"address": b_ip, "ehlo": b_ehlo},
        "egress.pools.bulk": {"sources": {"a": 3, "b": 1}},
        "egress.select": {"default": "bulk"},
        # One message per connection, so each message is one choice of source.
        "shaping": [{"name": "each", "domains": ["a.test"], "max_messages_per_connection": 1,
                     "max_connections": 50}],
    }
    tern = prequeued(provider_relay, [f"user{i}@a.test" for i in range(40)], tables=tables)
    delivered_all(tern, hop, 40)

    assert hop.peers() == {a_ip, b_ip}, hop.peers()
    assert hop.ehlo_by_peer() == {a_ip: {a_ehlo}, b_ip: {b_ehlo}}, hop.ehlo_by_peer()
    by_peer = {a_ip: 0, b_ip: 0}
    for t in hop.received():
        by_peer[t.session.peer] += 1
    # Weights 3 : 1 over 40 messages: 30 and 10.
    assert 26 <= by_peer[a_ip] <= 34 and 6 <= by_peer[b_ip] <= 14, by_peer
    # The log names the source of each delivery, as the provider saw it.
    # The hop counts a message before Tern reads its 250 and logs it: wait for the last line.
    sent = wait_until(lambda: (lambda s: s if len(s) >= 40 else None)(log_entries(tern.stderr(), status="sent")),
                      WAIT, "40 status=sent lines")
    assert len(sent) == 40
    assert {s["source"] for s in sent} == {f"a[{a_ip}]", f"b[{b_ip}]"}, {s["source"] for s in sent}
    assert sum(s["source"] == f"a[{a_ip}]" for s in sent) == by_peer[a_ip]


# --------------------------------------------------------------------------------------------
# State across a restart


def test_a_suspension_is_kept_across_a_restart(provider, provider_relay):
    hop = provider(rcpt_fail_first=1)
    backoff = {"backoff": [{"name": "go-away", "reply": r"^421 4\.7\.0 Rate limited", "threshold": "1 in 1m",
                            "action": "suspend", "duration": "15s"}]}
    tern = provider_relay(tables=backoff)
    inject(tern, ["first@a.test"], sessions=1)
    suspended = wait_until(lambda: lines_with(tern, "delivery temporarily suspended"), WAIT, "the suspension",
                           lambda: diagnostics(tern, hop))
    assert "go-away" in suspended[0], suspended
    until = until_of(suspended[0])
    refused_session = len(hop.sessions_seen())
    inject(tern, [f"user{i}@a.test" for i in range(5)])  # waits with the first one

    tern.stop()  # SIGTERM
    restarted = time.time()
    tern.start()
    # The restart came well before the suspension's end, so the test says something.
    assert until - time.time() >= 5, f"restarted {time.time() - restarted:.1f}s, {until - time.time():.1f}s before the end"
    delivered_all(tern, hop, 6, timeout=until - time.time() + WAIT)

    later = hop.sessions_seen()[refused_session:]
    assert later, hop
    starts = [wall(s.started) for s in later]
    # No session reached the provider before the suspension's end: not before, not after the restart.
    assert min(starts) >= until, f"a session {until - min(starts):.1f}s before the suspension ended"
    after_restart = tern.stderr().split("----- restart #1 -----", 1)[1]
    assert "delivery resumed" in after_restart, after_restart[-4000:]
    assert sorted(hop.delivered_rcpts()) == sorted(["first@a.test"] + [f"user{i}@a.test" for i in range(5)])
