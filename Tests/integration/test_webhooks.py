"""Delivery webhooks ([[events.webhook]], issue 19), end to end: tern delivers through the test's dnsmasq to
next hops on 127.0.0.x, and POSTs its message events to a Python HTTP server on 127.0.0.1 (http.server's
ThreadingHTTPServer, HTTP/1.1), which records every POST's JSON array and headers.

- every event arrives once per recipient, reception before the recipient's result, in batches of at most
  batch_size, one POST in flight at a time, with the configured headers; a webhook with events=["bounce"]
  gets the bounces only; the webhook gets exactly what the [events] file got, in the same order;
- the webhook down and tern killed with SIGKILL in between: after the restart and the webhook's return every
  reception and delivery event arrives, each once (no 2xx was ever given, so nothing can be resent), with a
  log line when the POSTs fail and one when they succeed again, and tern_webhook_failures_total counting;
  the retries back off (~1 s, then ~2 s), and a batch answered 503 is the one sent again;
- acknowledged events are not sent again after a SIGKILL (the cursor file), and a line cut short at the end
  of the outbox is dropped at start-up;
- the outbox's bound: max_outbox_size = 16384 and the webhook down for 200 messages; spool/outbox/NAME never
  holds much more than that, the oldest events are dropped (log line, metric), and once the webhook is back
  the newest events arrive and sent + dropped = every event emitted; also when the file dropped is the one
  a POST still in flight was read from (that POST's events are sent, not dropped as well);
- a POST that times out is sent again;
- config errors name the key (`tern check-config`), and the defaults are filled in.
"""

from __future__ import annotations

import http.server
import json
import math
import re
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TERN_BIN, free_port, make_message, wait_until
from test_delivery import (DELIVERY_DEFAULTS, DNS_RECORDS, HOP_ADDRESSES, SINK_IP, WAIT, diagnostics, dns,  # noqa: F401
                           hop_port, hops, send_many, wait_removed)

SENDER = "sender@sender.test"
FIVE_IP = "127.0.0.11"    # five.test's MX (test_delivery's DNS_RECORDS)
RETRY_IP = "127.0.0.10"   # retry.test's MX
RESULT_TYPES = ("delivery", "bounce", "transient_failure", "expiration")


# --------------------------------------------------------------------------------------------
# The webhook: an HTTP server that records what it is sent


@dataclass
class Post:
    path: str
    headers: dict[str, str]   # names lower-cased
    events: list[dict]
    at: float                 # time.monotonic() when it was answered
    status: int               # the answer's status
    started: float            # time.monotonic() when it arrived

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class HookServer:
    """ThreadingHTTPServer on 127.0.0.1:port (HTTP/1.1, keep-alive). Every POST's body is parsed as JSON
    (it must be an array of objects) and recorded with its path, headers and the answer's status, which
    is `status` (may be changed while it runs). The first `hold_first` POSTs are answered only once
    `gate` is set (at most `hold_for` seconds: a webhook that is slow). `in_flight`/`most_in_flight`
    count POSTs being answered at once, per path (a POST counts until its answer is about to be written,
    so the next one cannot overlap it by the server's own slowness)."""

    def __init__(self, port: int, status: int = 200, hold: float = 0.005, hold_first: int = 0,
                 hold_for: float = 20.0):
        self.port = port
        self.status = status
        self.hold = hold
        self.hold_first = hold_first
        self.hold_for = hold_for
        self.gate = threading.Event()
        self.arrived = 0  # POSTs that started, answered or not
        self.lock = threading.Lock()
        self.posts: list[Post] = []
        self.errors: list[str] = []
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> "HookServer":
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def do_POST(self):
                path = self.path
                started = time.monotonic()
                with hook.lock:
                    hook.arrived += 1
                    held = hook.arrived <= hook.hold_first
                    hook.in_flight[path] = hook.in_flight.get(path, 0) + 1
                    hook.most_in_flight[path] = max(hook.most_in_flight.get(path, 0), hook.in_flight[path])
                status = 500
                try:
                    body = self._body()
                    try:
                        events = json.loads(body)
                        assert isinstance(events, list) and all(isinstance(e, dict) for e in events)
                    except (ValueError, AssertionError):
                        with hook.lock:
                            hook.errors.append(f"POST {path}: not a JSON array of objects: {body[:300]!r}")
                        events = []
                    time.sleep(hook.hold)  # widen the window in which a second POST would overlap
                    if held:
                        hook.gate.wait(hook.hold_for)
                    status = hook.status
                    with hook.lock:
                        hook.posts.append(Post(path, {k.lower(): v for k, v in self.headers.items()}, events,
                                               time.monotonic(), status, started))
                finally:
                    with hook.lock:
                        hook.in_flight[path] -= 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    self.close_connection = True  # tern gave up on it (its timeout)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.gate.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def posts_to(self, path: str) -> list[Post]:
        """The POSTs to path, in order of arrival."""
        with self.lock:
            return sorted((p for p in self.posts if p.path == path), key=lambda p: p.started)

    def events(self, path: str) -> list[dict]:
        """Every event POSTed to path and answered with a 2xx, in order."""
        return [e for p in self.posts_to(path) if p.ok for e in p.events]


@pytest.fixture
def hook_server():
    """hook_server(port) -> a running HookServer; stopped at teardown (after tern: request it first)."""
    started: list[HookServer] = []

    def start(port: int, **kw) -> HookServer:
        server = HookServer(port, **kw).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def hook_relay(hook_server, hops, start_tern, dns, hop_port):
    """hook_relay(webhooks=[{...}, ...], events_file=PATH, delivery={...}) -> a running tern delivering
    through dnsmasq to next hops on hop_port, with [[events.webhook]] tables (and the [events] file)."""

    def start(webhooks: list[dict], events_file: Path | None = None, delivery: dict | None = None, **kw):
        dl = dict(DELIVERY_DEFAULTS, port=hop_port)
        dl.update(delivery or {})
        tables = {"dns": {"servers": [f"127.0.0.1:{dns.port}"]},
                  "events": {"file": str(events_file)} if events_file else {},
                  "events.webhook": webhooks}
        return start_tern(delivery=dl, extra_tables=tables, **kw)

    return start


# --------------------------------------------------------------------------------------------
# Helpers


def file_events(path: Path) -> list[dict]:
    """The [events] file's complete lines."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def webhook_metric(tern, name: str, webhook: str, outcome: str | None = None) -> float:
    """One sample of a tern_webhook_* metric on /metrics (labels in any order); 0 when absent."""
    status, body = tern.admin_get("/metrics")
    assert status == 200, body
    for line in body.decode().splitlines():
        m = re.match(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("webhook") == webhook and (outcome is None or labels.get("outcome") == outcome):
            return float(m.group(2))
    return 0.0


def outbox_bytes_on_disk(directory: Path) -> int:
    total = 0
    try:
        entries = list(directory.glob("*.jsonl"))  # the events' files (not the cursor)
    except FileNotFoundError:
        return 0
    for p in entries:
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass  # removed meanwhile
    return total


def outbox_events(directory: Path) -> list[dict]:
    """The events in the outbox's segment files (NNNNNNNN.jsonl), oldest file first."""
    out = []
    for segment in sorted(directory.glob("*.jsonl")):
        text = data_of(segment).decode()
        out += [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return out


def data_of(segment: Path) -> bytes:
    """A segment file's events: up to its first NUL (files are made full of zeros, then written over)."""
    return segment.read_bytes().split(b"\0", 1)[0]


class MetricWatch:
    """Samples one webhook's metric every 20 ms in a thread, noting when (time.monotonic()) each value was
    first seen: when the counter moved, within a sample."""

    def __init__(self, tern, name: str, webhook: str):
        self.tern, self.name, self.webhook = tern, name, webhook
        self.seen: list[tuple[float, float]] = []  # (value, first seen)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "MetricWatch":
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                v = webhook_metric(self.tern, self.name, self.webhook)
            except OSError:
                v = None
            if v is not None and (not self.seen or self.seen[-1][0] != v):
                self.seen.append((v, time.monotonic()))
            time.sleep(0.02)

    def value(self) -> float:
        return self.seen[-1][0] if self.seen else 0.0

    def first_time(self, value: float) -> float:
        times = [t for v, t in self.seen if v == value]
        assert times, f"{self.name} was never seen at {value:g}: {self.seen}"
        return times[0]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


def key(e: dict) -> tuple:
    return (e.get("type"), e.get("queue_id"), e.get("recipient"))


def counts(events: list[dict]) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for e in events:
        out[key(e)] = out.get(key(e), 0) + 1
    return out


def check_event_fields(e: dict) -> None:
    """A message event (reception or a recipient's result) has type, time, queue_id, recipient and sender;
    a failure its reply, dsn and bounce_class too."""
    assert isinstance(e.get("time"), (int, float)) and abs(e["time"] - time.time()) < 600, e
    if e.get("type") not in ("reception",) + RESULT_TYPES:
        return
    for member in ("type", "time", "queue_id", "recipient", "sender"):
        assert member in e, f"event without {member}: {e}"
    if e["type"] in ("bounce", "transient_failure", "expiration"):
        for member in ("reply", "dsn", "bounce_class"):
            assert member in e, f"{e['type']} event without {member}: {e}"


# --------------------------------------------------------------------------------------------
# 1. Every event once per recipient, in order, batched, with the headers; the events filter


def test_every_event_arrives_once_in_order_with_the_headers_and_the_filter(hook_server, hook_relay, hops, tmp_path):
    hop = hops(FIVE_IP, rcpt_replies={
        "gone@five.test": "550 5.1.1 <gone@five.test>: Recipient address rejected: User unknown",
        "later@five.test": "450 4.2.1 <later@five.test>: Mailbox busy, try again later"})
    sink = hops(SINK_IP)  # where the non-delivery notice to sender@sender.test goes
    port = free_port()
    server = hook_server(port)
    path = tmp_path / "events.jsonl"
    batch_size = 5
    tern = hook_relay(webhooks=[
        {"url": f"http://127.0.0.1:{port}/hook", "name": "crm", "batch_size": batch_size, "interval": "200ms",
         "timeout": "5s", "headers": {"Authorization": "Bearer s3cret-token", "X-Tern-Test": "one"}},
        {"url": f"http://127.0.0.1:{port}/bounces", "events": ["bounce"], "interval": "200ms"},
    ], events_file=path, delivery={"retry_schedule": ["1h"]})  # one attempt: one transient_failure

    # 20 messages: every fourth to two recipients; one with a recipient refused with 550, one with 450.
    plan: list[list[str]] = []
    for i in range(20):
        rcpts = [f"r{i}@five.test"]
        if i == 5:
            rcpts.append("gone@five.test")
        elif i == 9:
            rcpts.append("later@five.test")
        elif i % 4 == 0:
            rcpts.append(f"s{i}@five.test")
        plan.append(rcpts)
    items = [(SENDER, rcpts, make_message(subject=f"webhook {i}", sender=SENDER, to=", ".join(rcpts)), "")
             for i, rcpts in enumerate(plan)]
    qids = send_many(tern, items)
    expected_result = {}
    for qid, rcpts in zip(qids, plan):
        for r in rcpts:
            expected_result[(qid, r)] = ("bounce" if r == "gone@five.test" else
                                         "transient_failure" if r == "later@five.test" else "delivery")

    def arrived() -> bool:
        got = counts(server.events("/hook"))
        return all(got.get((t, q, r)) for (q, r), t in expected_result.items())

    wait_until(arrived, WAIT, "a result event for every recipient at the webhook",
               lambda: f"{len(server.events('/hook'))} events POSTed\n" + diagnostics(tern, hop, sink))
    wait_removed(tern, [q for q, rcpts in zip(qids, plan) if "later@five.test" not in rcpts], hop, sink)
    sink.wait_for(1)  # the non-delivery notice for gone@
    # The webhook gets exactly what the [events] file got, in the same order: nothing lost, nothing twice.
    wait_until(lambda: any(e["type"] == "delivery" and e["recipient"] == SENDER for e in file_events(path)), WAIT,
               "the notice's delivery event in the events file", lambda: diagnostics(tern, hop, sink))
    wait_until(lambda: len(server.events("/hook")) >= len(file_events(path)), WAIT,
               "the webhook to have every event of the events file",
               lambda: f"{len(server.events('/hook'))} POSTed, {len(file_events(path))} in the file")
    wait_until(lambda: webhook_metric(tern, "tern_webhook_events_total", "crm", "sent") == len(server.events("/hook")),
               WAIT, "tern_webhook_events_total{outcome=sent} to count what the webhook got")
    hooked, filed = server.events("/hook"), file_events(path)
    assert [key(e) for e in hooked] == [key(e) for e in filed], "the webhook's events differ from the file's"
    assert hooked == filed
    assert not server.errors, server.errors

    # Per recipient: one reception, one result, the reception first.
    position = {}
    for n, e in enumerate(hooked):
        check_event_fields(e)
        position.setdefault(key(e), []).append(n)
    for (qid, rcpt), result in expected_result.items():
        receptions = position.get(("reception", qid, rcpt), [])
        results = position.get((result, qid, rcpt), [])
        assert len(receptions) == 1, f"{qid} {rcpt}: {len(receptions)} reception events"
        assert len(results) == 1, f"{qid} {rcpt}: {len(results)} {result} events"
        assert receptions[0] < results[0], f"{qid} {rcpt}: {result} before reception"
        others = [t for t in RESULT_TYPES if t != result and position.get((t, qid, rcpt))]
        assert not others, f"{qid} {rcpt}: also {others}"
    by_rcpt = {(e["queue_id"], e["recipient"], e["type"]): e for e in hooked}
    bounce = by_rcpt[(qids[5], "gone@five.test", "bounce")]
    assert bounce["sender"] == SENDER and bounce["dsn"] == "5.1.1" and bounce["reply"].startswith("550 5.1.1")
    assert bounce["bounce_class"] == "InvalidRecipient"
    transient = by_rcpt[(qids[9], "later@five.test", "transient_failure")]
    assert transient["dsn"] == "4.2.1" and transient["reply"].startswith("450 4.2.1")
    assert by_rcpt[(qids[0], "r0@five.test", "delivery")]["dsn"] == "2.0.0"
    assert ("suppression", qids[5], "gone@five.test") in position  # the hard bounce suppressed gone@

    # Batches: at most batch_size each, and at most one POST in flight; the headers configured arrive.
    posts = server.posts_to("/hook")
    sizes = [len(p.events) for p in posts]
    assert all(1 <= s <= batch_size for s in sizes), sizes
    assert server.most_in_flight["/hook"] == 1, server.most_in_flight
    for p in posts:
        assert p.headers.get("authorization") == "Bearer s3cret-token", p.headers
        assert p.headers.get("x-tern-test") == "one", p.headers
        assert p.headers.get("content-type", "").split(";")[0].strip() == "application/json", p.headers

    # events = ["bounce"]: the bounce and nothing else, without the other webhook's headers.
    # That webhook posts on its own schedule: wait for its POST and its metric.
    default_name = "webhook-%08x" % zlib.crc32(f"http://127.0.0.1:{port}/bounces".encode())
    wait_until(lambda: webhook_metric(tern, "tern_webhook_events_total", default_name, "sent") >= 1, WAIT,
               "the bounce POSTed to /bounces", lambda: f"{server.events('/bounces')}")
    bounces = server.events("/bounces")
    assert [key(e) for e in bounces] == [("bounce", qids[5], "gone@five.test")], bounces
    assert bounces[0] == bounce
    for p in server.posts_to("/bounces"):
        assert "authorization" not in p.headers and "x-tern-test" not in p.headers, p.headers
    assert webhook_metric(tern, "tern_webhook_events_total", "crm", "dropped") == 0
    assert (tern.spool / "outbox" / "crm").is_dir() and (tern.spool / "outbox" / default_name).is_dir()
    assert webhook_metric(tern, "tern_webhook_events_total", default_name, "sent") == 1


# --------------------------------------------------------------------------------------------
# 2. The webhook down, tern killed with SIGKILL meanwhile: nothing lost, nothing twice


def test_webhook_down_and_a_sigkill_lose_nothing(hook_server, hook_relay, hops, tmp_path):
    hop = hops(FIVE_IP)
    port = free_port()  # nothing listens there yet: connections refused
    url = f"http://127.0.0.1:{port}/hook"
    tern = hook_relay(webhooks=[{"url": url, "name": "crm", "batch_size": 20, "interval": "200ms", "timeout": "5s"}])
    outbox = tern.spool / "outbox" / "crm"
    watch = MetricWatch(tern, "tern_webhook_failures_total", "crm").start()

    plan = [[f"d{i}@five.test"] + ([f"e{i}@five.test"] if i % 3 == 0 else []) for i in range(8)]
    delivered = send_many(tern, [(SENDER, rcpts, make_message(subject=f"down {i}", sender=SENDER), "")
                                 for i, rcpts in enumerate(plan)])
    hop.wait_for(len(plan), WAIT, lambda: diagnostics(tern, hop))
    wait_removed(tern, delivered, hop)  # removed only once its events were in the outbox on disk
    failed = f"webhook crm: POST to {url} failed"
    tern.wait_log(failed, 1, WAIT)
    expected = [(t, q, r) for q, rcpts in zip(delivered, plan) for r in rcpts for t in ("reception", "delivery")]
    on_disk = counts(outbox_events(outbox))
    assert all(on_disk.get(k) == 1 for k in expected), f"the outbox lacks events: {sorted(on_disk)}"
    # The backoff: the second try about 1 s after the first, the third about 2 s after that (x0.8..1.2).
    wait_until(lambda: watch.value() >= 3, 10, "the third failed POST")
    watch.stop()
    first, second, third = (watch.first_time(n) for n in (1, 2, 3))
    assert 0.6 <= second - first <= 1.6, f"second try {second - first:.2f}s after the first, not ~1 s"
    assert 1.4 <= third - second <= 2.9, f"third try {third - second:.2f}s after the second, not ~2 s"

    # Three more to a destination that refuses connections (they stay queued), then SIGKILL right after
    # their 250: their reception events were on disk before the 250.
    queued_plan = [[f"q{i}@retry.test"] for i in range(3)]
    queued = send_many(tern, [(SENDER, rcpts, make_message(subject=f"queued {i}", sender=SENDER), "")
                              for i, rcpts in enumerate(queued_plan)])
    tern.kill()
    expected += [("reception", q, r) for q, rcpts in zip(queued, queued_plan) for r in rcpts]
    on_disk = counts(outbox_events(outbox))
    assert all(on_disk.get(k) for k in expected), f"the outbox lacks events after the kill: {sorted(on_disk)}"

    tern.start()
    tern.wait_log(failed, 2, WAIT)  # the restarted tern tries too, and fails
    retry = hops(RETRY_IP)          # the queued messages can go now
    # The webhook back, but answering 503 at first: a failure too, and the same batch comes again.
    server = hook_server(port, status=503)
    wait_until(lambda: server.posts_to("/hook"), WAIT, "a POST answered with 503")
    server.status = 200
    expected += [("delivery", q, r) for q, rcpts in zip(queued, queued_plan) for r in rcpts]

    def arrived() -> bool:
        got = counts(server.events("/hook"))
        return all(got.get(k) for k in expected)

    wait_until(arrived, 40, "every reception and delivery event at the webhook",
               lambda: f"missing {[k for k in expected if k not in counts(server.events('/hook'))]}\n"
                       + diagnostics(tern, hop, retry))
    tern.wait_log("webhook crm: POSTs succeed again", 1, WAIT)
    assert webhook_metric(tern, "tern_webhook_failures_total", "crm") >= 2  # refused, then 503
    posts = server.posts_to("/hook")
    refused = posts[0]
    assert refused.status == 503 and refused.events
    accepted = next(p for p in posts if p.ok)
    assert accepted.events == refused.events, "the batch answered 503 was not the one sent again"
    wait_removed(tern, queued, retry)
    wait_until(lambda: webhook_metric(tern, "tern_webhook_events_total", "crm", "sent")
               == len(server.events("/hook")) and counts(server.events("/hook")).get(expected[-1]), WAIT,
               "the sent counter to match what the webhook got")
    got = server.events("/hook")
    for e in got:
        check_event_fields(e)
    # No 2xx was given before the kill: nothing may arrive twice. (A queued message's transient_failure
    # may come once from each run: two attempts, two events, told apart by their time.)
    seen: dict[str, int] = {}
    for e in got:
        seen[json.dumps(e, sort_keys=True)] = seen.get(json.dumps(e, sort_keys=True), 0) + 1
    twice = [e for e, n in seen.items() if n > 1]
    assert not twice, f"events POSTed more than once: {twice}"
    assert all(counts(got)[k] == 1 for k in expected), {k: counts(got)[k] for k in expected if counts(got)[k] != 1}
    position = {key(e): n for n, e in enumerate(got)}
    for q, rcpts in zip(delivered + queued, plan + queued_plan):
        for r in rcpts:
            assert position[("reception", q, r)] < position[("delivery", q, r)], (q, r)
    assert server.most_in_flight["/hook"] == 1, server.most_in_flight
    assert not server.errors, server.errors
    assert webhook_metric(tern, "tern_webhook_events_total", "crm", "dropped") == 0


def test_acknowledged_events_are_not_sent_again_after_a_sigkill(hook_server, hook_relay, hops):
    """The cursor: once a batch got its 2xx and the cursor file says so, a SIGKILL and a restart send
    nothing of it again; a line cut short at the end of the outbox's file is dropped at start-up."""
    hop = hops(FIVE_IP)
    port = free_port()
    server = hook_server(port)
    tern = hook_relay(webhooks=[{"url": f"http://127.0.0.1:{port}/hook", "name": "crm", "batch_size": 4,
                                 "interval": "100ms"}])
    outbox = tern.spool / "outbox" / "crm"
    qids = send_many(tern, [(SENDER, [f"k{i}@five.test"], make_message(subject=f"k {i}", sender=SENDER), "")
                            for i in range(6)])
    wait_removed(tern, qids, hop)
    expected = {(t, q, f"k{i}@five.test") for i, q in enumerate(qids) for t in ("reception", "delivery")}
    wait_until(lambda: expected <= set(counts(server.events("/hook"))), WAIT, "the events at the webhook")

    def cursor_at_end() -> bool:
        segments = sorted(outbox.glob("*.jsonl"))
        try:
            cursor = (outbox / "cursor").read_text().split()
        except FileNotFoundError:
            return False
        return bool(segments) and cursor == [str(int(segments[-1].name[:-6])), str(len(data_of(segments[-1])))]

    wait_until(cursor_at_end, WAIT, "the cursor file at the end of the outbox",
               lambda: f"cursor {(outbox / 'cursor').read_text() if (outbox / 'cursor').exists() else None!r}, "
                       f"files {[(p.name, p.stat().st_size) for p in outbox.iterdir()]}")
    before = len(server.events("/hook"))
    assert before == len(expected)
    tern.kill()
    last = sorted(outbox.glob("*.jsonl"))[-1]
    with last.open("r+b") as f:
        f.seek(len(data_of(last)))
        f.write(b'{"type":"delivery","time":1765000000.000,"queue_id":"0661')  # a write cut short
    tern.start()
    (later,) = send_many(tern, [(SENDER, ["later@five.test"], make_message(subject="later", sender=SENDER), "")])
    wait_until(lambda: ("delivery", later, "later@five.test") in counts(server.events("/hook")), WAIT,
               "the later message's delivery event", lambda: tern.stderr()[-3000:])
    got = server.events("/hook")
    assert [key(e) for e in got[before:]] == [("reception", later, "later@five.test"),
                                              ("delivery", later, "later@five.test")], got[before:]
    assert not server.errors, server.errors


# --------------------------------------------------------------------------------------------
# 3. The outbox's bound


def test_the_outbox_is_bounded_and_drops_the_oldest(hook_server, hook_relay, hops, tmp_path):
    hop = hops(FIVE_IP)
    port = free_port()  # the webhook down during the load
    max_size = 16384
    path = tmp_path / "events.jsonl"
    began = time.monotonic()
    tern = hook_relay(webhooks=[{"url": f"http://127.0.0.1:{port}/hook", "name": "small", "batch_size": 100,
                                 "interval": "200ms", "timeout": "5s", "max_outbox_size": max_size}],
                      events_file=path)
    outbox = tern.spool / "outbox" / "small"

    # The outbox's size on disk, sampled all through the load.
    samples: list[int] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(outbox_bytes_on_disk(outbox))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    qids: list[str] = []
    try:
        for chunk in range(4):
            qids += send_many(tern, [(SENDER, [f"b{chunk}-{i}@five.test"],
                                      make_message(subject=f"bulk {chunk}-{i}", sender=SENDER,
                                                   body="x" * 200 + "\r\n"), "")
                                     for i in range(50)])
        hop.wait_for(len(qids), WAIT, lambda: diagnostics(tern, hop))
        wait_removed(tern, qids, hop)
    finally:
        stop.set()
        sampler.join(timeout=5)
    samples.append(outbox_bytes_on_disk(outbox))
    assert len(samples) > 20, "too few samples of the outbox's size"
    # Room is made before each write, so the files never hold more than the bound.
    assert max(samples) <= max_size, f"the outbox held {max(samples)} bytes, over max_outbox_size {max_size}"
    line = tern.wait_log("webhook small: outbox over max_outbox_size", 1, WAIT)
    assert "oldest events dropped" in line, line
    dropped = webhook_metric(tern, "tern_webhook_events_total", "small", "dropped")
    assert dropped > 0
    assert webhook_metric(tern, "tern_webhook_outbox_bytes", "small") <= max_size
    # Backoff: the POSTs were retried at 1 s, 2 s, 4 s ... (x0.8..1.2), not more often.
    failures = webhook_metric(tern, "tern_webhook_failures_total", "small")
    down_for = time.monotonic() - began
    assert 1 <= failures <= 2 + math.log2(down_for / 0.8 + 1), f"{failures:g} failed POSTs in {down_for:.1f}s"

    wait_until(lambda: len(file_events(path)) >= 2 * len(qids), WAIT, "every event in the events file")
    emitted = file_events(path)
    assert counts(emitted) == {(t, q, f"b{n // 50}-{n % 50}@five.test"): 1
                               for n, q in enumerate(qids) for t in ("reception", "delivery")}
    server = hook_server(port)
    wait_until(lambda: webhook_metric(tern, "tern_webhook_events_total", "small", "sent") + dropped >= len(emitted),
               40, "sent + dropped to account for every event emitted",
               lambda: f"sent {webhook_metric(tern, 'tern_webhook_events_total', 'small', 'sent')}, dropped "
                       f"{dropped}, emitted {len(emitted)}, POSTed {len(server.events('/hook'))}")
    sent = webhook_metric(tern, "tern_webhook_events_total", "small", "sent")
    assert sent + webhook_metric(tern, "tern_webhook_events_total", "small", "dropped") == len(emitted)
    got = server.events("/hook")
    assert len(got) == sent, f"the webhook got {len(got)} events, tern counts {sent:g} sent"
    # What arrives is the newest events, in order: the file's last ones.
    assert got and got == emitted[len(emitted) - len(got):], "the webhook did not get the newest events"
    assert ("delivery", qids[-1], "b3-49@five.test") in counts(got)
    assert all(len(p.events) <= 100 for p in server.posts_to("/hook"))
    assert not server.errors, server.errors


def test_events_dropped_while_their_post_is_in_flight_are_not_counted_twice(hook_server, hook_relay, hops,
                                                                            tmp_path):
    """The webhook slow (its first POST answered only later) while the outbox overflows: the file that POST
    was read from is dropped meanwhile, then the POST gets its 2xx. Its events were delivered: counted as
    sent, and not as dropped as well; sent + dropped is still every event emitted."""
    hop = hops(FIVE_IP)
    port = free_port()
    server = hook_server(port, hold_first=1, hold_for=20)
    path = tmp_path / "events.jsonl"
    tern = hook_relay(webhooks=[{"url": f"http://127.0.0.1:{port}/hook", "name": "small", "interval": "50ms",
                                 "timeout": "25s", "max_outbox_size": 16384}], events_file=path)
    qids = send_many(tern, [(SENDER, ["first@five.test"], make_message(subject="first", sender=SENDER), "")])
    wait_until(lambda: server.arrived >= 1, WAIT, "the first POST (held)")
    for chunk in range(4):
        qids += send_many(tern, [(SENDER, [f"b{chunk}-{i}@five.test"],
                                  make_message(subject=f"bulk {chunk}-{i}", sender=SENDER, body="x" * 200 + "\r\n"), "")
                                 for i in range(50)])
    tern.wait_log("webhook small: outbox over max_outbox_size", 1, WAIT)
    server.gate.set()  # the held POST answered 200 now, after its file was dropped
    wait_removed(tern, qids, hop)
    wait_until(lambda: len(file_events(path)) >= 2 * len(qids), WAIT, "every event in the events file")
    emitted = len(file_events(path))

    def metrics() -> tuple[float, float]:
        return (webhook_metric(tern, "tern_webhook_events_total", "small", "sent"),
                webhook_metric(tern, "tern_webhook_events_total", "small", "dropped"))

    wait_until(lambda: sum(metrics()) >= emitted, WAIT, "sent + dropped to reach the events emitted",
               lambda: f"sent, dropped = {metrics()}, emitted {emitted}")
    sent, dropped = metrics()
    got = server.events("/hook")
    assert len(got) == len({json.dumps(e, sort_keys=True) for e in got}), "an event POSTed twice"
    assert (sent, dropped) == (len(got), emitted - len(got)), (
        f"tern counts {sent:g} sent and {dropped:g} dropped; the webhook got {len(got)} of {emitted} events")


def test_a_post_that_times_out_is_sent_again(hook_server, hook_relay, hops):
    hop = hops(FIVE_IP)
    port = free_port()
    server = hook_server(port, hold_first=1, hold_for=3.0)  # the first POST answered after 3 s
    url = f"http://127.0.0.1:{port}/hook"
    tern = hook_relay(webhooks=[{"url": url, "name": "slow", "interval": "100ms", "timeout": "1s"}])
    (qid,) = send_many(tern, [(SENDER, ["t@five.test"], make_message(subject="timeout", sender=SENDER), "")])
    wait_removed(tern, [qid], hop)
    tern.wait_log(f"webhook slow: POST to {url} failed", 1, WAIT)
    tern.wait_log("webhook slow: POSTs succeed again", 1, WAIT)
    assert webhook_metric(tern, "tern_webhook_failures_total", "slow") >= 1
    expected = {("reception", qid, "t@five.test"), ("delivery", qid, "t@five.test")}
    wait_until(lambda: expected <= set(counts(server.events("/hook"))), WAIT, "both events at the webhook")
    # The held POST is recorded once the server answers it (too late: tern gave up on it).
    wait_until(lambda: len(server.posts_to("/hook")) >= 2, WAIT, "the held POST to be answered")
    first, again = server.posts_to("/hook")[:2]
    assert again.started - first.started >= 1.0 + 0.8 - 0.1, "sent again before the timeout and the backoff"
    assert again.events[:len(first.events)] == first.events, "the batch that timed out was not sent again"


# --------------------------------------------------------------------------------------------
# 4. Config


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}")
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n' + text)
    return subprocess.run([str(TERN_BIN), "check-config", str(f)], capture_output=True, timeout=30)


@pytest.mark.parametrize("text,key,also", [
    ('[[events.webhook]]\nname = "crm"\n', "events.webhook[0].url", "is required"),
    ('[[events.webhook]]\nurl = "ftp://127.0.0.1/hook"\n', "events.webhook[0].url", "ftp://127.0.0.1/hook"),
    ('[[events.webhook]]\nurl = "127.0.0.1:9000/hook"\n', "events.webhook[0].url", "127.0.0.1:9000/hook"),
    ('[[events.webhook]]\nurl = "http://127.0.0.1:9/h"\nevents = ["delivery", "opened"]\n',
     "events.webhook[0].events", "opened"),
    ('[[events.webhook]]\nurl = "http://127.0.0.1:9/h"\nevents = []\n', "events.webhook[0].events", None),
    ('[[events.webhook]]\nurl = "http://127.0.0.1:9/h"\nbatch_size = 0\n', "events.webhook[0].batch_size", None),
    ('[[events.webhook]]\nurl = "http://127.0.0.1:9/h"\nmax_outbox_size = 100\n',
     "events.webhook[0].max_outbox_size", "16384"),
    ('[[events.webhook]]\nurl = "http://127.0.0.1:9/a"\nname = "crm"\n'
     '[[events.webhook]]\nurl = "http://127.0.0.1:9/b"\nname = "crm"\n', "events.webhook[1].name", "crm"),
    # The same URL twice without names: the same default name, so the same outbox.
    ('[[events.webhook]]\nurl = "http://127.0.0.1:9/a"\n[[events.webhook]]\nurl = "http://127.0.0.1:9/a"\n',
     "events.webhook[1].name", None),
    ('[[events.webhook]]\nurl = "http://127.0.0.1:9/h"\nbatchsize = 10\n', "batchsize", None),
])
def test_config_errors_name_the_key(tmp_path, text, key, also):
    p = check_config(tmp_path, text)
    err = p.stderr.decode()
    assert p.returncode == 78, (p.returncode, err)
    assert p.stdout == b""
    assert key in err, err
    if also:
        assert also in err, err


def test_config_defaults(tmp_path):
    import tomllib
    url = "http://127.0.0.1:9000/hook"
    p = check_config(tmp_path, f'[[events.webhook]]\nurl = "{url}"\nheaders = {{ Authorization = "Bearer x" }}\n')
    assert p.returncode == 0, p.stderr.decode()
    (hook,) = tomllib.loads(p.stdout.decode())["events"]["webhook"]
    assert hook == {"name": "webhook-%08x" % zlib.crc32(url.encode()), "url": url,
                    "events": ["reception", "delivery", "transient_failure", "bounce", "expiration", "rejection",
                               "suppression", "admin"],
                    "batch_size": 100, "interval": "1s", "timeout": "30s", "max_outbox_size": 268435456,
                    "headers": {"Authorization": "Bearer x"}}
