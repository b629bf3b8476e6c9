"""Helpers for the delivery tests (test_delivery.py): next-hop SMTP servers (aiosmtpd) that record what
they receive and can be told to fail, tern's delivery log lines, and DSN (RFC 3464) parsing. The dnsmasq
name server and its DNS client are conftest's (DnsServer, dns_query), imported here for older tests.

Everything runs on loopback: next hops listen on 127.0.0.2 and up (127.0.0.1 is tern's own listen
address, which tern would take for itself in an MX list). Inside `unshare --net` all of 127/8 is
local, so any 127.0.0.x address can be bound.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from conftest import (DNSMASQ, POLL, QTYPE_NAMES, QTYPES, RCODES, DNSAnswer, DnsServer,  # noqa: F401 - used by the tests
                      dns_query, free_port_on, port_free_on, wait_until)


# --------------------------------------------------------------------------------------------
# Next hops


@dataclass
class Transaction:
    mail_from: str            # "" for the null sender
    rcpts: list[str]
    content: bytes            # exactly as received, after dot-unstuffing, without the final ".CRLF"
    connection: int           # 1, 2, ... in order of connections that got as far as MAIL
    mail_options: list[str] = field(default_factory=list)
    at: float = 0.0           # time.monotonic() when the DATA reply was sent
    session: "HopSession | None" = None  # the TCP session it came in on

    def header(self, name: str) -> str | None:
        m = re.search(rb"(?im)^" + re.escape(name.encode()) + rb":[ \t]*(.*?)\r?$", self.content.split(b"\r\n\r\n", 1)[0])
        return m.group(1).decode("utf-8", "replace") if m else None

    @property
    def subject(self) -> str | None:
        return self.header("Subject")


@dataclass
class HopSession:
    """One TCP connection to a NextHop, from accept to close (a provider's view of a sender)."""
    number: int                  # 1, 2, ... in order of accept
    peer: str                    # the client's IP address: the relay's source address
    started: float               # time.monotonic() at accept
    ended: float | None = None   # time.monotonic() at close; None while open
    ehlo: str | None = None      # the last EHLO/HELO name
    refused: bool = False        # greeted with NextHop.refuse_reply and closed
    messages: list[float] = field(default_factory=list)  # time.monotonic() of each accepted end of DATA


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP with a HopSession per connection: accept and close times, the peer, concurrency,
    and the refusal at the greeting (refuse_first)."""

    def __init__(self, hop: "NextHop", *args, **kw):
        super().__init__(*args, **kw)
        self.hop = hop
        self.tern_record: HopSession | None = None

    def connection_made(self, transport):
        fresh = self.transport is None  # STARTTLS makes a second call on the same connection
        super().connection_made(transport)
        if fresh:
            self.tern_record = self.hop._opened(self, transport.get_extra_info("peername"))

    def connection_lost(self, error):
        super().connection_lost(error)
        if self.tern_record is not None and self.tern_record.ended is None:
            self.hop._closed(self, self.tern_record)

    async def _handle_client(self):
        if self.tern_record is not None and self.tern_record.refused:
            await self.push(self.hop.refuse_reply)
            self.transport.close()
            return
        await super()._handle_client()


class _Handler:
    def __init__(self, hop: "NextHop"):
        self.hop = hop

    def _connection(self, session) -> int:
        conn = getattr(session, "tern_test_connection", None)
        if conn is None:
            with self.hop.lock:
                self.hop.sessions.append(session)  # kept alive: no reuse of ids
                conn = len(self.hop.sessions)
            session.tern_test_connection = conn
        return conn

    def _said_helo(self, server, hostname: str) -> None:
        with self.hop.lock:
            self.hop.ehlos.append(hostname)
            record = getattr(server, "tern_record", None)
            if record is not None:
                record.ehlo = hostname

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self._said_helo(server, hostname)
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        self._said_helo(server, hostname)
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self._connection(session)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.hop.rcpt_replies.get(address.lower())
        with self.hop.lock:
            self.hop.rcpt_attempts.append(address)
            if reply is None and self.hop.rcpt_failures < self.hop.rcpt_fail_first:
                self.hop.rcpt_failures += 1
                reply = self.hop.rcpt_fail_reply
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.hop.held is not None:
            deadline = time.monotonic() + 25
            while not self.hop.held.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self.hop.delay:
            await asyncio.sleep(self.hop.delay)
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":
            mail_from = ""
        t = Transaction(mail_from=mail_from, rcpts=list(envelope.rcpt_tos), content=bytes(envelope.content),
                        connection=self._connection(session), mail_options=list(envelope.mail_options),
                        at=time.monotonic(), session=getattr(server, "tern_record", None))
        with self.hop.lock:
            n = len(self.hop.attempts)
            self.hop.attempts.append(t)
            if n < self.hop.fail_first:
                return self.hop.fail_reply
            self.hop.transactions.append(t)
            if t.session is not None:
                t.session.messages.append(t.at)
        return "250 2.0.0 Ok: delivered"


class _CountingController(Controller):
    def __init__(self, hop: "NextHop", **kw):
        super().__init__(_Handler(hop), **kw)
        self.hop = hop

    def factory(self):
        return _RecordingSMTP(self.hop, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self):
        # aiosmtpd's readiness probe at start: sent from a port registered first, so that it is not
        # taken for a session of the relay.
        with socket.socket(socket.AF_INET6 if ":" in self.hostname else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.bind((self.hostname, 0))
            with self.hop.lock:
                self.hop._probes.add(s.getsockname())
            s.connect((self.hostname, self.port))
            s.recv(1024)


class NextHop:
    """An SMTP server on host:port (aiosmtpd) that records every accepted transaction, and every TCP
    session (`records`: peer address, EHLO name, start and end, the messages in it), so that it can
    stand for a mailbox provider in the traffic shaping tests.

    rcpt_replies: {address: "550 5.1.1 ..."} answers RCPT for that recipient (any code);
    rcpt_fail_first: the first N RCPT commands (any recipient) get rcpt_fail_reply, later ones 250;
    fail_first: the first N transactions get fail_reply at the end of DATA, later ones 250;
    refuse_first: the first N connections get refuse_reply as the greeting and are closed;
    delay: seconds to sleep before answering the end of DATA (a slow destination);
    hold: answer no end of DATA until release() is called (at most 25 s), so mail piles up in tern.
    The counters (rcpt_fail_first, fail_first, refuse_first) may be changed while it runs, under `lock`.
    stop() closes the open sessions too and start() listens again on the same address: a next hop
    that dies and comes back; the records go on across the restart."""

    def __init__(self, host: str, port: int, *, rcpt_replies: dict[str, str] | None = None, fail_first: int = 0,
                 fail_reply: str = "451 4.3.0 Try again later", delay: float = 0.0, hold: bool = False,
                 refuse_first: int = 0, refuse_reply: str = "421 4.7.0 Too many connections, try again later",
                 rcpt_fail_first: int = 0, rcpt_fail_reply: str = "421 4.7.0 Rate limited, try again later"):
        self.host = host
        self.port = port
        self.rcpt_replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        self.fail_first = fail_first
        self.fail_reply = fail_reply
        self.refuse_first = refuse_first
        self.refuse_reply = refuse_reply
        self.rcpt_fail_first = rcpt_fail_first
        self.rcpt_fail_reply = rcpt_fail_reply
        self.rcpt_failures = 0                     # RCPT commands answered with rcpt_fail_reply
        self.delay = delay
        self.held = threading.Event() if hold else None
        self.lock = threading.Lock()
        self.transactions: list[Transaction] = []  # accepted (250 at end of DATA)
        self.attempts: list[Transaction] = []      # every end of DATA, accepted or not
        self.rcpt_attempts: list[str] = []
        self.sessions: list = []                   # connections that sent MAIL
        self.ehlos: list[str] = []
        self.records: list[HopSession] = []        # every TCP session, in order of accept
        self.open_now = 0                          # sessions open at this moment
        self.max_open = 0                          # the most ever open at once
        self._live: dict[_RecordingSMTP, HopSession] = {}
        self._probes: set = set()                  # aiosmtpd's readiness probes: not sessions
        self.controller: Controller | None = None

    def start(self) -> "NextHop":
        self.controller = _CountingController(self, hostname=self.host, port=self.port,
                                              server_hostname=f"hop-{self.host}.test", ready_timeout=10,
                                              enable_SMTPUTF8=True)
        self.controller.start()
        return self

    def release(self) -> None:
        if self.held is not None:
            self.held.set()

    def stop(self) -> None:
        """Stops listening and closes every open session (a dead next hop: connections refused)."""
        self.release()
        controller = self.controller
        if controller is None:
            return
        self.controller = None

        def close_sessions():
            for smtp in list(self._live):
                if smtp.transport is not None:
                    smtp.transport.abort()

        # Queued before the controller's own stop, so it runs first, on the server's loop.
        controller.loop.call_soon_threadsafe(close_sessions)
        controller.stop()
        with self.lock:
            now = time.monotonic()
            for record in self._live.values():
                record.ended = record.ended or now
            self._live.clear()
            self.open_now = 0

    @property
    def running(self) -> bool:
        return self.controller is not None

    def _opened(self, smtp: "_RecordingSMTP", peer) -> HopSession | None:
        with self.lock:
            if peer is None or tuple(peer[:2]) in self._probes:
                return None
            record = HopSession(number=len(self.records) + 1, peer=peer[0], started=time.monotonic())
            record.refused = self.refuse_first > sum(r.refused for r in self.records)
            self.records.append(record)
            self._live[smtp] = record
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
            return record

    def _closed(self, smtp: "_RecordingSMTP", record: HopSession) -> None:
        with self.lock:
            if self._live.pop(smtp, None) is not None:
                record.ended = time.monotonic()
                self.open_now -= 1

    @property
    def connections(self) -> int:
        with self.lock:
            return len(self.sessions)

    def sessions_seen(self) -> list[HopSession]:
        """Every TCP session so far (refused ones included), in order of accept."""
        with self.lock:
            return list(self.records)

    def peers(self) -> set[str]:
        """The client addresses sessions came from."""
        return {r.peer for r in self.sessions_seen()}

    def ehlo_by_peer(self) -> dict[str, set[str]]:
        """{client address: the EHLO names said from it}."""
        out: dict[str, set[str]] = {}
        for r in self.sessions_seen():
            if r.ehlo is not None:
                out.setdefault(r.peer, set()).add(r.ehlo)
        return out

    def message_times(self) -> list[float]:
        """time.monotonic() of every accepted message, in order."""
        return sorted(t.at for t in self.received())

    def most_in_window(self, window: float = 1.0) -> int:
        """The most messages accepted within any `window` seconds (a sliding window over the times)."""
        times = self.message_times()
        most, first = 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= window:
                first += 1
            most = max(most, last - first + 1)
        return most

    def received(self) -> list[Transaction]:
        with self.lock:
            return list(self.transactions)

    def delivered_rcpts(self) -> list[str]:
        return [r for t in self.received() for r in t.rcpts]

    def wait_for(self, n: int, timeout: float = 30.0, on_timeout=None) -> list[Transaction]:
        """Waits until at least n transactions were accepted; returns them all."""
        wait_until(lambda: len(self.transactions) >= n, timeout,
                   f"{n} transaction(s) at {self.host}:{self.port} (have {len(self.transactions)})", on_timeout)
        return self.received()

    def __repr__(self) -> str:
        return f"NextHop({self.host}:{self.port}, {len(self.transactions)} accepted, {self.connections} conns)"


class GreetingRefuser:
    """A server that answers every connection with "421 ..." at the greeting and closes it."""

    def __init__(self, host: str, port: int, reply: bytes = b"421 4.3.2 Service not available, closing channel\r\n"):
        self.host = host
        self.port = port
        self.reply = reply
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.thread: threading.Thread | None = None
        self.stopping = False

    def start(self) -> "GreetingRefuser":
        self.sock.bind((self.host, self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                conn.sendall(self.reply)
                conn.settimeout(1.0)
                try:
                    conn.recv(1024)  # the client's QUIT, if any
                except OSError:
                    pass
            finally:
                conn.close()

    def stop(self) -> None:
        self.stopping = True
        if self.thread:
            self.thread.join(timeout=5)
        self.sock.close()


# --------------------------------------------------------------------------------------------
# tern's delivery log: "ID: to=<rcpt>, relay=host[ip]:port, delay=0.05, dsn=2.0.0, status=sent (250 ...)",
# with ", source=NAME[ip]" after the relay when sent from an egress source and
# ", tls=TLSv1.3 CIPHER verified|unverified" when the session used TLS.

LOG_RE = re.compile(
    r"(?P<id>[0-9A-F]{14}): to=<(?P<rcpt>[^>]*)>, relay=(?P<relay>[^,]*)(?:, source=(?P<source>[^,]*))?"
    r"(?:, tls=(?P<tls>[^,]*))?,"
    r" delay=(?P<delay>[0-9.]+),"
    r" dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), status=(?P<status>\w+)(?: \((?P<reply>.*)\))?"
)


def log_entries(stderr: str, queue_id: str | None = None, status: str | None = None,
                rcpt: str | None = None) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        m = LOG_RE.search(line)
        if not m:
            continue
        d = m.groupdict()
        if queue_id and d["id"] != queue_id:
            continue
        if status and d["status"] != status:
            continue
        if rcpt and d["rcpt"].lower() != rcpt.lower():
            continue
        out.append(d)
    return out


# --------------------------------------------------------------------------------------------
# DSNs (RFC 3464 in an RFC 6522 multipart/report)


@dataclass
class DSN:
    message: email.message.Message
    per_message: dict[str, str]
    recipients: list[dict[str, str]]  # one dict per per-recipient block, keys lowercased

    def final_recipients(self) -> list[str]:
        out = []
        for r in self.recipients:
            value = r.get("final-recipient", "")
            out.append(value.split(";", 1)[1].strip() if ";" in value else value.strip())
        return out


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t" and current:
            fields[current] += " " + line.strip()
            continue
        if ":" in line:
            k, v = line.split(":", 1)
            current = k.strip().lower()
            fields[current] = v.strip()
    return fields


def parse_dsn(content: bytes) -> DSN:
    """Parses a bounce; asserts it is multipart/report; report-type=delivery-status with a
    message/delivery-status part."""
    msg = email.message_from_bytes(content, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report", f"bounce is {msg.get_content_type()}, not multipart/report"
    assert (msg.get_param("report-type") or "").lower() == "delivery-status", (
        f"report-type is {msg.get_param('report-type')!r}, not delivery-status")
    status_parts = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(status_parts) == 1, f"expected one message/delivery-status part, found {len(status_parts)}"
    part = status_parts[0]
    # Work from the part's raw text: split the body into blank-line separated groups.
    raw = part.as_bytes().decode("utf-8", "replace").replace("\r\n", "\n")
    body = raw.split("\n\n", 1)[1] if "\n\n" in raw else ""
    groups = [g for g in re.split(r"\n[ \t]*\n", body) if g.strip()]
    assert groups, f"empty delivery-status part: {raw!r}"
    blocks = [_fields(g) for g in groups]
    recipients = [b for b in blocks if "final-recipient" in b]
    per_message = {k: v for b in blocks if "final-recipient" not in b for k, v in b.items()}
    return DSN(msg, per_message, recipients)
