"""Fixtures and helpers for Tern's integration tests.

Every test runs the real binary (`.build/release/tern serve --config <tmp>/tern.toml`, or $TERN_BIN)
as a subprocess with its own config, port and spool, and talks SMTP to it over loopback.
Run with Debian's /usr/bin/python3 (python3-pytest, python3-aiosmtpd); scripts/test.sh runs them
inside `unshare --net` so every packet stays on a private loopback.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERN_BIN = Path(os.environ.get("TERN_BIN", REPO / ".build" / "release" / "tern"))
HOSTNAME = "relay.test"
CLIENT_HELO = "client.test"
ID_RE = re.compile(r"^[0-9A-F]{14}$")
QUEUED_RE = re.compile(r"queued as ([0-9A-F]{14})\b")
STARTUP_TIMEOUT = 20.0


# --------------------------------------------------------------------------------------------
# Small TOML writer (enough for Tern's config: strings, ints, bools, lists, one level of tables)

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else toml_string(key)


def toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u%04X" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def toml_document(top: dict, tables: dict[str, dict | list[dict]]) -> str:
    """`tables`: {"name": {...}} is a table [name] ("egress.sources.a" for a nested one), {"name": [{...},
    ...]} an array of tables [[name]] ([[shaping]], [[backoff]])."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in top.items()]
    for name, table in tables.items():
        if table is None:
            continue
        for one in table if isinstance(table, list) else [table]:
            lines.append("")
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in one.items())
    return "\n".join(lines) + "\n"


_PORTS_GIVEN: set[int] = set()


def stop_process(p: subprocess.Popen | None, timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, never the same one twice in this run: bind(0) may hand back a port it
    just gave (a server's SMTP and admin ports the same one, then EADDRINUSE at start-up)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------------------------
# Waiting: poll for the thing that must happen, never sleep and then assert.

POLL = 0.05  # seconds between polls in every wait


def wait_until(predicate, timeout: float, what: str, on_timeout=None):
    """Polls predicate every POLL seconds until it returns a true value (returned), at most timeout
    seconds; then fails with `what` and, if given, on_timeout()'s text (e.g. tern's stderr)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = ""
            if on_timeout is not None:
                try:
                    extra = "\n" + str(on_timeout())
                except Exception as e:  # noqa: BLE001 - diagnostics only
                    extra = f"\n(diagnostics failed: {e!r})"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(POLL)


def read_until_closed(s: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (EOF or reset); fails if it is still open after
    `limit` seconds, so that a server that should have closed cannot pass by going quiet."""
    data = b""
    deadline = time.monotonic() + limit
    old = s.gettimeout()
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"still open after {limit:g}s; received {data[:300]!r}"
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
    finally:
        try:
            s.settimeout(old)
        except OSError:
            pass


def signal_until_exit(proc: subprocess.Popen, signals: list[int], timeout: float = 30.0,
                      every: float = 0.0002) -> int:
    """Sends signals[0], signals[1], ... (cycling) every `every` seconds until proc has exited, so that
    one lands in its last moments; returns how many were sent. The pacing is the point, not a wait."""
    deadline = time.monotonic() + timeout
    sent = 0
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"pid {proc.pid} did not exit within {timeout:g}s"
        try:
            os.kill(proc.pid, signals[sent % len(signals)])
        except ProcessLookupError:
            break
        sent += 1
        time.sleep(every)
    proc.wait(timeout=timeout)
    return sent


# --------------------------------------------------------------------------------------------
# dnsmasq as the test zone's name server (the one starter every delivery test uses), and ports free on
# several loopback addresses for the next hops behind it.

DNSMASQ = "/usr/sbin/dnsmasq"


def port_free_on(port: int, host: str, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port_on(hosts: list[str], kind: int = socket.SOCK_STREAM) -> int:
    """A port free on every one of hosts (TCP, or UDP and TCP for kind=SOCK_DGRAM)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if all(port_free_on(port, h, socket.SOCK_STREAM) for h in hosts) and (
                kind == socket.SOCK_STREAM or all(port_free_on(port, h, socket.SOCK_DGRAM) for h in hosts)):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


# --------------------------------------------------------------------------------------------
# A minimal DNS client (UDP, one question), to check the name server says what the tests assume.

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def _decode_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    for _ in range(128):
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        if length == 0:
            pos += 1
            break
        labels.append(msg[pos + 1: pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    return ".".join(labels), (end if end is not None else pos)


@dataclass
class DNSAnswer:
    rcode: str
    records: list[tuple[str, str, object]]  # (owner, type, data): A "1.2.3.4", MX (pref, host), CNAME host

    def of_type(self, rtype: str) -> list:
        return [data for _, t, data in self.records if t == rtype]


def dns_query(port: int, name: str, qtype: str, server: str = "127.0.0.1", timeout: float = 2.0) -> DNSAnswer:
    qid = random.randrange(65536)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _encode_name(name) + struct.pack(">HH", QTYPES[qtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (server, port))
        while True:
            msg, _ = s.recvfrom(65535)
            if len(msg) >= 12 and struct.unpack(">H", msg[:2])[0] == qid:
                break
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    pos = 12
    for _ in range(qd):
        _, pos = _decode_name(msg, pos)
        pos += 4
    records = []
    for _ in range(an):
        owner, pos = _decode_name(msg, pos)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[pos: pos + 10])
        pos += 10
        rdata_pos = pos
        tname = QTYPE_NAMES.get(rtype, str(rtype))
        if rtype == 1:
            data = socket.inet_ntoa(msg[pos: pos + 4])
        elif rtype == 15:
            pref = struct.unpack(">H", msg[pos: pos + 2])[0]
            data = (pref, _decode_name(msg, pos + 2)[0])
        elif rtype == 5:
            data = _decode_name(msg, pos)[0]
        else:
            data = msg[pos: pos + rdlen]
        records.append((owner, tname, data))
        pos = rdata_pos + rdlen
    return DNSAnswer(RCODES.get(flags & 0xF, str(flags & 0xF)), records)


class DnsServer:
    """dnsmasq answering for *.test from its command line only (no resolv.conf, no hosts file);
    names under .test that are not configured answer NXDOMAIN."""

    def __init__(self, records: list[str], workdir: Path, port: int | None = None):
        self.records = records
        self.port = port or free_port_on(["127.0.0.1"], socket.SOCK_DGRAM)
        self.log_path = workdir / "dnsmasq.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "DnsServer":
        args = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                "--pid-file=", f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--local=/test/", "--local-ttl=1", "--log-facility=-"] + self.records
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}:\n{self.log()}")
            try:
                dns_query(self.port, "probe.test", "A", timeout=0.2)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dnsmasq does not answer on 127.0.0.1:{self.port}:\n{self.log()}")
                time.sleep(POLL)

    def query(self, name: str, qtype: str) -> DNSAnswer:
        return dns_query(self.port, name, qtype)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        # SIGKILL: dnsmasq may have SIGTERM blocked in this environment.
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# Mailbox providers for the traffic shaping tests (issue 16): two recipient domains whose MX records
# name one provider host (so an `mx` rule puts both under one set of limits), and a second provider
# with a domain of its own, so that a rule can match one provider and not the other. The next hop
# behind each host is a delivery_helpers.NextHop on the `provider` fixture's port. Egress sources are
# two more loopback addresses, which Linux takes as this machine's (all of 127/8 is on lo).


def mx_records(host: str, ip: str, domains: list[str], preference: int = 10) -> list[str]:
    """dnsmasq options: each of domains has one MX, `host`, and `host` has the A record `ip`."""
    return [f"--mx-host={d},{host},{preference}" for d in domains] + [f"--host-record={host},{ip}"]


PROVIDER_HOST, PROVIDER_IP, PROVIDER_DOMAINS = "mx.provider.test", "127.0.0.30", ["a.test", "b.test"]
OTHER_HOST, OTHER_IP, OTHER_DOMAINS = "mx.other.test", "127.0.0.31", ["c.test"]
# Where non-delivery notices to sender@sender.test go (start a NextHop there to receive them).
SENDER_HOST, SENDER_IP = "mx.sender.test", "127.0.0.32"
PROVIDER_RECORDS = (mx_records(PROVIDER_HOST, PROVIDER_IP, PROVIDER_DOMAINS)
                    + mx_records(OTHER_HOST, OTHER_IP, OTHER_DOMAINS)
                    + mx_records(SENDER_HOST, SENDER_IP, ["sender.test"]))
# [egress.sources.NAME] for the relay: (address, EHLO name).
EGRESS_SOURCES = {"a": ("127.0.0.21", "mta-a.relay.test"), "b": ("127.0.0.22", "mta-b.relay.test")}
# [delivery] for the relay in front of the providers: retries after a second, refused hosts fail fast.
PROVIDER_DELIVERY = {
    "enabled": True,
    "max_connections": 1000,
    "max_connections_per_destination": 20,
    "retry_schedule": ["1s"],
    "max_queue_lifetime": "5d",
    "connect_timeout": "2s",
}


# --------------------------------------------------------------------------------------------
# A raw SMTP client: byte-exact control over what is sent, replies parsed as RFC 5321 4.2.


@dataclass
class Reply:
    code: int
    lines: list[str]  # the text after "250-" / "250 " of each line

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code (RFC 3463) of the first line, if any."""
        first = self.lines[0] if self.lines else ""
        m = re.match(r"^(\d\.\d{1,3}\.\d{1,3})(?:\s|$)", first)
        return m.group(1) if m else None

    def is_(self, code: int, enhanced: str | None = None) -> bool:
        return self.code == code and (enhanced is None or self.enhanced == enhanced)

    def __str__(self) -> str:
        if not self.lines:
            return str(self.code)
        return "\n".join(
            f"{self.code}{'-' if i < len(self.lines) - 1 else ' '}{line}" for i, line in enumerate(self.lines)
        )


def assert_reply(reply: Reply, code: int, enhanced: str | None = None, context: str = "") -> Reply:
    assert reply.is_(code, enhanced), (
        f"{context + ': ' if context else ''}expected {code} {enhanced or ''}, got:\n{reply}"
    )
    return reply


class SMTPConn:
    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None, timeout: float = 15.0):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""
        self.eof = False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "SMTPConn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2 :]
                return line
            if not self._fill():
                raise EOFError(f"connection closed; unparsed bytes: {self.buf!r}")

    def read_reply(self) -> Reply:
        lines: list[str] = []
        code = None
        while True:
            raw = self.read_line()
            line = raw.decode("utf-8", "replace")
            m = re.match(r"^(\d{3})([ -]?)(.*)$", line)
            assert m, f"malformed reply line {raw!r}"
            c = int(m.group(1))
            assert code is None or c == code, f"reply code changed within a multi-line reply: {lines} / {line}"
            code = c
            lines.append(m.group(3))
            if m.group(2) != "-":
                return Reply(code, lines)

    def cmd(self, line: str | bytes) -> Reply:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.read_reply()

    def greeting(self) -> Reply:
        return assert_reply(self.read_reply(), 220, context="greeting")

    def ehlo(self, name: str = CLIENT_HELO) -> Reply:
        return assert_reply(self.cmd(f"EHLO {name}"), 250, context="EHLO")

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the connection (anything it sent first stays in buf)."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self._fill()
            except socket.timeout:
                break
            except OSError:
                self.eof = True
        return self.eof

    def data(self, message: bytes) -> Reply:
        """DATA, the message dot-stuffed, the terminating dot; returns the final reply."""
        assert_reply(self.cmd("DATA"), 354, context="DATA")
        self.send(dot_stuff(message) + b".\r\n")
        return self.read_reply()


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency; the result ends with CRLF so that ".\r\n" can follow."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


def make_message(
    subject: str = "test",
    body: str | bytes = "Hello from the integration tests.\r\n",
    headers: list[tuple[str, str]] | None = None,
    msgid: str | None = None,
    sender: str = "sender@client.test",
    to: str = "rcpt@x.test",
) -> bytes:
    hdrs = [
        ("From", sender),
        ("To", to),
        ("Subject", subject),
        ("Date", email.utils.formatdate(localtime=False)),
        ("Message-Id", msgid or email.utils.make_msgid(domain="client.test")),
    ] + (headers or [])
    head = b"".join(f"{k}: {v}\r\n".encode() for k, v in hdrs)
    if isinstance(body, str):
        body = body.encode("utf-8")
    return head + b"\r\n" + body


def send_message(
    port: int,
    sender: str,
    rcpts: list[str],
    message: bytes,
    helo: str = CLIENT_HELO,
    source: str | None = None,
    mail_params: str = "",
    use_ehlo: bool = True,
) -> str:
    """One full transaction; asserts every step succeeds and returns the queue id."""
    with SMTPConn(port, source=source) as c:
        c.greeting()
        if use_ehlo:
            c.ehlo(helo)
        else:
            assert_reply(c.cmd(f"HELO {helo}"), 250, context="HELO")
        assert_reply(c.cmd(f"MAIL FROM:<{sender}>{(' ' + mail_params) if mail_params else ''}"), 250, "2.1.0")
        for r in rcpts:
            assert_reply(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5", context=f"RCPT {r}")
        reply = assert_reply(c.data(message), 250, "2.0.0", context="end of DATA")
        queue_id = queue_id_of(reply)
        assert_reply(c.cmd("QUIT"), 221, "2.0.0")
        return queue_id


def queue_id_of(reply: Reply) -> str:
    m = re.match(r"^2\.0\.0 Ok: queued as ([0-9A-F]{14})$", reply.lines[-1] if reply.lines else "")
    assert m, f"250 reply to DATA is not '250 2.0.0 Ok: queued as <ID>': {reply}"
    return m.group(1)


# --------------------------------------------------------------------------------------------
# Spool format: <spool>/queue/<last digit of ID>/<ID>.msg and <ID>.env, and the journal
# <spool>/journal/<N>.jnl (see README.md "Spool format"). Read here independently of Tern's code.


def read_journal(spool: Path) -> dict[str, tuple[bytes, bytes]]:
    """Live messages of the journal: id -> (envelope record, message bytes). A segment is read up to its
    first record that is damaged or not of its own life: v2 records (TJM2/TJD2) carry the low 32 bits of
    the segment number of the file they were written in, and one with another number is what a recycled
    file kept of its previous life; v1 records (TJM1/TJD1, the previous version's) are read only before
    any v2 record. A done record cancels its message; an id with an .env file was moved out."""
    live: dict[str, tuple[bytes, bytes]] = {}
    segments = sorted((spool / "journal").glob("*.jnl")) if (spool / "journal").is_dir() else []
    for segment in segments:
        data = segment.read_bytes()
        number = int(segment.name[:-4], 16) & 0xFFFFFFFF
        at = 0
        v2 = False
        while at + 4 <= len(data):
            magic = data[at:at + 4]
            if magic in (b"TJM2", b"TJD2") and at + 20 <= len(data):
                seg, first, second, crc = struct.unpack_from("<IIII", data, at + 4)
                if seg != number:
                    break  # the stale tail of a recycled segment
                head, covered = 20, data[at + 4:at + 8]
                v2 = True
            elif magic in (b"TJM1", b"TJD1") and not v2 and at + 16 <= len(data):
                first, second, crc = struct.unpack_from("<III", data, at + 4)
                head, covered = 16, b""
            else:
                break
            if magic[2:3] == b"M":
                end = at + head + first + second
                if end > len(data) or zlib.crc32(data[at + head:end], zlib.crc32(covered)) != crc:
                    break
                envelope = data[at + head:at + head + first]
                qid = re.search(rb"^id\t([0-9A-F]{14})$", envelope, re.M).group(1).decode()
                live[qid] = (envelope, data[at + head + first:end])
            else:
                end = at + head + first
                if end > len(data) or zlib.crc32(data[at + head:end], zlib.crc32(covered)) != crc:
                    break
                live.pop(data[at + head:end].decode(), None)
            at = end
    for qid in list(live):
        if (spool / "queue" / qid[-1] / f"{qid}.env").exists():
            del live[qid]
    return live


@dataclass
class Envelope:
    raw: str
    fields: dict[str, str] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # keys in file order, rcpt included
    rcpts: list[tuple[str, str]] = field(default_factory=list)  # (state, address)

    @property
    def recipients(self) -> list[str]:
        return [a for _, a in self.rcpts]

    @classmethod
    def parse(cls, data: bytes) -> "Envelope":
        text = data.decode("utf-8")  # strict: the record is UTF-8
        assert text.endswith("\n"), f"envelope does not end with a newline: {text!r}"
        lines = text[:-1].split("\n")
        env = cls(raw=text)
        assert lines[0] == "tern-envelope\t1", f"first line is {lines[0]!r}, not 'tern-envelope\\t1'"
        assert lines[-1] == "end", f"last line is {lines[-1]!r}, not 'end'"
        for line in lines[1:-1]:
            parts = line.split("\t")
            key = parts[0]
            env.keys.append(key)
            if key == "rcpt":
                # rcpt<TAB>state<TAB>address[<TAB>last reply]
                assert len(parts) in (3, 4), f"rcpt line must be rcpt<TAB>state<TAB>address[<TAB>reply]: {line!r}"
                env.rcpts.append((parts[1], parts[2]))
            else:
                assert len(parts) == 2, f"line must be key<TAB>value: {line!r}"
                assert key not in env.fields, f"duplicate key {key!r}"
                env.fields[key] = parts[1]
        return env


def env_seconds(value: str) -> float:
    """arrival / next-attempt: Unix seconds, possibly with a fraction."""
    assert re.fullmatch(r"\d+(\.\d+)?", value), f"not Unix seconds: {value!r}"
    return float(value)


def split_received(msg: bytes) -> tuple[bytes, bytes]:
    """Splits the spooled message into our (first) Received header, with its CRLF, and the rest."""
    assert msg.startswith(b"Received: "), f"spooled message does not start with Received: {msg[:200]!r}"
    pos = msg.index(b"\r\n") + 2
    while msg[pos : pos + 1] in (b"\t", b" "):
        pos = msg.index(b"\r\n", pos) + 2
    return msg[:pos], msg[pos:]


RECEIVED_RE = re.compile(
    r"^Received: from (?P<helo>\S+) \((?P<rdns>\S+) \[(?P<ip>[^\]]+)\]\)"
    r" by (?P<host>\S+) \(Tern\) with (?P<proto>ESMTP|SMTP|UTF8SMTP) id (?P<id>[0-9A-F]{14})"
    r"(?: for <(?P<rcpt>[^>]*)>)?; (?P<date>.+)$"
)


def check_received(header: bytes, *, queue_id: str, helo: str = CLIENT_HELO, ip: str = "127.0.0.1",
                   rcpt: str | None = None, proto: str | tuple = "ESMTP", rdns: str = "unknown") -> dict:
    assert header.endswith(b"\r\n")
    assert b"\r\n\tby " in header, f"Received is not folded with CRLF TAB before 'by': {header!r}"
    for line in header.split(b"\r\n"):
        assert len(line) <= 998, "Received header line over 998 octets"
    unfolded = re.sub(r"\s+", " ", header[:-2].decode("utf-8").replace("\r\n", ""))
    m = RECEIVED_RE.match(unfolded)
    assert m, f"Received header does not match the expected form: {unfolded!r}"
    assert m["helo"] == helo, unfolded
    assert m["rdns"] == rdns, unfolded
    assert m["ip"] == ip, unfolded
    assert m["host"] == HOSTNAME, unfolded
    assert m["proto"] in ((proto,) if isinstance(proto, str) else proto), unfolded
    assert m["id"] == queue_id, unfolded
    assert m["rcpt"] == rcpt, f"'for <rcpt>' expected {rcpt!r}: {unfolded!r}"
    assert re.search(r"\d{2}:\d{2}(:\d{2})? [+-]\d{4}$", m["date"]), f"not an RFC 5322 date-time: {m['date']!r}"
    date = email.utils.parsedate_to_datetime(m["date"])
    if date.tzinfo is None:  # "-0000": UTC, local offset unknown
        date = date.replace(tzinfo=datetime.timezone.utc)
    assert abs(date.timestamp() - time.time()) < 300, f"Received date {m['date']!r} is not now"
    return m.groupdict()


# --------------------------------------------------------------------------------------------
# The server under test


class Tern:
    """One `tern serve` process with its own directory, config, port and spool."""

    def __init__(self, workdir: Path, *, server: dict | None = None, top: dict | None = None,
                 aliases: dict | None = None, spool: dict | None = None, extra_tables: dict | None = None,
                 port: int | None = None, delivery: dict | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.spool = self.dir / "spool"
        self.config_path = self.dir / "tern.toml"
        self.stderr_path = self.dir / "stderr.log"
        self.stdout_path = self.dir / "stdout.log"
        srv = {
            "listen": [f"127.0.0.1:{self.port}"],
            "relay_networks": ["127.0.0.0/8", "::1/128"],
            "reverse_dns": False,
        }
        srv.update(server or {})
        sp = {"path": str(self.spool)}
        sp.update(spool or {})
        self.spool = Path(sp["path"])
        t = {"hostname": HOSTNAME}
        t.update(top or {})
        # Delivery is off unless the caller asks for it, so mail stays queued for the spool tests.
        dl = {"enabled": False}
        dl.update(delivery or {})
        # Each instance its own admin endpoint port, so instances (and other tests) never share 8025.
        self.admin_port = free_port()
        tables = {"server": srv, "spool": sp, "delivery": dl, "admin": {"listen": f"127.0.0.1:{self.admin_port}"}}
        if aliases:
            tables["aliases"] = aliases
        tables.update(extra_tables or {})
        self.config_path.write_text(toml_document(t, tables))
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    # process control

    def start(self) -> "Tern":
        if not TERN_BIN.exists():
            pytest.fail(f"tern binary not found at {TERN_BIN}: run `swift build -c release` (or set TERN_BIN)")
        self.runs += 1
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        if self.runs > 1:
            err.write(f"\n----- restart #{self.runs - 1} -----\n".encode())
            err.flush()
        self.proc = subprocess.Popen(
            [str(TERN_BIN), "serve", "--config", str(self.config_path)],
            cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
        )
        out.close()
        err.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Waits until the port greets; the probe session is QUIT and closed before returning so it
        does not count against connection limits."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tern exited with {self.proc.returncode} during start-up:\n{self.stderr()}")
            try:
                with SMTPConn(self.port, timeout=5) as c:
                    c.greeting()
                    c.cmd("QUIT")
                    c.wait_closed(5)
                time.sleep(0.05)
                return
            except (OSError, EOFError, AssertionError) as e:
                last = e
                time.sleep(0.05)
        pytest.fail(f"tern did not accept on 127.0.0.1:{self.port} within {STARTUP_TIMEOUT}s ({last!r}):\n"
                    f"{self.stderr()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> str:
        """Waits until stderr holds `text` at least `count` times; returns the last line with it."""
        wait_until(lambda: self.stderr().count(text) >= count, timeout,
                   f"{count} log line(s) with {text!r}", lambda: self.stderr()[-4000:])
        return [l for l in self.stderr().splitlines() if text in l][-1]

    def hup(self, expect: str, timeout: float = 30.0) -> str:
        """SIGHUP, then waits for the new log line that answers it (containing `expect`: "reloaded ",
        "reload refused"); returns that line. The answer is the marker that the reload was decided."""
        before = self.stderr().count(expect)
        self.proc.send_signal(signal.SIGHUP)
        return self.wait_log(expect, before + 1, timeout)

    # the admin endpoint: what the server says it has done, a marker to wait for

    def admin_get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        """GET (or `method`) path on the admin endpoint: (status, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def metric(self, name: str) -> float | None:
        """The samples of `name` on /metrics summed over their labels; None if there is none."""
        status, body = self.admin_get("/metrics")
        assert status == 200, body
        values = re.findall(rf"(?m)^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", body.decode())
        return sum(float(v) for v in values) if values else None

    def wait_recovered(self, timeout: float = 30.0) -> None:
        """Waits until /ready says the spool is loaded (recovery done): every message of the journal and
        the queue directories is in the queue from then on."""
        def recovered() -> bool:
            try:
                _, body = self.admin_get("/ready")  # 503 until ready, with the same members
            except OSError:
                return False  # the endpoint not listening yet
            return json.loads(body).get("recovery_done") is True

        wait_until(recovered, timeout, "recovery_done in /ready", lambda: self.stderr()[-4000:])

    # clients

    def connect(self, source: str | None = None, timeout: float = 15.0) -> SMTPConn:
        return SMTPConn(self.port, source=source, timeout=timeout)

    def send(self, sender: str, rcpts: list[str], message: bytes, **kw) -> str:
        return send_message(self.port, sender, rcpts, message, **kw)

    # spool

    @property
    def queue_dir(self) -> Path:
        return self.spool / "queue"

    def queue_files(self) -> list[str]:
        """Names of the files in the sixteen hashed queue directories (<spool>/queue/<last hex digit>/),
        and <ID>.msg and <ID>.env for each message that is queued in the journal."""
        names = [f"{qid}.{ext}" for qid in read_journal(self.spool) for ext in ("msg", "env")]
        for d in "0123456789ABCDEF":
            try:
                names += [p.name for p in (self.queue_dir / d).iterdir()]
            except FileNotFoundError:
                pass
        return sorted(names)

    def queue_path(self, name: str) -> Path:
        """Where a spool file (<ID>.msg, <ID>.env, ...) lives: the directory of the id's last digit."""
        return self.queue_dir / name.split(".")[0][-1] / name

    def queued(self) -> list[str]:
        """Ids with both .msg and .env."""
        names = set(self.queue_files())
        return sorted(n[:-4] for n in names if n.endswith(".msg") and n[:-4] + ".env" in names)

    def msg(self, queue_id: str) -> bytes:
        journaled = read_journal(self.spool).get(queue_id)
        return journaled[1] if journaled else self.queue_path(f"{queue_id}.msg").read_bytes()

    def env_bytes(self, queue_id: str) -> bytes:
        journaled = read_journal(self.spool).get(queue_id)
        return journaled[0] if journaled else self.queue_path(f"{queue_id}.env").read_bytes()

    def env(self, queue_id: str) -> Envelope:
        return Envelope.parse(self.env_bytes(queue_id))

    def assert_queued(self, queue_id: str, message: bytes, *, sender: str, rcpts: list[str],
                      helo: str = CLIENT_HELO, ip: str = "127.0.0.1", proto: str | tuple = "ESMTP") -> Envelope:
        """The .msg is our Received header + the message as sent; the .env names sender and recipients."""
        assert ID_RE.match(queue_id), queue_id
        files = self.queue_files()
        assert f"{queue_id}.msg" in files and f"{queue_id}.env" in files, (
            f"{queue_id} acknowledged with 250 but not in the spool; queue has {files}")
        header, rest = split_received(self.msg(queue_id))
        check_received(header, queue_id=queue_id, helo=helo, ip=ip, proto=proto,
                       rcpt=rcpts[0] if len(rcpts) == 1 else None)
        assert rest == message, "spooled bytes after the Received header differ from what was sent"
        env = self.env(queue_id)
        assert env.fields.get("id") == queue_id
        assert env.fields.get("sender") == sender
        assert env.recipients == rcpts, f"envelope recipients {env.recipients} != {rcpts}"
        assert env.fields.get("client") == ip
        assert env.fields.get("helo") == helo
        assert env.fields.get("protocol") in ((proto,) if isinstance(proto, str) else proto), env.raw
        return env


class MailLoad:
    """A load for the kill -9 / restart tests: `threads` sessions, each sending `per_thread` messages
    from s<n>@client.test, one transaction after another. message(n, i, rng) -> (tag, rcpt, bytes), rng
    seeded with n. Every message is recorded in `sent` (tag -> (bytes, rcpt)) before it is sent and in
    `acked` (queue id -> tag) once it got 250. Errors before kill() are collected in `errors`."""

    def __init__(self, port: int, threads: int, per_thread: int, message, conn_timeout: float = 60.0):
        self.port = port
        self.per_thread = per_thread
        self.message = message
        self.conn_timeout = conn_timeout
        self.lock = threading.Lock()
        self.sent: dict[str, tuple[bytes, str]] = {}
        self.acked: dict[str, str] = {}
        self.errors: list[str] = []
        self.killed = threading.Event()
        self.threads = [threading.Thread(target=self._session, args=(n,), daemon=True) for n in range(threads)]

    def _session(self, n: int) -> None:
        rng = random.Random(n)
        try:
            with SMTPConn(self.port, timeout=self.conn_timeout) as c:
                c.greeting()
                c.ehlo(f"client{n}.test")
                for i in range(self.per_thread):
                    tag, rcpt, msg = self.message(n, i, rng)
                    with self.lock:
                        self.sent[tag] = (msg, rcpt)
                    assert_reply(c.cmd(f"MAIL FROM:<s{n}@client.test>"), 250, "2.1.0")
                    assert_reply(c.cmd(f"RCPT TO:<{rcpt}>"), 250, "2.1.5")
                    qid = queue_id_of(assert_reply(c.data(msg), 250, "2.0.0"))
                    with self.lock:
                        self.acked[qid] = tag
                c.cmd("QUIT")
        except (OSError, EOFError, AssertionError) as e:
            if not self.killed.is_set():
                with self.lock:
                    self.errors.append(f"thread {n}: {e!r}")

    def acked_now(self) -> dict[str, str]:
        with self.lock:
            return dict(self.acked)

    def alive(self) -> int:
        return sum(th.is_alive() for th in self.threads)

    def run(self, until_acked: int | None = None, timeout: float = 180.0) -> "MailLoad":
        """Starts the sessions; returns once `until_acked` messages got 250 (the sessions still running),
        or, without it, once every session has finished."""
        for th in self.threads:
            th.start()
        if until_acked is None:
            self.join(timeout)
            assert not self.alive(), f"sessions still running after {timeout:g}s"
        else:
            wait_until(lambda: len(self.acked_now()) >= until_acked or not self.alive(), timeout,
                       f"{until_acked} messages acknowledged")
        return self

    def kill(self, tern: "Tern") -> int:
        """SIGKILL tern in the middle of the load; returns how many sessions were still running."""
        self.killed.set()
        running = self.alive()
        tern.kill(signal.SIGKILL)
        return running

    def join(self, timeout: float = 60.0) -> None:
        for th in self.threads:
            th.join(timeout=timeout)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach each tern's stderr to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, t in enumerate(getattr(item, "_tern_instances", [])):
            rep.sections.append((f"tern #{i} stderr ({t.stderr_path})", t.stderr()[-20000:] or "(empty)"))


@pytest.fixture
def start_tern(tmp_path, request):
    """start_tern(server={...}, aliases={...}, top={...}) -> a running Tern; stopped at teardown."""
    instances: list[Tern] = []
    request.node._tern_instances = instances

    def start(**kw) -> Tern:
        t = Tern(tmp_path / f"tern{len(instances)}", **kw)
        instances.append(t)
        return t.start()

    yield start
    for t in instances:
        t.stop()


# Certificates and users, made once per test session (openssl and scrypt are slow); tests that change a
# file copy it first.

USERS = {"alice": "correct horse battery staple", "bob": "bobs password", "carol": "carol pw"}


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> dict[str, Path]:
    """tls_helpers.make_certs: a test CA, a server certificate it signed and a self-signed one."""
    from tls_helpers import make_certs
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def users_file(tmp_path_factory) -> Path:
    """A users file (`tern passwd`) with USERS, alice on its first line."""
    from tls_helpers import tern_passwd
    path = tmp_path_factory.mktemp("users") / "users"
    for user, password in USERS.items():
        r = tern_passwd(path, user, password)
        assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def start_dns(tmp_path_factory):
    """start_dns(records) -> a running DnsServer (dnsmasq) for the module's tests; killed at its end."""
    servers: list[DnsServer] = []

    def start(records: list[str]) -> DnsServer:
        server = DnsServer(records, tmp_path_factory.mktemp("dns"))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


@pytest.fixture(scope="module")
def provider_dns(start_dns) -> DnsServer:
    """dnsmasq with PROVIDER_RECORDS, for the module's tests."""
    return start_dns(PROVIDER_RECORDS)


@pytest.fixture
def provider_port() -> int:
    """The port every provider listens on (the relay's delivery.port), free on all their addresses."""
    return free_port_on([PROVIDER_IP, OTHER_IP, SENDER_IP])


@pytest.fixture
def provider(provider_port):
    """provider(ip=PROVIDER_IP, **NextHop options) -> a running delivery_helpers.NextHop on ip:provider_port;
    stopped at teardown (after the relay: request this fixture before start_tern's users)."""
    from delivery_helpers import NextHop
    started: list = []

    def start(ip: str = PROVIDER_IP, **kw):
        hop = NextHop(ip, provider_port, **kw).start()
        started.append(hop)
        return hop

    yield start
    for hop in reversed(started):
        hop.stop()


@pytest.fixture
def provider_relay(provider, start_tern, provider_dns, provider_port):
    """provider_relay(delivery={...}, tables={...}) -> a running tern that resolves through provider_dns
    and delivers to port provider_port; `tables` are more config tables ([[shaping]], [egress.*], ...).
    Depends on `provider` so that tern stops before the providers do."""

    def start(delivery: dict | None = None, tables: dict | None = None, **kw) -> Tern:
        dl = dict(PROVIDER_DELIVERY, port=provider_port)
        dl.update(delivery or {})
        extra = {"dns": {"servers": [f"127.0.0.1:{provider_dns.port}"]}}
        extra.update(tables or {})
        return start_tern(delivery=dl, extra_tables=extra, **kw)

    return start


@pytest.fixture
def tern(start_tern) -> Tern:
    """A tern with the default test config: trusts 127.0.0.0/8, hostname relay.test."""
    return start_tern()
