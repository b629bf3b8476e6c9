"""End-to-end delivery: `tern serve` with [delivery] enabled, dnsmasq as the name server for *.test,
and aiosmtpd next hops on 127.0.0.x, all listening on the one port tern delivers to (delivery.port).

Each test submits mail over SMTP, then waits (bounded, polling) for what the next hops receive, for
tern's delivery log lines on stderr and for the spool to empty. Run inside `unshare --net` (see
scripts/test.sh): the tests bind many 127.0.0.x addresses.

Address plan (DNS below): 127.0.0.1 is tern itself (never an MX: tern would take it for itself).
  pref.test      MX 10 b.pref.test 127.0.0.2, MX 20 a.pref.test 127.0.0.3 (answer lists 20 first)
  down.test      MX 10 m1 127.0.0.4, MX 20 m2 127.0.0.5
  alldown.test   MX 10 m1 127.0.0.6, MX 20 m2 127.0.0.7
  implicit.test  A 127.0.0.8, no MX
  mx.test        MX 10 mx1.mx.test 127.0.0.9; alias.test CNAME mx.test
  retry.test     127.0.0.10     five.test 127.0.0.11     bulk.test 127.0.0.12    restart.test 127.0.0.13
  nodns.test     no DNS at all (NXDOMAIN); reached only through [routes] "[127.0.0.14]:<other port>"
  null.test      MX 0 "." (RFC 7505 null MX)
  nxdomain.test  NXDOMAIN
  sender.test    MX 10 mx.sender.test 127.0.0.20: where bounces to sender@sender.test arrive
"""

from __future__ import annotations

import re
import smtplib
import socket
import time

import pytest

from conftest import (CLIENT_HELO, SMTPConn, assert_reply, check_received, make_message, queue_id_of, send_message,
                      split_received, wait_until)
from delivery_helpers import GreetingRefuser, NextHop, free_port_on, log_entries, parse_dsn

SENDER = "sender@sender.test"
SINK_IP = "127.0.0.20"
HOP_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 21)]
WAIT = 30.0  # the longest any single wait may take

DNS_RECORDS = [
    # Preference 10 first on the command line: dnsmasq then lists preference 20 first in its answer.
    "--mx-host=pref.test,b.pref.test,10", "--mx-host=pref.test,a.pref.test,20",
    "--host-record=b.pref.test,127.0.0.2", "--host-record=a.pref.test,127.0.0.3",
    "--mx-host=down.test,m1.down.test,10", "--mx-host=down.test,m2.down.test,20",
    "--host-record=m1.down.test,127.0.0.4", "--host-record=m2.down.test,127.0.0.5",
    "--mx-host=alldown.test,m1.alldown.test,10", "--mx-host=alldown.test,m2.alldown.test,20",
    "--host-record=m1.alldown.test,127.0.0.6", "--host-record=m2.alldown.test,127.0.0.7",
    "--host-record=implicit.test,127.0.0.8",
    "--mx-host=mx.test,mx1.mx.test,10", "--host-record=mx1.mx.test,127.0.0.9", "--cname=alias.test,mx.test,60",
    "--mx-host=retry.test,mx.retry.test,10", "--host-record=mx.retry.test,127.0.0.10",
    "--mx-host=five.test,mx.five.test,10", "--host-record=mx.five.test,127.0.0.11",
    "--mx-host=bulk.test,mx.bulk.test,10", "--host-record=mx.bulk.test,127.0.0.12",
    "--mx-host=restart.test,mx.restart.test,10", "--host-record=mx.restart.test,127.0.0.13",
    "--mx-host=null.test,.,0",
    "--mx-host=sender.test,mx.sender.test,10", f"--host-record=mx.sender.test,{SINK_IP}",
]

DELIVERY_DEFAULTS = {
    "enabled": True,
    "max_connections": 1000,
    "max_connections_per_destination": 20,
    "retry_schedule": ["1s"],
    "max_queue_lifetime": "5d",
    "connect_timeout": "2s",
}


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def dns(start_dns):
    return start_dns(DNS_RECORDS)


@pytest.fixture
def hop_port() -> int:
    """The port every next hop listens on (delivery.port), free on all the hop addresses."""
    return free_port_on(HOP_ADDRESSES)


@pytest.fixture
def hops(hop_port):
    """hops(ip, **NextHop options) -> a running NextHop on ip:hop_port (or port=...); stopped at teardown."""
    started: list = []

    def start(host: str, port: int | None = None, cls=NextHop, **kw):
        hop = cls(host, port or hop_port, **kw).start()
        started.append(hop)
        return hop

    yield start
    for hop in reversed(started):
        try:
            hop.stop()
        except Exception:  # noqa: BLE001 - already stopped
            pass


@pytest.fixture
def relay(hops, start_tern, dns, hop_port):
    """relay(delivery={...}, routes={...}, priority={...}, bounce={...}, events={...}) -> a running tern delivering through
    dnsmasq to next hops on hop_port. Depends on `hops` so that tern stops before the hops do."""

    def start(delivery: dict | None = None, routes: dict | None = None, priority: dict | None = None,
              bounce: dict | None = None, events: dict | None = None, **kw):
        dl = dict(DELIVERY_DEFAULTS, port=hop_port)
        dl.update(delivery or {})
        tables = {"dns": {"servers": [f"127.0.0.1:{dns.port}"]}}
        if routes:
            tables["routes"] = routes
        if priority:
            tables["priority"] = priority
        if bounce:
            tables["bounce"] = bounce
        if events:
            tables["events"] = events
        return start_tern(delivery=dl, extra_tables=tables, **kw)

    return start


# --------------------------------------------------------------------------------------------
# Helpers


def diagnostics(tern, *hops) -> str:
    parts = [f"spool queue: {tern.queue_files()}"]
    for qid in tern.queued()[:5]:
        parts.append(f"{qid}.env:\n{env_text(tern, qid)}")
    for hop in hops:
        parts.append(repr(hop))
    parts.append("tern stderr (last 6000 chars):\n" + tern.stderr()[-6000:])
    return "\n".join(parts)


def env_text(tern, qid: str) -> str:
    """The raw envelope record (not conftest's Envelope.parse: delivery adds fields to rcpt lines)."""
    try:
        return tern.env_bytes(qid).decode(errors="replace")
    except FileNotFoundError:
        return "(gone)"


def in_spool(tern, qid: str) -> bool:
    files = tern.queue_files()
    return f"{qid}.msg" in files or f"{qid}.env" in files


def wait_gone(tern, qids, *hops, timeout: float = WAIT) -> None:
    """Waits until the spool has neither file of any of qids."""
    qids = [qids] if isinstance(qids, str) else list(qids)
    wait_until(lambda: not any(in_spool(tern, q) for q in qids), timeout,
               f"{qids} to leave the spool", lambda: diagnostics(tern, *hops))


def wait_spool_empty(tern, *hops, timeout: float = WAIT) -> None:
    wait_until(lambda: not tern.queue_files(), timeout, "the spool queue to be empty (bounces included)",
               lambda: diagnostics(tern, *hops))


def wait_removed(tern, qids, *hops, timeout: float = WAIT) -> None:
    """Waits for each of qids' "removed" line: its life is over (every attempt finished, every notice
    it caused already in the spool), so nothing more can come of it. Logged once each."""
    qids = [qids] if isinstance(qids, str) else list(qids)
    wait_until(lambda: all(f"{q}: removed" in tern.stderr() for q in qids), timeout,
               f"'<id>: removed' for {qids}", lambda: diagnostics(tern, *hops))
    stderr = tern.stderr()
    assert all(stderr.count(f"{q}: removed") == 1 for q in qids), f"a message removed twice:\n{stderr[-3000:]}"


def wait_log(tern, qid: str, status: str, rcpt: str | None = None, *hops, timeout: float = WAIT) -> list[dict]:
    return wait_until(lambda: log_entries(tern.stderr(), qid, status, rcpt), timeout,
                      f"a log line '{qid}: to=<{rcpt or '...'}>, ..., status={status}'",
                      lambda: diagnostics(tern, *hops))


def send(tern, rcpts: list[str], subject: str = "test", sender: str = SENDER, **kw) -> tuple[str, bytes]:
    msg = make_message(subject=subject, sender=sender or "MAILER-DAEMON@sender.test", to=", ".join(rcpts))
    return tern.send(sender, rcpts, msg, **kw), msg


def send_many(tern, items: list[tuple[str, list[str], bytes, str]]) -> list[str]:
    """Several transactions over one SMTP session (fast submission): (sender, rcpts, message, MAIL params)."""
    ids = []
    with SMTPConn(tern.port, timeout=30) as c:
        c.greeting()
        c.ehlo()
        for sender, rcpts, message, params in items:
            assert_reply(c.cmd(f"MAIL FROM:<{sender}>{(' ' + params) if params else ''}"), 250, "2.1.0")
            for r in rcpts:
                assert_reply(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5", context=f"RCPT {r}")
            ids.append(queue_id_of(assert_reply(c.data(message), 250, "2.0.0", context="end of DATA")))
        assert_reply(c.cmd("QUIT"), 221)
    return ids


def original_of(content: bytes) -> bytes:
    """The message as tern accepted it: the delivered bytes without tern's Received header."""
    return split_received(content)[1]


def assert_bounce(t, *, failed: list[str], status_prefix: str, sender: str = SENDER):
    """t is a Transaction at the sender's MX: a DSN from <> to sender naming exactly `failed`."""
    assert t.mail_from == "", f"bounce MAIL FROM is <{t.mail_from}>, not the null sender <>"
    assert t.rcpts == [sender], f"bounce went to {t.rcpts}, not [{sender}]"
    dsn = parse_dsn(t.content)
    got = sorted(r.lower() for r in dsn.final_recipients())
    assert got == sorted(r.lower() for r in failed), (
        f"DSN Final-Recipients {got} != {sorted(failed)}:\n{t.content.decode(errors='replace')}")
    for block in dsn.recipients:
        assert block.get("action", "").lower() == "failed", f"Action is not failed: {block}"
        status = block.get("status", "")
        assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", status), f"Status {status!r} is not 5.x.y: {block}"
        assert status.startswith(status_prefix), f"Status {status!r}, expected {status_prefix}...: {block}"
    return dsn


def relay_ip(entry: dict) -> str | None:
    m = re.search(r"\[([0-9.]+)\]", entry["relay"])
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------
# The name server answers what the tests assume (a failure here is a fixture problem, not tern's).


def test_dns_fixture_answers(dns):
    mx = dns.query("pref.test", "MX")
    assert mx.rcode == "NOERROR" and sorted(mx.of_type("MX")) == [(10, "b.pref.test"), (20, "a.pref.test")], mx
    assert mx.of_type("MX")[0][0] == 20, "the lower preference should not be listed first (order must matter)"
    assert dns.query("b.pref.test", "A").of_type("A") == ["127.0.0.2"]
    implicit = dns.query("implicit.test", "MX")
    assert implicit.rcode == "NOERROR" and implicit.records == [], implicit
    assert dns.query("implicit.test", "A").of_type("A") == ["127.0.0.8"]
    assert dns.query("null.test", "MX").of_type("MX") == [(0, "")]
    alias = dns.query("alias.test", "MX")
    assert alias.of_type("CNAME") == ["mx.test"] and alias.of_type("MX") == [(10, "mx1.mx.test")], alias
    assert dns.query("nxdomain.test", "MX").rcode == "NXDOMAIN"
    assert dns.query("nodns.test", "MX").rcode == "NXDOMAIN"
    assert dns.query("nodns.test", "A").rcode == "NXDOMAIN"
    assert dns.query("sender.test", "MX").of_type("MX") == [(10, "mx.sender.test")]


# --------------------------------------------------------------------------------------------
# MX routing


def test_mx_preference_order(relay, hops, hop_port):
    best = hops("127.0.0.2")    # b.pref.test, preference 10
    worse = hops("127.0.0.3")   # a.pref.test, preference 20
    tern = relay()
    ids = [send(tern, [f"user{i}@pref.test"], subject=f"pref {i}")[0] for i in range(3)]
    best.wait_for(3, on_timeout=lambda: diagnostics(tern, best, worse))
    wait_gone(tern, ids, best, worse)
    assert worse.received() == [] and worse.connections == 0, "the preference-20 MX was used while 10 was up"
    assert sorted(best.delivered_rcpts()) == [f"user{i}@pref.test" for i in range(3)]
    for i, qid in enumerate(ids):
        sent = log_entries(tern.stderr(), qid, "sent", f"user{i}@pref.test")
        assert sent, f"no status=sent log line for {qid}:\n{tern.stderr()[-3000:]}"
        assert relay_ip(sent[-1]) == "127.0.0.2", sent[-1]
        assert f":{hop_port}" in sent[-1]["relay"] and "b.pref.test" in sent[-1]["relay"], sent[-1]
        assert sent[-1]["dsn"].startswith("2."), sent[-1]


@pytest.mark.parametrize("failure", ["refused", "421-greeting"])
def test_lowest_mx_unavailable_next_mx_gets_it(relay, hops, failure):
    down = hops("127.0.0.4", cls=GreetingRefuser) if failure == "421-greeting" else None  # else nothing listens
    second = hops("127.0.0.5")
    tern = relay()
    qid, msg = send(tern, ["user@down.test"], subject="fallback")
    (t,) = second.wait_for(1, on_timeout=lambda: diagnostics(tern, second))
    assert t.rcpts == ["user@down.test"] and original_of(t.content) == msg
    wait_gone(tern, qid, second)
    if down is not None:
        assert down.connections >= 1, "the preference-10 MX (421 at greeting) was never tried"
    sent = log_entries(tern.stderr(), qid, "sent", "user@down.test")
    assert sent and relay_ip(sent[-1]) == "127.0.0.5", tern.stderr()[-3000:]
    assert not log_entries(tern.stderr(), qid, "bounced"), tern.stderr()[-3000:]


def test_every_mx_down_message_waits_then_delivered(relay, hops):
    tern = relay(delivery={"retry_schedule": ["1s"]})
    qid, msg = send(tern, ["user@alldown.test"], subject="all down")
    # Both MXs refuse: the recipient is deferred and the message stays in the spool.
    wait_log(tern, qid, "deferred", "user@alldown.test")
    wait_until(lambda: len(log_entries(tern.stderr(), qid, "deferred")) >= 2, WAIT,
               "a second deferred attempt (retry_schedule 1s)", lambda: diagnostics(tern))
    assert in_spool(tern, qid), f"{qid} left the spool while every MX was down:\n{diagnostics(tern)}"
    assert f"{qid}.msg" in tern.queue_files() and f"{qid}.env" in tern.queue_files()
    assert not log_entries(tern.stderr(), qid, "bounced"), "bounced instead of deferred"
    assert re.search(r"(?m)^rcpt\t\w+\tuser@alldown\.test(\t|$)", env_text(tern, qid)), env_text(tern, qid)
    # Tern's own reason carries RFC 3463's code: no host answered is 4.4.1 (it was 4.0.0).
    assert {e["dsn"] for e in log_entries(tern.stderr(), qid, "deferred")} == {"4.4.1"}, diagnostics(tern)
    # The preference-20 MX comes back: the next retry delivers there.
    back = hops("127.0.0.7")
    (t,) = back.wait_for(1, on_timeout=lambda: diagnostics(tern, back))
    assert t.rcpts == ["user@alldown.test"] and original_of(t.content) == msg
    wait_gone(tern, qid, back)
    assert log_entries(tern.stderr(), qid, "sent", "user@alldown.test")


def test_implicit_mx(relay, hops):
    hop = hops("127.0.0.8")
    tern = relay()
    qid, msg = send(tern, ["user@implicit.test"], subject="implicit mx")
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert t.rcpts == ["user@implicit.test"] and original_of(t.content) == msg
    wait_gone(tern, qid, hop)
    sent = log_entries(tern.stderr(), qid, "sent")
    assert sent and relay_ip(sent[-1]) == "127.0.0.8", tern.stderr()[-3000:]


def test_cname_domain(relay, hops):
    hop = hops("127.0.0.9")  # mx1.mx.test, the MX of mx.test, which alias.test is a CNAME of
    tern = relay()
    qid, msg = send(tern, ["user@alias.test"], subject="cname")
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert t.rcpts == ["user@alias.test"], "the recipient address must not be rewritten"
    assert original_of(t.content) == msg
    wait_gone(tern, qid, hop)


def test_null_mx_bounces_with_5_1_10(relay, hops):
    sink = hops(SINK_IP)
    tern = relay()
    qid, _ = send(tern, ["user@null.test"], subject="null mx")
    (bounce,) = sink.wait_for(1, on_timeout=lambda: diagnostics(tern, sink))
    assert_bounce(bounce, failed=["user@null.test"], status_prefix="5.1.10")
    wait_spool_empty(tern, sink)
    assert log_entries(tern.stderr(), qid, "bounced", "user@null.test"), tern.stderr()[-3000:]
    assert not log_entries(tern.stderr(), qid, "deferred"), "a null MX is permanent, not a deferral"


def test_nxdomain_bounces(relay, hops):
    sink = hops(SINK_IP)
    tern = relay()
    qid, _ = send(tern, ["user@nxdomain.test"], subject="nxdomain")
    (bounce,) = sink.wait_for(1, on_timeout=lambda: diagnostics(tern, sink))
    assert_bounce(bounce, failed=["user@nxdomain.test"], status_prefix="5.")
    wait_spool_empty(tern, sink)
    assert log_entries(tern.stderr(), qid, "bounced", "user@nxdomain.test"), tern.stderr()[-3000:]


def test_route_with_no_dns(relay, hops, dns, hop_port):
    assert dns.query("nodns.test", "MX").rcode == "NXDOMAIN"
    other_port = free_port_on(["127.0.0.14"])
    assert other_port != hop_port
    hop = hops("127.0.0.14", port=other_port)
    sink = hops(SINK_IP)
    tern = relay(routes={"nodns.test": f"[127.0.0.14]:{other_port}"})
    qid, msg = send(tern, ["user@nodns.test"], subject="route")
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop, sink))
    assert t.rcpts == ["user@nodns.test"] and original_of(t.content) == msg
    wait_gone(tern, qid, hop)
    assert sink.received() == [], "bounced although [routes] names the next hop"
    sent = log_entries(tern.stderr(), qid, "sent")
    assert sent and relay_ip(sent[-1]) == "127.0.0.14" and f":{other_port}" in sent[-1]["relay"], sent


# --------------------------------------------------------------------------------------------
# Failures, retries, bounces


def test_4xx_then_success_on_retry(relay, hops):
    hop = hops("127.0.0.10", fail_first=1)
    tern = relay(delivery={"retry_schedule": ["1s"]})
    qid, msg = send(tern, ["user@retry.test"], subject="retry")
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert len(hop.attempts) == 2, f"expected one 451 then one 250, got {len(hop.attempts)} DATA attempts"
    assert t.rcpts == ["user@retry.test"] and original_of(t.content) == msg
    wait_gone(tern, qid, hop)
    stderr = tern.stderr()
    deferred = log_entries(stderr, qid, "deferred", "user@retry.test")
    sent = log_entries(stderr, qid, "sent", "user@retry.test")
    assert deferred and deferred[0]["dsn"].startswith("4."), stderr[-3000:]
    assert "451" in (deferred[0]["reply"] or ""), deferred[0]
    assert sent, stderr[-3000:]
    assert not log_entries(stderr, qid, "bounced")


def test_5xx_for_one_of_three_recipients(relay, hops):
    rcpts = ["a@five.test", "b@five.test", "c@five.test"]
    hop = hops("127.0.0.11", rcpt_replies={"b@five.test": "550 5.1.1 <b@five.test>: Recipient address rejected"})
    sink = hops(SINK_IP)
    tern = relay()
    qid, msg = send(tern, rcpts, subject="one of three")
    hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop, sink))
    wait_until(lambda: sorted(hop.delivered_rcpts()) == ["a@five.test", "c@five.test"], WAIT,
               "a@ and c@ delivered", lambda: diagnostics(tern, hop, sink))
    (bounce,) = sink.wait_for(1, on_timeout=lambda: diagnostics(tern, hop, sink))
    assert_bounce(bounce, failed=["b@five.test"], status_prefix="5.1.1")
    # Removed, and the spool empty: no redelivery can follow, and no second bounce is waiting.
    wait_removed(tern, qid, hop, sink)
    wait_spool_empty(tern, hop, sink)
    assert len(sink.received()) == 1, f"{len(sink.received())} bounces, expected one"
    assert sorted(hop.delivered_rcpts()) == ["a@five.test", "c@five.test"], "a recipient was delivered twice"
    stderr = tern.stderr()
    assert log_entries(stderr, qid, "bounced", "b@five.test")[0]["dsn"].startswith("5.")
    assert log_entries(stderr, qid, "sent", "a@five.test") and log_entries(stderr, qid, "sent", "c@five.test")


def test_failures_carry_their_bounce_class(relay, hops):
    """A failure's class (etc/bounce-classes.toml) is in its log line, in the bounce's
    X-Tern-Bounce-Class header and in tern_bounce_class_total; a [[bounce.rule]] comes first."""
    import email
    hop = hops("127.0.0.11", rcpt_replies={
        "b@five.test": "550 5.1.1 <b@five.test>: Recipient address rejected",
        "c@five.test": "452 4.2.2 The email account that you tried to reach is over quota",
        "d@five.test": "550 5.7.1 Message refused by example-local-filter"})
    sink = hops(SINK_IP)
    # Retried in an hour: c@ is deferred once, however long the bounce takes (the metric counts each).
    tern = relay(bounce={"rule": [{"class": "LocalFilter", "reply": "example-local-filter"}]},
                 delivery={"retry_schedule": ["1h"]})
    qid, _ = send(tern, ["a@five.test", "b@five.test", "c@five.test", "d@five.test"], subject="classes")
    (bounce,) = sink.wait_for(1, on_timeout=lambda: diagnostics(tern, hop, sink))
    assert_bounce(bounce, failed=["b@five.test", "d@five.test"], status_prefix="5.")
    header = email.message_from_bytes(bounce.content)["X-Tern-Bounce-Class"]
    assert header == "InvalidRecipient, LocalFilter", header
    wait_until(lambda: log_entries(tern.stderr(), qid, "deferred", "c@five.test"), WAIT, "c@ deferred")
    lines = {rcpt: next(l for l in tern.stderr().splitlines() if f"to=<{rcpt}>, relay=" in l)
             for rcpt in ["a@five.test", "b@five.test", "c@five.test", "d@five.test"]}
    assert "bounce_class" not in lines["a@five.test"]
    assert lines["b@five.test"].endswith("Recipient address rejected), bounce_class=InvalidRecipient"), lines
    assert lines["c@five.test"].endswith("), bounce_class=QuotaIssues"), lines
    assert lines["d@five.test"].endswith("), bounce_class=LocalFilter"), lines
    # The log parser still reads the reply whole.
    assert log_entries(tern.stderr(), qid, "bounced", "b@five.test")[0]["reply"] == \
        "550 5.1.1 <b@five.test>: Recipient address rejected"
    _, body = tern.admin_get("/metrics")
    text = body.decode()
    assert 'tern_bounce_class_total{class="InvalidRecipient",status="bounced"} 1' in text, text[-3000:]
    assert 'tern_bounce_class_total{class="QuotaIssues",status="deferred"} 1' in text


def test_no_bounce_for_null_sender(relay, hops):
    hop = hops("127.0.0.11", rcpt_replies={"b@five.test": "550 5.1.1 <b@five.test>: Recipient address rejected"})
    sink = hops(SINK_IP)
    tern = relay()
    qid, _ = send(tern, ["b@five.test"], subject="bounce of a bounce", sender="")
    wait_log(tern, qid, "bounced", "b@five.test", hop, sink)
    # Removed, and the spool empty: a bounce would have been in the spool before the removal.
    wait_removed(tern, qid, hop, sink)
    wait_spool_empty(tern, hop, sink)
    assert sink.received() == [] and hop.received() == [], "a bounce was sent for a null-sender message"
    assert tern.queue_files() == [], diagnostics(tern, hop, sink)


# --------------------------------------------------------------------------------------------
# Restart


def test_sigkill_with_messages_in_the_journal_then_all_delivered_once(relay, hops):
    # Delivery off: every accepted message stays in the spool's journal (no files of its own).
    tern = relay(delivery={"enabled": False})
    ids = [send(tern, [f"user{i}@restart.test"], subject=f"journal {i}")[0] for i in range(30)]
    assert tern.queue_files() and not any(list((tern.queue_dir / d).iterdir()) for d in "0123456789ABCDEF"), \
        "messages received whole should be in the journal, not in files of their own"
    tern.kill()
    assert sorted(tern.queued()) == sorted(ids), f"queued mail lost at SIGKILL: {tern.queue_files()}"
    text = tern.config_path.read_text()
    assert "enabled = false" in text
    tern.config_path.write_text(text.replace("enabled = false", "enabled = true"))
    hop = hops("127.0.0.13")
    tern.start()
    hop.wait_for(30, on_timeout=lambda: diagnostics(tern, hop))
    wait_spool_empty(tern, hop)
    wait_removed(tern, ids, hop)  # every attempt over: a second delivery cannot be on its way
    got = sorted(t.subject for t in hop.received())
    assert got == sorted(f"journal {i}" for i in range(30)), f"after restart the hop received {got}"
    # The old segment held only delivered messages: it is gone; the one appends go to stays.
    assert len(list((tern.spool / "journal").glob("*.jnl"))) == 1


def test_restart_with_messages_queued(relay, hops):
    tern = relay(delivery={"retry_schedule": ["1s"]})
    ids = [send(tern, [f"user{i}@restart.test"], subject=f"restart {i}")[0] for i in range(2)]
    for i, qid in enumerate(ids):
        wait_log(tern, qid, "deferred", f"user{i}@restart.test")
    tern.kill()  # SIGKILL while both are deferred
    assert sorted(tern.queued()) == sorted(ids), f"queued mail lost at SIGKILL: {tern.queue_files()}"
    hop = hops("127.0.0.13")
    tern.start()
    hop.wait_for(2, on_timeout=lambda: diagnostics(tern, hop))
    wait_spool_empty(tern, hop)
    wait_removed(tern, ids, hop)  # every attempt over: a second delivery cannot be on its way
    got = sorted(t.subject for t in hop.received())
    assert got == ["restart 0", "restart 1"], f"after restart the hop received {got}"


# --------------------------------------------------------------------------------------------
# Priority, bytes, transactions, connections


def test_priority_order(relay, hops):
    # A slow destination (50 ms per message) that also holds its first reply until everything is
    # submitted, so that the order in which tern sends is not decided by how fast we submit.
    hop = hops("127.0.0.12", delay=0.05, hold=True)
    tern = relay(delivery={"max_connections_per_destination": 1})
    low = [(SENDER, [f"low{i}@bulk.test"], make_message(subject=f"low {i}", to=f"low{i}@bulk.test"), "MT-PRIORITY=-5")
           for i in range(200)]
    high = [(SENDER, [f"high{i}@bulk.test"], make_message(subject=f"high {i}", to=f"high{i}@bulk.test"), "MT-PRIORITY=5")
            for i in range(5)]
    t0 = time.monotonic()
    low_ids = send_many(tern, low)
    t_low = time.monotonic() - t0
    high_ids = send_many(tern, high)
    env = env_text(tern, high_ids[0])  # still queued: the hop holds its first reply
    assert re.search(r"(?m)^priority\t5$", env), f"MT-PRIORITY=5 from a trusted client not recorded: {env}"
    hop.release()
    hop.wait_for(205, timeout=WAIT, on_timeout=lambda: diagnostics(tern, hop))
    order = [t.subject for t in hop.received()]
    assert len(set(order)) == 205, f"duplicates or losses: {len(order)} deliveries, {len(set(order))} distinct"
    last_high = max(order.index(f"high {i}") for i in range(5))
    lows_before = sum(1 for s in order[:last_high] if s.startswith("low "))
    assert lows_before <= 50, (
        f"{lows_before} low-priority messages were delivered before the last high-priority one (at most 50 allowed;"
        f" the 200 low ones took {t_low:.2f}s to submit); order: {order[:80]}")
    wait_gone(tern, low_ids + high_ids, hop)


def test_delivered_bytes_are_accepted_bytes_plus_one_received(relay, hops):
    hop = hops("127.0.0.12")
    tern = relay()
    body = ("Line one.\r\n"
            ".starts with a dot\r\n"
            "..two dots\r\n"
            ".\r\n"
            "trailing spaces   \r\n"
            "\r\n"
            "\tleading tab\r\n"
            + "x" * 990 + "\r\n"
            + "Grüße, 8-bit UTF-8 body\r\n"
            "From this line on\r\n"
            "last line.\r\n")
    msg = make_message(subject="bytes", body=body.encode("utf-8"), to="bytes@bulk.test",
                       headers=[("X-Folded", "first\r\n\tsecond")])
    s = smtplib.SMTP("127.0.0.1", tern.port, local_hostname=CLIENT_HELO, timeout=30)
    try:
        s.ehlo()
        code, _ = s.mail(SENDER, ["BODY=8BITMIME"])
        assert code == 250
        assert s.rcpt("bytes@bulk.test")[0] == 250
        code, resp = s.data(msg)
        assert code == 250, resp
        qid = re.search(rb"queued as ([0-9A-F]{14})", resp).group(1).decode()
    finally:
        s.quit()
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert t.mail_from == SENDER and t.rcpts == ["bytes@bulk.test"]
    header, rest = split_received(t.content)
    check_received(header, queue_id=qid, rcpt="bytes@bulk.test")
    assert rest == msg, ("delivered bytes after tern's Received header differ from what smtplib sent"
                         f"\nsent:      {msg[:300]!r}\ndelivered: {rest[:300]!r}")
    assert t.content == header + msg
    wait_gone(tern, qid, hop)


def test_three_recipients_one_domain_one_transaction(relay, hops):
    hop = hops("127.0.0.12")
    tern = relay()
    rcpts = ["one@bulk.test", "two@bulk.test", "three@bulk.test"]
    qid, msg = send(tern, rcpts, subject="three")
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    wait_gone(tern, qid, hop)
    wait_removed(tern, qid, hop)  # every attempt over: another transaction cannot be on its way
    assert len(hop.received()) == 1, f"{len(hop.received())} transactions for one message to one domain"
    assert sorted(t.rcpts) == sorted(rcpts), t.rcpts
    assert original_of(t.content) == msg
    assert hop.connections == 1


def test_connection_reuse(relay, hops):
    hop = hops("127.0.0.12", delay=0.05, hold=True)  # holds the first reply: the other nine queue up behind it
    tern = relay(delivery={"max_connections_per_destination": 1})
    items = [(SENDER, [f"reuse{i}@bulk.test"], make_message(subject=f"reuse {i}", to=f"reuse{i}@bulk.test"), "")
             for i in range(10)]
    ids = send_many(tern, items)
    hop.release()
    hop.wait_for(10, on_timeout=lambda: diagnostics(tern, hop))
    wait_gone(tern, ids, hop)
    got = sorted(t.subject for t in hop.received())
    assert got == sorted(f"reuse {i}" for i in range(10)), got
    assert hop.connections < 10, f"10 messages to one destination took {hop.connections} connections (no reuse)"


def test_delay_warning_once_then_delivery(relay, hops):
    """delay_warning_time: the sender hears once (Action: delayed) that mail is late; the mail still goes."""
    sink = hops(SINK_IP)
    # Many attempts to a next hop that refuses: not suspended as a dead destination meanwhile.
    tern = relay(delivery={"retry_schedule": ["1s"], "delay_warning_time": "1s", "dead_destination_failures": 1000})
    qid, msg = send(tern, ["user@alldown.test"], subject="late")
    # Several deferrals, but exactly one warning.
    wait_until(lambda: len(log_entries(tern.stderr(), qid, "deferred")) >= 3, WAIT,
               "three deferred attempts", lambda: diagnostics(tern, sink))
    (warning,) = sink.wait_for(1, on_timeout=lambda: diagnostics(tern, sink))
    assert warning.mail_from == "" and warning.rcpts == [SENDER], (warning.mail_from, warning.rcpts)
    text = warning.content.decode("utf-8", "replace")
    assert "report-type=delivery-status" in text and re.search(r"(?mi)^Action: delayed\r?$", text), text[:2000]
    assert re.search(r"(?mi)^Final-Recipient: rfc822; ?user@alldown\.test\r?$", text), text[:2000]
    # Two more attempts after the warning arrived, each a chance for another one; then the spool holds
    # only the late message, so a warning made meanwhile would have reached the sink.
    attempts = len(log_entries(tern.stderr(), qid, "deferred"))
    wait_until(lambda: len(log_entries(tern.stderr(), qid, "deferred")) >= attempts + 2, WAIT,
               "two more deferred attempts", lambda: diagnostics(tern, sink))
    wait_until(lambda: tern.queued() == [qid], WAIT, "only the late message in the spool",
               lambda: diagnostics(tern, sink))
    assert len(sink.received()) == 1, "the delay warning must be sent only once"
    assert re.search(r"(?m)^warned\t1$", env_text(tern, qid)), env_text(tern, qid)
    back = hops("127.0.0.7")
    (t,) = back.wait_for(1, on_timeout=lambda: diagnostics(tern, back))
    assert original_of(t.content) == msg
    wait_gone(tern, qid, back)


def test_off_by_default_no_delay_warning(relay, hops):
    sink = hops(SINK_IP)
    tern = relay(delivery={"retry_schedule": ["1s"]})
    qid, _ = send(tern, ["user@alldown.test"], subject="late, no warning")
    wait_until(lambda: len(log_entries(tern.stderr(), qid, "deferred")) >= 3, WAIT,
               "three deferred attempts", lambda: diagnostics(tern, sink))
    assert sink.received() == [], "no delay warning unless delay_warning_time is set"


def test_priority_rules_by_sender_and_recipient_domain(relay, hops):
    """[priority] rules set the queue priority when the client gave no MT-PRIORITY."""
    # The next hop is not up yet, so the envelopes stay in the spool to be read.
    tern = relay(priority={"sender_domains": {"sender.test": 4}, "recipient_domains": {"mx.test": -3}})
    qid, _ = send(tern, ["user@mx.test"], subject="by sender domain")
    qid2, _ = send(tern, ["user@mx.test"], subject="by recipient domain", sender="other@elsewhere.test")
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<sender@sender.test> MT-PRIORITY=-7"), 250)
        assert_reply(c.cmd("RCPT TO:<user@mx.test>"), 250)
        qid3 = queue_id_of(assert_reply(c.data(make_message(subject="explicit")), 250))
    expected = {qid: "4", qid2: "-3", qid3: "-7"}
    for q, want in expected.items():
        m = re.search(r"(?m)^priority\t(-?\d+)$", env_text(tern, q))
        assert m and m.group(1) == want, (q, env_text(tern, q))
    hop = hops("127.0.0.9")  # mx1.mx.test, the MX of mx.test, comes up: all three go out
    hop.wait_for(3, on_timeout=lambda: diagnostics(tern, hop))
    wait_gone(tern, list(expected), hop)


def test_message_expires_after_max_queue_lifetime(relay, hops):
    """Deferred past max_queue_lifetime: the recipient bounces (4.4.7) to the sender and the message leaves."""
    sink = hops(SINK_IP)
    tern = relay(delivery={"retry_schedule": ["1s"], "max_queue_lifetime": "2s"})
    qid, _ = send(tern, ["user@alldown.test"], subject="expires")
    (bounce,) = sink.wait_for(1, on_timeout=lambda: diagnostics(tern, sink))
    dsn = parse_dsn(bounce.content)
    assert [r.lower() for r in dsn.final_recipients()] == ["user@alldown.test"]
    assert bounce.mail_from == "" and bounce.rcpts == [SENDER]
    assert any(b.get("status", "").startswith("4.4.7") or b.get("status", "").startswith("5.4.7")
               for b in dsn.recipients), dsn.recipients
    wait_gone(tern, qid, sink)
    assert log_entries(tern.stderr(), qid, "deferred"), "it was retried before it expired"


def test_received_names_the_client_by_its_ptr(relay, hops):
    """reverse_dns: the PTR name of the client (dnsmasq: 127.0.0.8 -> implicit.test) is in the Received
    header the next hop gets."""
    hop = hops("127.0.0.9")  # mx1.mx.test
    tern = relay(server={"reverse_dns": True})
    msg = make_message(subject="ptr", to="user@mx.test")
    qid = send_message(tern.port, SENDER, ["user@mx.test"], msg, source="127.0.0.8")
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    received = split_received(t.content)[0].decode()
    assert received.startswith(f"Received: from {CLIENT_HELO} (implicit.test [127.0.0.8])"), received
    assert f"id {qid}" in received
