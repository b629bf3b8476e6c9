"""Issue 14: what one connection may cost the SMTP listeners (relay port, submission, submissions)
and `tern sink`. The command deadline counts from a line's first byte, also under TLS: a ClientHello
or a TLS record dripped a byte at a time decrypts to nothing and must not hold the connection past
command_timeout. A client pipelining commands without reading the replies holds a bounded amount of
the server's memory, does not slow other clients, and is closed after command_timeout.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time

import pytest

from conftest import HOSTNAME, assert_reply, free_port
from test_sink import Sink
from test_tls import TLSConn


TIMEOUT = 2.0  # command_timeout in every server of this file
DRIP = 0.5  # seconds between dripped bytes
MiB = 1024 * 1024


@pytest.fixture
def relay(start_tern, certs, users_file):
    """`tern serve` with a relay port, a submission port and a submissions (implicit TLS) port."""
    submission, submissions = free_port(), free_port()
    t = start_tern(server={"command_timeout": f"{TIMEOUT:g}s", "submission": [f"127.0.0.1:{submission}"],
                           "submissions": [f"127.0.0.1:{submissions}"]},
                   extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])},
                                 "auth": {"users_file": str(users_file)}})
    t.ports = {"relay": t.port, "submission": submission, "submissions": submissions}
    return t


@pytest.fixture
def sink(tmp_path, certs):
    s = Sink(tmp_path / "sink", ["--tls-certificate", str(certs["cert"]), "--tls-key", str(certs["key"])],
             config=f'[sink]\ncommand_timeout = "{TIMEOUT:g}s"\n').start()
    yield s
    s.stop()


def server_of(name, relay_or_sink):
    """(port, pid) of a listener: relay / submission / submissions of `tern serve`, or the sink."""
    if name == "sink":
        return relay_or_sink.port, relay_or_sink.proc.pid
    return relay_or_sink.ports[name], relay_or_sink.proc.pid


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_hello() -> bytes:
    """The bytes a TLS client sends first."""
    obj = unverified().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=HOSTNAME)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 4 * TIMEOUT / DRIP, "ClientHello too short to outlast the timeout when dripped"
    return hello


def handshake(sock: socket.socket) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A TLS handshake over `sock` by hand (memory BIOs), so that records can be sent byte by byte."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = unverified().wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    for _ in range(20):  # a handful of round trips: bounded
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "connection closed during the TLS handshake"
            incoming.write(data)
    else:
        raise AssertionError("TLS handshake did not finish")
    sock.sendall(outgoing.read())
    return obj, incoming, outgoing


def tls_reply(sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO) -> bytes:
    """Decrypted bytes up to and including a reply's last line."""
    text = b""
    while not (text.endswith(b"\r\n") and text.split(b"\r\n")[-2][3:4] == b" "):
        try:
            text += obj.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            assert data, f"connection closed; read {text!r}"
            incoming.write(data)
    return text


def drip_until_closed(sock: socket.socket, data: bytes, limit: float = TIMEOUT + 6) -> float | None:
    """Sends `data` a byte every DRIP seconds, reading (and dropping) whatever comes back; the seconds
    until the server closed the connection, or None if it was still open after `limit` seconds."""
    started = time.monotonic()
    for i in range(min(len(data), int(limit / DRIP) + 1)):
        try:
            sock.send(data[i:i + 1])
        except OSError:
            return time.monotonic() - started
        end = time.monotonic() + DRIP
        while (left := end - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                return time.monotonic() - started
    assert len(data) > limit / DRIP, "data ran out before the limit: the test proves nothing"
    return None


def assert_closed_in_time(waited: float | None, what: str) -> None:
    assert waited is not None, f"{what}: still open after {TIMEOUT + 6:g} s of dripping (command_timeout {TIMEOUT:g} s)"
    assert TIMEOUT - 0.5 <= waited <= TIMEOUT + 3, f"{what}: closed after {waited:.1f} s (command_timeout {TIMEOUT:g} s)"


def greeted(port: int, timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, f"closed before the greeting: {buf!r}"
        buf += chunk
    assert buf.startswith(b"220 "), buf
    return s


def after_starttls(port: int) -> socket.socket:
    c = TLSConn(port, timeout=10)
    c.greeting()
    c.ehlo()
    assert_reply(c.cmd("STARTTLS"), 220)
    assert c.buf == b""
    return c.sock


# ---------------------------------------------------------------------------------------------
# Dripping bytes: the deadline counts from the first byte, in the clear, under TLS, in the handshake


@pytest.mark.parametrize("listener", ["submission", "sink"])
def test_dripping_a_command_line_is_closed_at_command_timeout(request, listener):
    """The relay port's own drip test is in test_session.py."""
    port, _ = server_of(listener, request.getfixturevalue("sink" if listener == "sink" else "relay"))
    with greeted(port) as s:
        s.sendall(b"EHLO client.test\r\n")
        assert s.recv(4096).startswith(b"250")
        assert_closed_in_time(drip_until_closed(s, b"NOOP" + b" " * 100), f"{listener}: command line dripped")


@pytest.mark.parametrize("listener", ["relay", "submission", "sink"])
def test_dripping_a_client_hello_after_starttls_is_closed(request, listener):
    """The handshake after STARTTLS gets command_timeout: a ClientHello dripped a byte every 0.5 s
    (which decrypts to nothing) kept the connection open as long as the drip lasted."""
    port, _ = server_of(listener, request.getfixturevalue("sink" if listener == "sink" else "relay"))
    with after_starttls(port) as s:
        assert_closed_in_time(drip_until_closed(s, client_hello()), f"{listener}: ClientHello after STARTTLS")


def test_dripping_a_client_hello_on_implicit_tls_is_closed(relay):
    with socket.create_connection(("127.0.0.1", relay.ports["submissions"]), timeout=10) as s:
        assert_closed_in_time(drip_until_closed(s, client_hello()), "submissions: ClientHello")


def test_silent_client_on_implicit_tls_is_closed(relay):
    """No byte at all: the handshake deadline runs from the connection's start."""
    with socket.create_connection(("127.0.0.1", relay.ports["submissions"]), timeout=TIMEOUT + 6) as s:
        started = time.monotonic()
        try:
            assert s.recv(4096) == b""
        except ConnectionResetError:
            pass
        waited = time.monotonic() - started
        assert TIMEOUT - 0.5 <= waited <= TIMEOUT + 3, f"closed after {waited:.1f} s"


@pytest.mark.parametrize("listener", ["submissions", "relay", "sink"])
def test_dripping_a_tls_record_is_closed(request, listener):
    """A command line in one TLS record sent a byte at a time: no plaintext arrives until its last
    byte, so a deadline that only saw decrypted input restarted with every byte."""
    port, _ = server_of(listener, request.getfixturevalue("sink" if listener == "sink" else "relay"))
    if listener == "submissions":
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        obj, incoming, outgoing = handshake(s)
        assert tls_reply(s, obj, incoming).startswith(b"220 ")
    else:
        s = after_starttls(port)
        obj, incoming, outgoing = handshake(s)
    with s:
        obj.write(b"EHLO client.test\r\n")
        s.sendall(outgoing.read())
        assert tls_reply(s, obj, incoming).startswith(b"250")
        obj.write(b"NOOP" + b" " * 100 + b"\r\n")
        record = outgoing.read()
        assert_closed_in_time(drip_until_closed(s, record), f"{listener}: TLS record dripped")


# ---------------------------------------------------------------------------------------------
# Pipelining without reading the replies


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def tcp_state(sock: socket.socket) -> int:
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8
FLOOD = 40 * MiB  # of "NOOP\r\n"; ~95 MB of replies if every one were made and kept


@pytest.mark.parametrize("listener", ["relay", "submission", "sink"])
def test_pipelining_without_reading_replies_is_bounded(request, listener):
    """A client writes NOOPs as fast as it can and never reads: the server's memory grows by less
    than 64 MB, a second client is greeted within 1 s meanwhile, and the flooder is closed about
    command_timeout after the server stopped taking its commands (not by the 30 s flush limit)."""
    port, pid = server_of(listener, request.getfixturevalue("sink" if listener == "sink" else "relay"))
    time.sleep(0.2)  # let start-up settle before the baseline
    rss0 = peak = rss_kib(pid)
    s = greeted(port)
    s.settimeout(0.2)
    chunk = b"NOOP\r\n" * (64 * 1024 // 6)
    sent = 0
    started = last_progress = time.monotonic()
    greeting_wait = closed_at = None
    with s:
        while time.monotonic() - started < 25:  # bounded; closed_at is expected within ~10 s
            try:
                if sent < FLOOD:
                    sent += s.send(chunk)
                    last_progress = time.monotonic()
                else:
                    time.sleep(0.1)
            except socket.timeout:
                pass
            except OSError:
                closed_at = time.monotonic()
                break
            if tcp_state(s) in (TCP_CLOSE, TCP_CLOSE_WAIT):
                closed_at = time.monotonic()
                break
            peak = max(peak, rss_kib(pid))
            if greeting_wait is None and sent >= 2 * MiB:
                t0 = time.monotonic()
                greeted(port, timeout=5).close()
                greeting_wait = time.monotonic() - t0
    growth = (peak - rss0) / 1024
    print(f"{listener}: sent {sent / MiB:.1f} MB, RSS +{growth:.1f} MB, second greeting {greeting_wait}, "
          f"closed {None if closed_at is None else closed_at - last_progress} s after the last progress")
    assert greeting_wait is not None, f"only {sent} bytes sent"
    assert greeting_wait < 3, f"{listener}: second client greeted after {greeting_wait:.2f} s during the flood"
    assert growth < 64, f"{listener}: RSS grew by {growth:.0f} MB with {sent / MiB:.0f} MB of NOOPs unanswered"
    assert closed_at is not None, f"{listener}: flooder still open after 25 s ({sent / MiB:.0f} MB sent)"
    idle = closed_at - last_progress
    assert TIMEOUT - 1 <= idle <= TIMEOUT + 4, \
        f"{listener}: closed {idle:.1f} s after the server last took input (command_timeout {TIMEOUT:g} s)"
    assert sent < FLOOD, f"{listener}: the server read all {sent / MiB:.0f} MB without the replies being taken"


@pytest.mark.parametrize("listener", ["relay", "sink"])
def test_pipelining_many_commands_is_answered_in_full(request, listener):
    """Replies are made ~32 KiB per call; the commands behind the cap are answered when the client
    takes its replies: 20000 pipelined NOOPs (280 KB of replies) all get their 250, then QUIT its 221."""
    port, _ = server_of(listener, request.getfixturevalue("sink" if listener == "sink" else "relay"))
    n = 20_000
    with greeted(port) as s:
        s.sendall(b"NOOP\r\n" * n + b"QUIT\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.split(b"\r\n")
    assert lines[:n] == [b"250 2.0.0 Ok"] * n, f"{lines.count(b'250 2.0.0 Ok')} of {n} NOOPs answered"
    assert lines[n].startswith(b"221 "), lines[n:n + 2]
