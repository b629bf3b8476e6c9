"""Outbound timeouts: a next hop that stops answering is given up on after the timeout of the phase
it stopped in (greeting_timeout before the 220, command_timeout after a command), and the message is
deferred. The timer is moved only when it must fire sooner (OutboundConnection.armTimer): the second
case starts with a 30 s greeting timeout and must still give up about 2 s after its last command."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import make_message, send_message, wait_until
from delivery_helpers import free_port_on, log_entries

SENDER = "sender@client.test"


class StallingHop:
    """Accepts on host:port; `greet` False: says nothing at all; True: 220, answers EHLO, then
    reads and never answers again. Holds every connection open until stopped."""

    def __init__(self, host: str, port: int, greet: bool):
        self.greet = greet
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        self.running = True
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self.talk, args=(conn,), daemon=True).start()

    def talk(self, conn: socket.socket):
        conn.settimeout(60)
        try:
            if not self.greet:
                while self.running and conn.recv(4096):
                    pass
                return
            conn.sendall(b"220 stalling.test ESMTP\r\n")
            buf = b""
            while b"\r\n" not in buf:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            conn.sendall(b"250 stalling.test\r\n")
            while self.running and conn.recv(4096):
                pass  # MAIL and whatever follows: never answered
        except OSError:
            pass

    def stop(self):
        self.running = False
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def stalling(start_tern):
    hops = []

    def start(greet: bool, delivery: dict):
        port = free_port_on(["127.0.0.2"])
        hop = StallingHop("127.0.0.2", port, greet)
        hops.append(hop)
        silent = free_port_on(["127.0.0.1"], socket.SOCK_DGRAM)
        dl = {"enabled": True, "retry_schedule": ["1h"], "connect_timeout": "5s"}
        dl.update(delivery)
        tern = start_tern(delivery=dl, extra_tables={"dns": {"servers": [f"127.0.0.1:{silent}"]},
                                                     "routes": {"t.test": f"[127.0.0.2]:{port}"}})
        return tern

    yield start
    for hop in hops:
        hop.stop()


def deferred_after(tern) -> tuple[float, str]:
    started = time.monotonic()
    qid = send_message(tern.port, SENDER, ["rcpt@t.test"], make_message(subject="stall", sender=SENDER, to="rcpt@t.test"))
    entries = wait_until(lambda: log_entries(tern.stderr(), queue_id=qid, status="deferred"), 60,
                         f"{qid} deferred", lambda: tern.stderr()[-3000:])
    line = next(l for l in tern.stderr().splitlines() if qid in l and "status=deferred" in l)
    return time.monotonic() - started, line


def test_silent_next_hop_times_out_in_the_greeting(stalling):
    tern = stalling(False, {"greeting_timeout": "2s", "command_timeout": "30s"})
    waited, line = deferred_after(tern)
    assert 1.5 <= waited <= 15, f"deferred after {waited:.1f}s with greeting_timeout 2s: {line}"
    assert "timed out" in line, line


def test_next_hop_stalling_after_a_command_times_out_by_command_timeout(stalling):
    tern = stalling(True, {"greeting_timeout": "30s", "command_timeout": "2s"})
    waited, line = deferred_after(tern)
    assert 1.5 <= waited <= 15, f"deferred after {waited:.1f}s with command_timeout 2s: {line}"
    assert "timed out" in line, line
