"""Issue 14: no admin request may stall the loop or grow memory without bound."""

from __future__ import annotations

import json
import smtplib
import socket
import threading
import time

from conftest import QUEUED_RE, read_until_closed, wait_until



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
        assert slowest < 3.0, f"SMTP greeting took {slowest:.1f} s during the flood"
        data = read_until_closed(flood, 20)
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
    wait_until(lambda: greeting_seconds(tern.port) < 1.0, 5, "still serving")


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pipelined_large_answers_to_a_client_that_never_reads(tern):
    """150 pipelined GET /queue/<id>/message for a 5 MB message, never read (RSS went 37 → 779 MB):
    the connection stops reading while its pending output is over a bound, so RSS stays bounded."""
    qid, _ = queue_big_message(tern, 5)
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
    assert greeting_seconds(tern.port) < 3.0


def queue_big_message(tern, megabytes: int) -> tuple[str, bytes]:
    body = ("X" * 998 + "\r\n") * (megabytes * 1000)
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=30) as c:
        c.ehlo("client.test")
        c.mail("a@sender.test")
        c.rcpt("b@example.test")
        code, text = c.data(f"Subject: big\r\n\r\n{body}".encode())
    assert code == 250, text
    qid = QUEUED_RE.search(text.decode()).group(1)
    return qid, tern.msg(qid)


def read_answer(s: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one answer, by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before the head: {data[:200]!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = s.recv(1 << 20)
        assert chunk, f"closed after {len(body)} of {length} bytes"
        body += chunk
    return head, body


def test_concurrent_message_reads_are_answered_one_at_a_time(tern):
    """16 connections each GET a 6 MB message and read nothing for 2 s: each answer was read whole
    and copied (up to 3 copies per connection, RSS +100s of MB); now one answer at a time is read and
    held, so RSS grows by a few copies of one message, and every client still gets it whole."""
    qid, stored = queue_big_message(tern, 6)
    before = rss_kib(tern.proc.pid)
    peak = before
    sampling = threading.Event()

    def sample():
        nonlocal peak
        while not sampling.is_set():
            peak = max(peak, rss_kib(tern.proc.pid))
            sampling.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conns = [socket.create_connection(("127.0.0.1", tern.admin_port), timeout=60) for _ in range(16)]
    answers: dict[int, tuple[bytes, bytes]] = {}
    go = threading.Event()

    def reader(i: int, s: socket.socket):
        go.wait(30)
        answers[i] = read_answer(s)

    readers = [threading.Thread(target=reader, args=(i, s), daemon=True) for i, s in enumerate(conns)]
    try:
        for s in conns:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(f"GET /queue/{qid}/message HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        for r in readers:
            r.start()
        time.sleep(2)  # nothing is read meanwhile: the answers wait in the relay
        go.set()
        for r in readers:
            r.join(60)
    finally:
        sampling.set()
        sampler.join(5)
        for s in conns:
            s.close()
    assert len(answers) == 16, f"{16 - len(answers)} clients got no answer"
    for head, body in answers.values():
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Type: message/rfc822" in head, head
        assert body == stored
    grown = (peak - before) // 1024
    assert grown < 24, f"RSS grew {grown} MiB for 16 reads of a {len(stored) >> 20} MiB message"


def test_head_of_a_message_answers_its_size(tern):
    qid, stored = queue_big_message(tern, 1)
    with socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) as s:
        s.sendall(f"HEAD /queue/{qid}/message HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                  f"HEAD /queue/0123456789ABCD/message HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                  f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = read_until_closed(s)
    first, rest = data.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200"), first
    assert f"Content-Length: {len(stored)}".encode() in first, first
    # No body after a HEAD answer: the next answer follows at once.
    second, rest = rest.split(b"\r\n\r\n", 1)
    assert second.startswith(b"HTTP/1.1 404"), second
    assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b'{"status":"ok"}\n'), rest
