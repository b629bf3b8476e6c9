"""PROXY protocol (issue 20): a load balancer in [server] proxy_protocol_from starts each connection
with a PROXY header (v1 or v2) naming the client; that client is then the one relay control, the
Received header and the logs use. Such a peer must send one; a header from anyone else, or a malformed
one, closes the connection with a log line. Last, the same through a real HAProxy (send-proxy-v2).

The "proxy" here connects from 127.0.0.2 (the only address in proxy_protocol_from); relay_networks is
127.0.0.50 alone, so whether a RCPT to a foreign domain is accepted shows which client Tern saw."""
from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import pytest

from conftest import (CLIENT_HELO, SMTPConn, assert_reply, check_received, free_port, make_message,
                      queue_id_of, read_journal, split_received, wait_until)

PROXY = "127.0.0.2"
TRUSTED = "127.0.0.50"
STRANGER = "127.0.0.60"
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(client: str, port: int = 40312, server_port: int = 2525) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} {server_port}\r\n".encode()


def v2(client: str, port: int = 40312, command: int = 0x21) -> bytes:
    block = socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 25)
    return SIG + bytes([command, 0x11]) + struct.pack("!H", len(block)) + block


@pytest.fixture
def relay(start_tern):
    return start_tern(server={"relay_networks": [f"{TRUSTED}/32"], "proxy_protocol_from": [f"{PROXY}/32"]})


def relay_attempt(c: SMTPConn) -> int:
    """EHLO, MAIL, RCPT to a foreign domain: the RCPT's code (250 for a relay client, 554 for others)."""
    assert_reply(c.greeting(), 220)
    assert_reply(c.ehlo(), 250)
    assert_reply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
    return c.cmd("RCPT TO:<b@elsewhere.example>").code


def relay_one_as_trusted(c: SMTPConn, relay) -> str:
    """Relays a message to a foreign domain (allowed: Tern sees TRUSTED) and checks that the spooled
    Received field names TRUSTED; returns the queue id."""
    assert relay_attempt(c) == 250
    reply = c.data(make_message(subject="proxied"))
    assert_reply(reply, 250)
    qid = queue_id_of(reply)
    c.cmd("QUIT")
    received, _ = split_received(read_journal(relay.spool)[qid][1])
    check_received(received, queue_id=qid, ip=TRUSTED, rcpt="b@elsewhere.example")
    return qid


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_the_header_names_the_client_for_relay_control_received_and_logs(relay, header):
    with SMTPConn(relay.port, source=PROXY) as c:
        c.send(header(TRUSTED))
        qid = relay_one_as_trusted(c, relay)
    line = relay.wait_log(f"connect from unknown[{TRUSTED}] via proxy {PROXY}")
    assert line
    relay.wait_log(f"{qid}: client=unknown[{TRUSTED}]")
    # A client the header names outside relay_networks is refused relaying, whatever the proxy's address.
    with SMTPConn(relay.port, source=PROXY) as c:
        c.send(header(STRANGER))
        assert relay_attempt(c) == 554


def test_client_bytes_that_come_with_the_header_are_its_input(relay):
    """HAProxy may put the header and the client's first bytes in one segment: none of them is lost."""
    with SMTPConn(relay.port, source=PROXY) as c:
        c.send(v1(TRUSTED) + f"EHLO {CLIENT_HELO}\r\n".encode())
        assert_reply(c.greeting(), 220)
        assert_reply(c.read_reply(), 250)
        assert_reply(c.cmd("NOOP"), 250)


def test_a_health_check_names_no_client(relay):
    """v2 LOCAL (HAProxy's health checks) and v1 UNKNOWN: the proxy's own address stands."""
    with SMTPConn(relay.port, source=PROXY) as c:
        c.send(v2(TRUSTED, command=0x20))
        assert relay_attempt(c) == 554  # 127.0.0.2 is not in relay_networks
    with SMTPConn(relay.port, source=PROXY) as c:
        c.send(b"PROXY UNKNOWN\r\n")
        assert_reply(c.greeting(), 220)
    relay.wait_log(f"connect from unknown[{PROXY}] via proxy {PROXY}")


@pytest.mark.parametrize("bad, why", [
    (b"EHLO proxy.test\r\n", "not a PROXY header"),
    (b"PROXY TCP4 127.0.0.50 127.0.0.1 99999 25\r\n", "port that is not 0 to 65535"),
    (b"PROXY TCP4 127.0.0.50 127.0.0.1 1 25\n", "bare LF"),
    (b"PROXY TCP6 127.0.0.50 ::1 1 25\r\n", "not IPv6"),
    (b"PROXY " + b"A" * 200, "longer than 107 bytes"),
    (SIG + bytes([0x21, 0x11, 0, 4]) + b"\x7f\x00\x00\x32", "too short for IPv4"),
    (SIG + bytes([0x21, 0x12, 0, 12]) + bytes(12), "other than TCP"),
    (SIG + bytes([0x21, 0x11, 0xFF, 0xFF]), "longer than"),
])
def test_a_malformed_header_from_the_proxy_closes_with_a_log_line(relay, bad, why):
    with SMTPConn(relay.port, source=PROXY) as c:
        c.send(bad)
        assert c.wait_closed(5), "the connection stays open after a malformed PROXY header"
        assert b"220" not in c.buf, f"a session was started: {c.buf!r}"
    line = relay.wait_log(f"PROXY header from unknown[{PROXY}] refused")
    assert why in relay.stderr(), relay.stderr()[-2000:]
    assert "99999" not in line and "AAAA" not in line  # the client's bytes are not logged


def test_a_proxy_that_sends_nothing_is_cut_off(relay):
    with SMTPConn(relay.port, source=PROXY, timeout=15) as c:
        start = time.monotonic()
        assert c.wait_closed(12)
        assert 4 <= time.monotonic() - start <= 10
        assert c.buf == b""
    relay.wait_log("no complete PROXY header within 5 s")


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_a_header_from_a_peer_not_in_the_list_is_refused(relay, header):
    """The forged address never counts: the connection closes at the header, with a log line."""
    with SMTPConn(relay.port, source=TRUSTED) as c:  # TRUSTED itself: no relay right is gained either
        assert_reply(c.greeting(), 220)
        c.send(header("127.0.0.99"))
        assert c.wait_closed(5)
    relay.wait_log(f"PROXY header from unknown[{TRUSTED}] refused: not in proxy_protocol_from")
    assert "127.0.0.99" not in relay.stderr()


def test_a_second_header_behind_the_proxy_is_refused(relay):
    with SMTPConn(relay.port, source=PROXY) as c:
        c.send(v1(STRANGER))
        assert_reply(c.greeting(), 220)
        c.send(v1(TRUSTED))
        assert c.wait_closed(5)
    relay.wait_log(f"PROXY header from unknown[{STRANGER}] refused: a second PROXY header behind proxy {PROXY}")


def test_the_limits_count_the_real_client(start_tern):
    """max_connections_per_ip counts the client the header names, not the proxy (all of whose
    connections come from one address)."""
    relay = start_tern(server={"relay_networks": [f"{TRUSTED}/32"], "proxy_protocol_from": [f"{PROXY}/32"],
                               "max_connections_per_ip": 2})
    conns = []
    try:
        for i in range(4):
            c = SMTPConn(relay.port, source=PROXY)
            conns.append(c)
            c.send(v1(f"127.0.0.{70 + i}"))
            assert_reply(c.greeting(), 220)  # four clients through one proxy: all admitted
        c = SMTPConn(relay.port, source=PROXY)
        conns.append(c)
        c.send(v1("127.0.0.70"))
        assert_reply(c.greeting(), 220)
        c = SMTPConn(relay.port, source=PROXY)
        conns.append(c)
        c.send(v1("127.0.0.70"))
        assert_reply(c.read_reply(), 421, "4.7.0")  # the third from one client
    finally:
        for c in conns:
            c.close()


HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


@pytest.fixture
def haproxy(tmp_path):
    """Starts HAProxy in TCP mode on its own port, sending PROXY v2 from 127.0.0.2 to `backend_port`."""
    procs = []

    def start(backend_port: int) -> int:
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(f"""global
    log stderr format raw local0 info
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{port}
    default_backend tern
backend tern
    server t1 127.0.0.1:{backend_port} send-proxy-v2 source {PROXY}
""")
        p = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "haproxy.log", "wb"))
        procs.append(p)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return p.poll() is not None
        wait_until(listening, 10, "haproxy listening")
        assert p.poll() is None, (tmp_path / "haproxy.log").read_text()
        return port

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def test_through_haproxy_send_proxy_v2(relay, haproxy):
    port = haproxy(relay.port)
    with SMTPConn(port, source=TRUSTED) as c:
        relay_one_as_trusted(c, relay)
    relay.wait_log(f"connect from unknown[{TRUSTED}] via proxy {PROXY}")
    with SMTPConn(port, source=STRANGER) as c:
        assert relay_attempt(c) == 554


def test_implicit_tls_behind_the_proxy_with_the_client_hello_in_the_header_segment(start_tern, certs, users_file):
    """On a submissions (implicit TLS) port the header comes before the TLS handshake; bytes of the
    ClientHello sent in the same segment go to TLS, not to SMTP."""
    import ssl
    from tls_helpers import client_context
    port = free_port()
    relay = start_tern(server={"relay_networks": [f"{TRUSTED}/32"], "proxy_protocol_from": [f"{PROXY}/32"],
                               "submissions": [f"127.0.0.1:{port}"]},
                       extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])},
                                     "auth": {"users_file": str(users_file)}})
    ctx = client_context(certs["ca"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(PROXY, 0)) as s:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(v2(TRUSTED) + outgoing.read())  # one segment: header + ClientHello
        plaintext = b""
        deadline = time.monotonic() + 10
        while b"\r\n" not in plaintext and time.monotonic() < deadline:
            data = s.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
            try:
                tls.do_handshake()
                plaintext += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            if outgoing.pending:
                s.sendall(outgoing.read())
        assert plaintext.startswith(b"220 "), plaintext
    relay.wait_log(f"connect from unknown[{TRUSTED}] via proxy {PROXY}")
