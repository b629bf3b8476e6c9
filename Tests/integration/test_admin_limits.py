"""Issue 14: no admin request may stall the loop or grow memory without bound."""

from __future__ import annotations

import json
import smtplib
import socket
import threading
import time

from conftest import QUEUED_RE
from delivery_helpers import wait_until


def greeting_seconds(port: int) -> float:
    """Seconds from connect to the SMTP greeting's first line."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, "closed before the greeting"
            data += chunk
    assert data.startswith(b"220"), data
    return time.monotonic() - start


def read_answers(s: socket.socket, limit: float = 20.0) -> bytes:
    """Everything the server sends until it closes (bounded by `limit` seconds)."""
    data = b""
    deadline = time.monotonic() + limit
    s.settimeout(2)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_crlf_flood_neither_stalls_smtp_nor_is_buffered(tern):
    """GET /queue then 2 MiB of CRLF (it stalled every SMTP greeting 27 s): greetings stay under 1 s;
    the request is answered, then the flood is refused in JSON and the connection closed."""
    flood = socket.create_connection(("127.0.0.1", tern.admin_port), timeout=30)

    def send():
        try:
            flood.sendall(b"GET /queue HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + b"\r\n" * (1 << 20))
        except OSError:
            pass  # the server may close before it has all of it

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        slowest = max(greeting_seconds(tern.port) for _ in range(5))
        assert slowest < 1.0, f"SMTP greeting took {slowest:.1f} s during the flood"
        data = read_answers(flood)
    finally:
        sender.join(10)
        flood.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    refusal = rest[length:]
    assert refusal.startswith(b"HTTP/1.1 431"), refusal[:300]
    rhead, rbody = refusal.split(b"\r\n\r\n", 1)
    assert b"Content-Type: application/json" in rhead and b"Connection: close" in rhead
    assert json.loads(rbody)["error"]
    assert greeting_seconds(tern.port) < 1.0
    wait_until(lambda: greeting_seconds(tern.port) < 1.0, 5, "still serving")


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pipelined_large_answers_to_a_client_that_never_reads(tern):
    """150 pipelined GET /queue/<id>/message for a 5 MB message, never read (RSS went 37 → 779 MB):
    the connection stops reading while its pending output is over a bound, so RSS stays bounded."""
    body = ("X" * 998 + "\r\n") * 5000
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=30) as c:
        c.ehlo("client.test")
        c.mail("a@sender.test")
        c.rcpt("b@example.test")
        code, text = c.data(f"Subject: big\r\n\r\n{body}".encode())
    assert code == 250, text
    qid = QUEUED_RE.search(text.decode()).group(1)
    before = rss_kib(tern.proc.pid)
    s = socket.create_connection(("127.0.0.1", tern.admin_port), timeout=30)
    request = f"GET /queue/{qid}/message HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    s.setblocking(False)
    pipelined = request * 150
    sent = 0
    deadline = time.monotonic() + 10
    while sent < len(pipelined) and time.monotonic() < deadline:
        try:
            sent += s.send(pipelined[sent:])
        except BlockingIOError:
            time.sleep(0.05)
    try:
        time.sleep(4)  # the server answers what it will meanwhile; nothing is read here
        grown = rss_kib(tern.proc.pid) - before
    finally:
        s.close()
    assert grown < 64 * 1024, f"RSS grew {grown // 1024} MiB"
    assert greeting_seconds(tern.port) < 1.0
