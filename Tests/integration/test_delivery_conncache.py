"""The outbound connection cache (delivery.connection_cache_time, like Postfix's
smtp_connection_cache_time_limit): a connection with no message left for its destination stays open
for the next one, QUITs when the time runs out, goes away quietly when the next hop closes it first,
and is closed at once when another destination needs its slot or on SIGHUP.

The next hop here is a small SMTP server of this file that counts TCP connections (not only those
that send MAIL) and sees QUIT, and can close a connection that stays idle. Tern reaches it through
[routes] "[127.0.0.x]:port", so no DNS is involved (dns.servers points at a silent loopback port).
Run inside `unshare --net` (scripts/test.sh).
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from conftest import make_message, send_message, wait_until
from delivery_helpers import free_port_on, log_entries

SENDER = "sender@sender.test"
WAIT = 20.0  # the longest any single wait may take


class CountingHop:
    """A threaded SMTP server on host:port that records connections, transactions and QUITs.

    idle_close: seconds a connection may sit between commands before the server closes it, with
    idle_reply (e.g. a 421) first or, when None, with a bare EOF."""

    def __init__(self, host: str, port: int, *, idle_close: float | None = None, idle_reply: bytes | None = None):
        self.host, self.port = host, port
        self.idle_close, self.idle_reply = idle_close, idle_reply
        self.lock = threading.Lock()
        self.connections = 0
        self.closed = 0             # connections over, for any reason
        self.idle_closed = 0        # connections the server closed for idling
        self.quits: list[int] = []  # connection numbers that sent QUIT
        self.transactions: list[tuple[int, list[str], float]] = []  # (connection, recipients, time)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.sock.close()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        in_data = False
        rcpts: list[str] = []
        try:
            conn.sendall(b"220 hop.test ESMTP\r\n")
            while True:
                conn.settimeout(self.idle_close if (self.idle_close and not in_data) else 30)
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    if self.idle_reply:
                        conn.sendall(self.idle_reply)
                    with self.lock:
                        self.idle_closed += 1
                    return
                if not chunk:
                    return
                buf += chunk
                while True:
                    if in_data:
                        end = buf.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        buf = buf[end + 5:]
                        in_data = False
                        with self.lock:
                            self.transactions.append((number, rcpts, time.monotonic()))
                        rcpts = []
                        conn.sendall(b"250 2.0.0 Ok: queued\r\n")
                        continue
                    if b"\r\n" not in buf:
                        break
                    line, buf = buf.split(b"\r\n", 1)
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        conn.sendall(b"250-hop.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                    elif verb == b"HELO":
                        conn.sendall(b"250 hop.test\r\n")
                    elif verb == b"MAIL":
                        rcpts = []
                        conn.sendall(b"250 2.1.0 Ok\r\n")
                    elif verb == b"RCPT":
                        rcpts.append(line[8:].decode(errors="replace").strip(" <>"))
                        conn.sendall(b"250 2.1.5 Ok\r\n")
                    elif verb == b"DATA":
                        in_data = True
                        buf = b"\r\n" + buf  # the end marker may follow at once: look for CRLF.CRLF
                        conn.sendall(b"354 go ahead\r\n")
                    elif verb in (b"RSET", b"NOOP"):
                        conn.sendall(b"250 2.0.0 Ok\r\n")
                    elif verb == b"QUIT":
                        with self.lock:
                            self.quits.append(number)
                        conn.sendall(b"221 2.0.0 Bye\r\n")
                        return
                    else:
                        conn.sendall(b"502 5.5.2 not here\r\n")
        except OSError:
            pass
        finally:
            with self.lock:
                self.closed += 1
            conn.close()

    def delivered(self) -> int:
        with self.lock:
            return len(self.transactions)

    def __repr__(self) -> str:
        with self.lock:
            return (f"CountingHop({self.host}:{self.port}: {self.connections} connections, {self.closed} closed, "
                    f"{len(self.transactions)} transactions, QUIT on {self.quits})")


@pytest.fixture
def hop_port() -> int:
    return free_port_on(["127.0.0.2", "127.0.0.3"])


@pytest.fixture
def counting_hops(hop_port):
    started: list[CountingHop] = []

    def start(host: str, **kw) -> CountingHop:
        hop = CountingHop(host, hop_port, **kw)
        started.append(hop)
        return hop

    yield start
    for hop in started:
        hop.stop()


@pytest.fixture
def cache_relay(counting_hops, start_tern, hop_port):
    """cache_relay(delivery={...}) -> tern routing a.test to 127.0.0.2 and b.test to 127.0.0.3."""

    def start(delivery: dict | None = None):
        dl = {"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"}
        dl.update(delivery or {})
        silent = free_port_on(["127.0.0.1"], socket.SOCK_DGRAM)
        tables = {"dns": {"servers": [f"127.0.0.1:{silent}"]},
                  "routes": {"a.test": f"[127.0.0.2]:{hop_port}", "b.test": f"[127.0.0.3]:{hop_port}"}}
        return start_tern(delivery=dl, extra_tables=tables)

    return start


def send_and_wait_sent(tern, rcpt: str, n: int, *hops) -> str:
    """Submits one message to rcpt and waits for tern's status=sent line for it."""
    qid = send_message(tern.port, SENDER, [rcpt], make_message(subject=f"cache {n}", sender=SENDER, to=rcpt))
    wait_until(lambda: log_entries(tern.stderr(), queue_id=qid, status="sent"), WAIT,
               f"message {n} ({qid}) to {rcpt} sent", lambda: f"{hops}\n{tern.stderr()[-3000:]}")
    return qid


def assert_nothing_deferred(tern) -> None:
    assert log_entries(tern.stderr(), status="deferred") == [], tern.stderr()[-3000:]


def test_messages_one_after_another_share_one_connection(cache_relay, counting_hops):
    hop = counting_hops("127.0.0.2")
    tern = cache_relay()  # connection_cache_time: the default, 2s
    for n in range(10):
        send_and_wait_sent(tern, f"rcpt{n}@a.test", n, hop)
    assert hop.delivered() == 10
    assert hop.connections == 1, hop
    assert {c for c, _, _ in hop.transactions} == {1}
    assert_nothing_deferred(tern)


def test_cache_time_zero_quits_after_each_message(cache_relay, counting_hops):
    hop = counting_hops("127.0.0.2")
    tern = cache_relay({"connection_cache_time": "0"})
    for n in range(10):
        send_and_wait_sent(tern, f"rcpt{n}@a.test", n, hop)
    assert hop.delivered() == 10
    assert hop.connections == 10, hop
    # Each connection QUIT right after its message (politely, not a bare close).
    wait_until(lambda: len(hop.quits) == 10, WAIT, "10 QUITs", lambda: repr(hop))
    assert sorted(hop.quits) == list(range(1, 11))


@pytest.mark.parametrize("idle_reply", [None, b"421 4.4.2 hop.test Error: timeout exceeded\r\n"],
                         ids=["eof", "421"])
def test_next_hop_closing_an_idle_connection(cache_relay, counting_hops, idle_reply):
    hop = counting_hops("127.0.0.2", idle_close=0.3, idle_reply=idle_reply)
    tern = cache_relay({"connection_cache_time": "30s"})
    send_and_wait_sent(tern, "first@a.test", 1, hop)
    # The hop drops the connection tern keeps for the next message.
    wait_until(lambda: hop.idle_closed == 1 and hop.closed == 1, WAIT, "the hop closed the idle connection",
               lambda: repr(hop))
    time.sleep(0.2)  # let tern see the EOF (the next message must work either way)
    send_and_wait_sent(tern, "second@a.test", 2, hop)
    assert hop.delivered() == 2
    assert hop.connections == 2, hop
    assert [c for c, _, _ in hop.transactions] == [1, 2]
    assert_nothing_deferred(tern)
    assert tern.alive()


def test_idle_connection_gives_its_slot_to_another_destination(cache_relay, counting_hops):
    hop_a = counting_hops("127.0.0.2")
    hop_b = counting_hops("127.0.0.3")
    # One connection in all, and a cache time far longer than the wait below: b.test can only get
    # its message through if tern closes the idle a.test connection for it.
    tern = cache_relay({"max_connections": 1, "connection_cache_time": "1h"})
    send_and_wait_sent(tern, "one@a.test", 1, hop_a)
    assert hop_a.quits == [], "the a.test connection stays open while nothing else needs the slot"
    send_and_wait_sent(tern, "two@b.test", 2, hop_a, hop_b)
    assert hop_b.delivered() == 1
    assert hop_a.quits == [1], f"the idle a.test connection QUIT for b.test: {hop_a}"
    # And back: a.test's next message takes the slot from the now idle b.test connection.
    send_and_wait_sent(tern, "three@a.test", 3, hop_a, hop_b)
    assert hop_b.quits == [1], hop_b
    assert hop_a.connections == 2
    assert_nothing_deferred(tern)


def test_idle_connection_quits_after_the_cache_time(cache_relay, counting_hops):
    hop = counting_hops("127.0.0.2")
    tern = cache_relay({"connection_cache_time": "3s"})
    send_and_wait_sent(tern, "one@a.test", 1, hop)
    assert hop.quits == [] and hop.closed == 0, f"closed at once: {hop}"
    wait_until(lambda: hop.quits == [1] and hop.closed == 1, WAIT, "QUIT after the cache time", lambda: repr(hop))
    # A later message opens a new connection, which is cached in turn.
    send_and_wait_sent(tern, "two@a.test", 2, hop)
    assert hop.connections == 2
    assert_nothing_deferred(tern)


def test_reload_closes_idle_connections(cache_relay, counting_hops):
    hop = counting_hops("127.0.0.2")
    tern = cache_relay({"connection_cache_time": "1h"})
    send_and_wait_sent(tern, "one@a.test", 1, hop)
    assert hop.quits == []
    tern.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: hop.quits == [1], WAIT, "QUIT on SIGHUP", lambda: f"{hop}\n{tern.stderr()[-2000:]}")
    send_and_wait_sent(tern, "two@a.test", 2, hop)
    assert hop.connections == 2
    assert tern.alive()


def test_stop_quits_idle_connections(cache_relay, counting_hops):
    hop = counting_hops("127.0.0.2")
    tern = cache_relay({"connection_cache_time": "1h"})
    send_and_wait_sent(tern, "one@a.test", 1, hop)
    tern.stop()
    wait_until(lambda: hop.closed == 1, WAIT, "the idle connection closed at stop", lambda: repr(hop))
    assert tern.proc.returncode == 0, tern.stderr()[-2000:]
