"""The admin endpoint and `tern queue`, on a real running tern with real mail.

- GET /metrics is parsed by prometheus_client's own text parser after real SMTP traffic, and the
  counters match what was sent (read before and after, so the readiness probe does not count).
- Every `tern queue` command runs as a subprocess against the daemon, on mail that a next hop
  (aiosmtpd on 127.0.0.x) defers with 451 until the test lets it accept. Routes are "[ip]:port",
  so no DNS is involved.
"""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import QUEUED_RE, TERN_BIN, free_port, make_message, queue_id_of, read_until_closed, wait_until
from delivery_helpers import NextHop, free_port_on, log_entries, parse_dsn

DEFER_IP = "127.0.0.21"   # the destination that defers
SENDER_IP = "127.0.0.22"  # where mail to the senders' domain (bounces) goes; accepts
SENDER = "alice@sender.test"


# --------------------------------------------------------------------------------------------
# Helpers


def metrics(tern) -> dict[str, float]:
    """Every sample as "name{k=v,...}" (labels sorted) → value, through prometheus_client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{tern.admin_port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def delta(after: dict, before: dict, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def queue(tern, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    """Runs `tern queue ARGS --config <its config>`; checks the exit status unless expect is None."""
    p = subprocess.run([str(TERN_BIN), "queue", *args, "--config", str(tern.config_path)],
                       capture_output=True, text=True, timeout=60)
    if expect is not None:
        assert p.returncode == expect, f"tern queue {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def listing(tern, *filters: str) -> list[dict]:
    data = json.loads(queue(tern, "list", "--json", *filters).stdout)
    assert data["count"] == len(data["messages"])
    return data["messages"]


def entry(tern, qid: str) -> dict:
    return json.loads(queue(tern, "show", qid, "--json").stdout)


def send(tern, rcpts: list[str], subject: str, sender: str = SENDER) -> str:
    msg = make_message(subject=subject, sender=sender or "mailer-daemon@sender.test", to=", ".join(rcpts))
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=15) as s:
        s.ehlo("client.test")
        s.mail(sender)
        for r in rcpts:
            code, _ = s.rcpt(r)
            assert code == 250
        code, reply = s.data(msg)
        assert code == 250, reply
    m = QUEUED_RE.search(reply.decode())
    assert m, reply
    return m.group(1)


def wait_state(tern, qid: str, state: str, timeout: float = 20.0) -> dict:
    return wait_until(lambda: next((m for m in listing(tern) if m["id"] == qid and m["state"] == state), None),
                      timeout, f"{qid} in state {state}", lambda: tern.stderr()[-4000:])


@pytest.fixture
def hop_port() -> int:
    return free_port_on([DEFER_IP, SENDER_IP])


@pytest.fixture
def hops(hop_port):
    started = []

    def start(host: str, **kw) -> NextHop:
        hop = NextHop(host, hop_port, **kw).start()
        started.append(hop)
        return hop

    yield start
    for hop in reversed(started):
        hop.stop()


@pytest.fixture
def deferring(hops, start_tern, hop_port):
    """(tern, defer_hop, sender_hop): mail to defer.test gets 451 until defer_hop.fail_first = 0;
    mail to sender.test (bounces) is accepted. Retries are an hour apart: only a flush retries."""
    defer_hop = hops(DEFER_IP, fail_first=10**9, fail_reply="451 4.3.0 Try again later")
    sender_hop = hops(SENDER_IP)
    tern = start_tern(
        delivery={"enabled": True, "retry_schedule": ["1h"], "max_queue_lifetime": "5d", "connect_timeout": "2s"},
        extra_tables={"routes": {"defer.test": f"[{DEFER_IP}]:{hop_port}", "*": f"[{SENDER_IP}]:{hop_port}"}})
    return tern, defer_hop, sender_hop


def accept_from_now(hop: NextHop) -> None:
    with hop.lock:
        hop.fail_first = 0


# --------------------------------------------------------------------------------------------
# Metrics


def test_metrics_count_real_traffic(hops, start_tern, hop_port):
    hop = hops(SENDER_IP, rcpt_replies={"nobody@ok.test": "550 5.1.1 No such user"})
    tern = start_tern(
        server={"max_connections_per_ip": 3},
        delivery={"enabled": True, "retry_schedule": ["1h"]},
        extra_tables={"routes": {"*": f"[{SENDER_IP}]:{hop_port}"}})
    before = metrics(tern)
    for family in ["tern_sessions_total", "tern_messages_received_total", "tern_recipients_delivered_total",
                   "tern_message_bytes_in_total", "tern_queue_messages{state=held}",
                   "tern_commands_refused_total{reason=relay_denied}", "tern_dns_lookups_total{kind=mx}",
                   "tern_tls_sessions_total{direction=in}", "tern_delivery_delay_seconds_count"]:
        assert family in before, f"{family} missing from /metrics: {sorted(before)[:80]}"

    # Four messages of two recipients each, delivered; one from <> to a recipient the hop refuses.
    ids = [send(tern, [f"u{i}@ok.test", f"v{i}@ok.test"], f"m{i}") for i in range(4)]
    bounced_id = send(tern, ["nobody@ok.test"], "to nobody", sender="")
    hop.wait_for(4, on_timeout=lambda: tern.stderr()[-4000:])
    wait_until(lambda: not tern.queued(), 20, "an empty queue", lambda: tern.stderr()[-4000:])

    # Refused commands, on a session of their own.
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=15) as s:
        s.ehlo("client.test")
        assert s.docmd("RCPT TO:<x@ok.test>")[0] == 503   # 5.5.1 before MAIL
        assert s.docmd("FROB")[0] == 500                   # 5.5.2
        assert s.docmd("MAIL FROM:<a@b.test> FOO=1")[0] == 555  # 5.5.4
    # A refused connection: the fourth from one address while three are open (once the earlier
    # sessions are gone on tern's side too).
    wait_until(lambda: metrics(tern)["tern_sessions_open"] == 0, 20, "earlier sessions closed")
    held = [socket.create_connection(("127.0.0.1", tern.port), timeout=10) for _ in range(3)]
    for c in held:
        assert c.recv(512).startswith(b"220")
    extra = socket.create_connection(("127.0.0.1", tern.port), timeout=10)
    assert extra.recv(512).startswith(b"421")
    for c in held + [extra]:
        c.close()

    sizes = {m.group(1): int(m.group(2)) for m in
             __import__("re").finditer(r"([0-9A-F]{14}): queued as \1, size=(\d+)", tern.stderr())}
    assert set(ids + [bounced_id]) <= set(sizes), sizes

    after = wait_until(lambda: (lambda m: m if m["tern_sessions_open"] == 0 else None)(metrics(tern)), 20,
                       "every session closed")
    d = lambda key: delta(after, before, key)  # noqa: E731
    assert d("tern_sessions_total") == 5 + 1 + 3, "five senders, one refusing session, three held open"
    assert d("tern_messages_received_total") == 5
    assert d("tern_recipients_received_total") == 9
    assert d("tern_message_bytes_in_total") == sum(sizes[i] for i in ids + [bounced_id])
    assert d("tern_recipients_delivered_total") == 8
    assert d("tern_recipients_bounced_total") == 1
    assert d("tern_recipients_deferred_total") == 0
    assert d("tern_messages_delivered_total") == 4
    assert d("tern_messages_bounced_total") == 1
    assert d("tern_message_bytes_out_total") == sum(sizes[i] for i in ids)
    assert d("tern_delivery_delay_seconds_count") == 8
    assert d("tern_queue_residence_seconds_count") == 5
    assert after["tern_delivery_delay_seconds_bucket{le=+Inf}"] == after["tern_delivery_delay_seconds_count"]
    assert d("tern_commands_refused_total{reason=bad_sequence}") == 1
    assert d("tern_commands_refused_total{reason=unrecognized_command}") == 1
    assert d("tern_commands_refused_total{reason=syntax_error}") == 1
    assert d("tern_connections_refused_total{reason=too_many_connections}") == 1
    assert d("tern_dns_lookups_total{kind=mx}") == 0, "routes by address ask no DNS"
    for state in ["active", "queued", "deferred", "held"]:
        assert after[f"tern_queue_messages{{state={state}}}"] == 0


# --------------------------------------------------------------------------------------------
# tern queue, on a running daemon


def test_list_show_summary_and_filters(deferring):
    tern, defer_hop, _ = deferring
    qid = send(tern, ["bob@defer.test", "carol@Defer.test"], "stuck")
    other = send(tern, ["dave@defer.test"], "stuck too", sender="zed@elsewhere.test")
    m = wait_state(tern, qid, "deferred")
    wait_state(tern, other, "deferred")
    assert m["sender"] == SENDER and m["attempts"] >= 1
    assert [r["state"] for r in m["recipients"]] == ["deferred", "deferred"]
    assert all("451 4.3.0" in r["last_reply"] for r in m["recipients"])

    table = queue(tern, "list").stdout
    assert qid in table and "bob@defer.test" in table and "(451 4.3.0 Try again later)" in table, table
    assert table.rstrip().endswith("in 2 Requests."), table

    assert {x["id"] for x in listing(tern, "--domain", "defer.test")} == {qid, other}
    assert listing(tern, "--domain", "nowhere.test") == []
    assert [x["id"] for x in listing(tern, "--sender", SENDER)] == [qid]
    assert [x["id"] for x in listing(tern, "--sender", "@elsewhere.test")] == [other]
    assert listing(tern, "--state", "held") == [] and len(listing(tern, "--state", "deferred")) == 2
    assert listing(tern, "--priority", "3") == [] and len(listing(tern, "--priority", "0")) == 2
    assert len(listing(tern, "--max-age", "1h")) == 2 and listing(tern, "--min-age", "1h") == []
    bad = queue(tern, "list", "--state", "stuck", expect=1)
    assert "state must be one of" in bad.stderr

    shown = queue(tern, "show", qid).stdout
    assert f"Queue ID     {qid}" in shown and "State        deferred" in shown and f"<{SENDER}>" in shown
    assert "451 4.3.0 Try again later" in shown
    assert entry(tern, qid)["id"] == qid

    summary = queue(tern, "summary").stdout.splitlines()
    total = summary[1].split()
    assert total[:3] == ["TOTAL", "2", "2"], summary
    row = next(line.split() for line in summary if line.split()[0] == "defer.test")
    assert row[1:3] == ["2", "2"], summary

    missing = queue(tern, "show", "0123456789ABCD", expect=1)
    assert "no such message" in missing.stderr
    assert "not a queue id" in queue(tern, "show", "nonsense", expect=1).stderr


def test_flush_one_message_and_a_domain(deferring):
    tern, defer_hop, _ = deferring
    first = send(tern, ["a@defer.test"], "one")
    second = send(tern, ["b@defer.test"], "two")
    wait_state(tern, first, "deferred")
    wait_state(tern, second, "deferred")
    tries = len(defer_hop.attempts)
    accept_from_now(defer_hop)

    out = queue(tern, "flush", first).stdout
    assert "due now" in out, out
    (t,) = defer_hop.wait_for(1, on_timeout=lambda: tern.stderr()[-4000:])
    assert t.rcpts == ["a@defer.test"], "only the flushed message goes"
    wait_until(lambda: [m["id"] for m in listing(tern)] == [second], 20, "the first message delivered")
    assert entry(tern, second)["state"] == "deferred", "the other waits for its retry time"
    assert len(defer_hop.attempts) == tries + 1

    out = queue(tern, "flush", "--domain", "defer.test").stdout
    assert "1 delivery job(s) due now for defer.test" in out, out
    defer_hop.wait_for(2)
    wait_until(lambda: listing(tern) == [], 20, "an empty queue")
    assert "0 delivery job(s)" in queue(tern, "flush").stdout
    assert log_entries(tern.stderr(), second, "sent")


def test_hold_survives_restart_then_release_delivers(deferring):
    tern, defer_hop, _ = deferring
    qid = send(tern, ["held@defer.test"], "hold me")
    other = send(tern, ["free@defer.test"], "not held")
    wait_state(tern, qid, "deferred")
    wait_state(tern, other, "deferred")
    assert "not on hold" in queue(tern, "release", other, expect=1).stderr
    assert f"{qid} held" in queue(tern, "hold", qid).stdout
    assert "held\t1\n" in tern.queue_path(f"{qid}.env").read_text(), "the hold is in the envelope at once"
    assert [m["id"] for m in listing(tern, "--state", "held")] == [qid]
    assert f"{qid}!" in queue(tern, "list").stdout
    assert metrics(tern)["tern_queue_messages{state=held}"] == 1
    refused = queue(tern, "flush", qid, expect=1)
    assert "on hold" in refused.stderr
    assert "already on hold" in queue(tern, "hold", qid).stdout

    tries = len(defer_hop.attempts)
    tern.stop()
    tern.start()
    tern.wait_recovered()  # the spool is loaded in the background after the listeners open
    assert entry(tern, qid)["state"] == "held", "held after a restart"
    assert metrics(tern)["tern_queue_messages{state=held}"] == 1
    accept_from_now(defer_hop)
    assert "1 delivery job(s)" in queue(tern, "flush").stdout, "everything queued: the held message is not in it"
    defer_hop.wait_for(1)
    assert [t.rcpts for t in defer_hop.attempts[tries:]] == [["free@defer.test"]], "the held message was tried"

    assert "released" in queue(tern, "release", qid).stdout
    t = defer_hop.wait_for(2, on_timeout=lambda: tern.stderr()[-4000:])[1]
    assert t.rcpts == ["held@defer.test"]
    wait_until(lambda: listing(tern) == [], 20, "an empty queue")


def test_delete_removes_without_bounce(deferring):
    tern, defer_hop, sender_hop = deferring
    qid = send(tern, ["gone@defer.test", "also@defer.test"], "delete me")
    wait_state(tern, qid, "deferred")
    assert f"{qid} deleted" in queue(tern, "delete", qid).stdout
    assert not tern.queue_path(f"{qid}.env").exists() and not tern.queue_path(f"{qid}.msg").exists()
    assert listing(tern) == []
    assert "no such message" in queue(tern, "delete", qid, expect=1).stderr
    # Its life is over when "removed" is logged; a bounce would have been queued before that.
    tern.wait_log(f"{qid}: removed")
    assert tern.queue_files() == [], "delete queued something"
    assert sender_hop.received() == [], "delete sent something to the sender"
    assert metrics(tern)["tern_messages_deleted_total"] == 1


def test_bounce_returns_a_dsn_then_removes(deferring):
    tern, defer_hop, sender_hop = deferring
    qid = send(tern, ["r1@defer.test", "r2@defer.test"], "bounce me")
    wait_state(tern, qid, "deferred")
    assert "returned to the sender" in queue(tern, "bounce", qid).stdout
    assert not tern.queue_path(f"{qid}.env").exists()
    (t,) = sender_hop.wait_for(1, on_timeout=lambda: tern.stderr()[-4000:])
    assert t.mail_from == "" and t.rcpts == [SENDER]
    dsn = parse_dsn(t.content)
    assert sorted(dsn.final_recipients()) == ["r1@defer.test", "r2@defer.test"]
    assert all(r.get("action") == "failed" and r.get("status") == "5.0.0" for r in dsn.recipients), dsn.recipients
    wait_until(lambda: listing(tern) == [], 20, "an empty queue")
    bounced = log_entries(tern.stderr(), qid, "bounced")
    assert {b["rcpt"] for b in bounced} == {"r1@defer.test", "r2@defer.test"}


def test_action_on_a_message_in_flight_waits_for_the_attempt(hops, start_tern, hop_port):
    # The hop holds the end of DATA until released, then answers 451: the attempt is in flight.
    hop = hops(DEFER_IP, hold=True, fail_first=10**9, fail_reply="451 4.3.0 Try again later")
    tern = start_tern(delivery={"enabled": True, "retry_schedule": ["1h"], "data_timeout": "60s"},
                      extra_tables={"routes": {"*": f"[{DEFER_IP}]:{hop_port}"}})
    qid = send(tern, ["slow@defer.test"], "in flight")
    wait_until(lambda: hop.rcpt_attempts, 20, "the attempt to reach DATA")
    m = wait_state(tern, qid, "active")
    assert m["state"] == "active"
    assert "*" in queue(tern, "list").stdout.splitlines()[1]
    out = queue(tern, "hold", qid).stdout
    assert "in flight" in out and "when it ends" in out, out
    hop.release()
    wait_state(tern, qid, "held")
    assert "held\t1\n" in tern.queue_path(f"{qid}.env").read_text()
    assert entry(tern, qid)["recipients"][0]["state"] == "deferred"


def test_no_daemon_is_a_clear_error(tmp_path):
    port = free_port()
    conf = tmp_path / "t.toml"
    conf.write_text(f'hostname = "relay.test"\n[admin]\nlisten = "127.0.0.1:{port}"\n')
    p = subprocess.run([str(TERN_BIN), "queue", "list", "--config", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 69, p
    assert f"127.0.0.1:{port}" in p.stderr and "is `tern serve` running" in p.stderr
    p = subprocess.run([str(TERN_BIN), "queue", "list", "--admin", "not-an-address"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 78 and "not-an-address" in p.stderr, p


def test_web_pages_cannot_use_the_endpoint(deferring):
    tern, _, _ = deferring
    qid = send(tern, ["kept@defer.test"], "csrf")
    wait_state(tern, qid, "deferred")
    base = f"http://127.0.0.1:{tern.admin_port}"
    # A cross-site form post from a page, and a page's own name rebound to 127.0.0.1.
    for headers in [{"Origin": "https://evil.example"}, {"Host": f"rebound.evil.example:{tern.admin_port}"}]:
        req = urllib.request.Request(f"{base}/queue/{qid}/delete", method="POST", data=b"", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403, headers
    assert entry(tern, qid)["state"] == "deferred", "the message is still there"
    req = urllib.request.Request(f"http://localhost:{tern.admin_port}/queue/{qid}", headers={"Host": "localhost"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["id"] == qid


def test_endpoint_refuses_what_it_does_not_serve(tern):
    base = f"http://127.0.0.1:{tern.admin_port}"
    for method, path, status in [("GET", "/nothing", 404), ("POST", "/metrics", 405),
                                 ("GET", "/queue/0123456789ABCD/delete", 405),
                                 ("POST", "/queue/0123456789ABCD/delete", 409)]:
        req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == status, (method, path)
        assert "error" in json.loads(e.value.read())


def test_admin_on_a_unix_socket(start_tern, tmp_path):
    sock = tmp_path / "admin.sock"
    tern = start_tern(extra_tables={"admin": {"listen": str(sock)}})
    assert sock.is_socket()
    assert (sock.stat().st_mode & 0o777) == 0o600, oct(sock.stat().st_mode)  # the owner only, whatever the umask
    assert "Mail queue is empty" in queue(tern, "list").stdout
    qid = send(tern, ["x@nowhere.test"], "queued")  # delivery is off: it stays queued
    out = subprocess.run([str(TERN_BIN), "queue", "show", qid, "--admin", str(sock)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "State        queued" in out.stdout, out
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_closed(s)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples["tern_messages_received_total"] == 1

    # Killed, the socket file stays; the next start replaces it.
    tern.kill()
    assert sock.exists()
    tern.start()
    assert qid in queue(tern, "list").stdout
    # A second relay configured with the same live socket does not steal it.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    conf = other_dir / "tern.toml"
    conf.write_text(tern.config_path.read_text().replace(str(tern.spool), str(other_dir / "spool"))
                    .replace(f"127.0.0.1:{tern.port}", f"127.0.0.1:{free_port()}"))
    p = subprocess.run([str(TERN_BIN), "serve", "--config", str(conf)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "admin.listen" in p.stderr, p
    assert qid in queue(tern, "list").stdout, "the first relay still answers on its socket"
    tern.stop()
    assert not sock.exists(), "a clean stop removes the socket file"


def test_tls_sessions_counted_in_and_out(start_tern, tmp_path, certs):
    from tls_helpers import client_context

    tls = {"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])}}
    # B keeps what it gets and offers STARTTLS; A delivers to B with opportunistic TLS.
    b = start_tern(extra_tables=dict(tls))
    a = start_tern(delivery={"enabled": True, "retry_schedule": ["1h"], "tls": "opportunistic"},
                   extra_tables={"routes": {"*": f"[127.0.0.1]:{b.port}"}})
    before_a, before_b = metrics(a), metrics(b)
    # One STARTTLS session straight to B.
    with smtplib.SMTP("127.0.0.1", b.port, local_hostname="client.test", timeout=15) as s:
        s.ehlo()
        assert s.starttls(context=client_context(certs["ca"]))[0] == 220
        s.ehlo()
        s.noop()
    # One message through A, which reaches B over STARTTLS.
    send(a, ["bob@far.test"], "over tls")
    wait_until(lambda: len(b.queued()) == 1 and not a.queued(), 20, "the message at B",
               lambda: a.stderr()[-3000:])
    after_a, after_b = metrics(a), metrics(b)
    assert delta(after_b, before_b, "tern_tls_sessions_total{direction=in}") == 2
    assert delta(after_b, before_b, "tern_tls_sessions_total{direction=out}") == 0
    assert delta(after_a, before_a, "tern_tls_sessions_total{direction=out}") == 1
    assert delta(after_a, before_a, "tern_tls_sessions_total{direction=in}") == 0


def test_queue_gauges_with_delivery_off(tern):
    # The default test tern keeps everything queued: the gauges come from the spool.
    for i in range(3):
        send(tern, [f"r{i}@far.test"], f"kept {i}")
    m = metrics(tern)
    assert m["tern_queue_messages{state=queued}"] == 3
    assert m["tern_queue_messages_by_priority{priority=0}"] == 3
    assert m["tern_queue_messages{state=deferred}"] == 0
    assert len(listing(tern, "--state", "queued")) == 3


def test_show_message_prints_the_stored_bytes(tern):
    # Delivery off: the message is in the journal, not a file; the endpoint reads it from there.
    qid = send(tern, ["r@far.test"], "show me the bytes")
    p = subprocess.run([str(TERN_BIN), "queue", "show", qid, "--message", "--config", str(tern.config_path)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == tern.msg(qid)
    assert p.stdout.startswith(b"Received: from client.test") and b"Subject: show me the bytes" in p.stdout
    # The same bytes through `tern trace -`: one hop, ours.
    t = subprocess.run([str(TERN_BIN), "trace", "-"], input=p.stdout, capture_output=True, timeout=60)
    assert t.returncode == 0 and b"1 hop" in t.stdout, t.stdout + t.stderr
    missing = queue(tern, "show", "0000000000ABCD", "--message", expect=1)
    assert "no such message" in missing.stderr
