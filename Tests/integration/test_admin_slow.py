"""Issue 14: slow and half-closing admin clients. A request must be complete within [admin]
request_timeout of its first byte (a byte now and then used to restart the idle timer, so 16 such
clients kept the endpoint full forever); a client that half-closes after its request still gets the
answer."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from conftest import free_port, read_until_closed, wait_until

from test_admin import deferring, hop_port, hops, listing, send, wait_state  # noqa: F401

REQUEST_TIMEOUT = 2.0
MARGIN = 4.0  # the 408 is written, then the connection lingers up to 2 s for the client's FIN
DRIP = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200


def connect(tern, unix_path: str | None) -> socket.socket:
    if unix_path:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(unix_path)
        return s
    return socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10)


def drip_until_answered(s: socket.socket, limit: float) -> tuple[bytes, float]:
    """Sends a request head a byte every 0.3 s, never finishing it; returns what the server answered
    and when it closed (seconds from the first byte), or what came within `limit` seconds."""
    start = time.monotonic()
    data = b""
    i = 0
    s.settimeout(0.3)
    while time.monotonic() - start < limit:
        if i < len(DRIP):
            try:
                s.send(DRIP[i:i + 1])
            except OSError:
                pass  # closed by the server: read what it said
            i += 1
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def assert_408(data: bytes) -> None:
    assert data.startswith(b"HTTP/1.1 408 "), data[:300]
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Content-Type: application/json" in head and b"Connection: close" in head, head
    assert "not complete within 2s" in json.loads(body)["error"], body


def start_with_deadline(start_tern, unix_path: str | None = None):
    """A tern whose admin endpoint has request_timeout = 2s, on TCP or on the unix socket given."""
    port = free_port()
    listen = unix_path or f"127.0.0.1:{port}"
    tern = start_tern(extra_tables={"admin": {"listen": listen, "request_timeout": "2s"}})
    tern.admin_port = port
    return tern


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_dripping_client_gets_408(start_tern, tmp_path, transport):
    unix_path = str(tmp_path / "admin.sock") if transport == "unix" else None
    tern = start_with_deadline(start_tern, unix_path)
    with connect(tern, unix_path) as s:
        data, took = drip_until_answered(s, REQUEST_TIMEOUT + 15)
    assert_408(data)
    assert REQUEST_TIMEOUT - 0.5 < took < REQUEST_TIMEOUT + MARGIN, f"closed after {took:.1f} s"
    # A request sent at an ordinary pace on a new connection is answered as before.
    with connect(tern, unix_path) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}\n'), answer


def test_drippers_do_not_keep_the_endpoint_full(start_tern):
    """16 connections (the endpoint's limit) sending a byte every 0.3 s: the 17th is refused (503)
    while they are within their deadline, and served once it has passed; each dripper got 408."""
    tern = start_with_deadline(start_tern)
    drippers = [socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) for _ in range(16)]
    received = {id(s): b"" for s in drippers}
    stop = threading.Event()

    def drip():
        i = 0
        while not stop.is_set() and i < len(DRIP):
            for s in drippers:
                try:
                    s.send(DRIP[i:i + 1])
                except OSError:
                    pass
                s.setblocking(False)
                try:
                    received[id(s)] += s.recv(65536)
                except (BlockingIOError, OSError):
                    pass
            i += 1
            stop.wait(0.3)

    dripping = threading.Thread(target=drip, daemon=True)
    started = time.monotonic()
    dripping.start()

    def health() -> bytes:
        with socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return read_until_closed(s)

    try:
        # Full once the server has taken all 16 (well within their deadline; after it they would
        # get 408 and the endpoint would be free again).
        wait_until(lambda: health().startswith(b"HTTP/1.1 503"), REQUEST_TIMEOUT,
                   "the endpoint to be full while they drip")
        answer = wait_until(lambda: (lambda d: d if d.startswith(b"HTTP/1.1 200") else None)(health()),
                            REQUEST_TIMEOUT + MARGIN + 4, "a well-behaved client served after the deadline")
        took = time.monotonic() - started
        assert answer.endswith(b'{"status":"ok"}\n')
        assert took < REQUEST_TIMEOUT + MARGIN + 4, took
    finally:
        stop.set()
        dripping.join(10)
    for s in drippers:
        received[id(s)] += read_until_closed(s, 5)
        s.close()
        assert_408(received[id(s)])


def test_half_close_after_a_request_still_gets_the_answer(deferring):
    """POST /queue/ID/hold, then shutdown(SHUT_WR): the answer comes, and the hold is done; so do
    both answers to two requests sent at once before the half-close."""
    tern, _, _ = deferring
    qid = send(tern, ["a@defer.test"], "hold me and hang up")
    wait_state(tern, qid, "deferred")
    with socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) as s:
        s.sendall(f"POST /queue/{qid}/hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        s.shutdown(socket.SHUT_WR)
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200"), data
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["id"] == qid and body["result"] == "done" and body["message"] == f"{qid} held", body
    assert [m["state"] for m in listing(tern) if m["id"] == qid] == ["held"]

    with socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) as s:
        s.sendall(f"POST /queue/{qid}/release HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                  f"GET /queue/{qid} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        s.shutdown(socket.SHUT_WR)
        data = read_until_closed(s)
    assert data.count(b"HTTP/1.1 200 OK") == 2, data
    assert f'"message":"{qid} released, due now"'.encode() in data, data
    assert json.loads(data.rsplit(b"\r\n\r\n", 1)[1])["id"] == qid
