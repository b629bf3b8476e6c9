"""TLS sessions of `tern serve`: one TLS 1.3 session ticket per full handshake (as Postfix's smtpd
sends), a client that presents it resumes, and `tern blast` never does, so every handshake it
counts is a full one. Replies under TLS: pipelined commands get theirs in order, and QUIT gets its
221 followed by close_notify. Clients: openssl s_client, Python's ssl, tern blast.
"""

from __future__ import annotations

import ssl
import subprocess

import pytest

from conftest import CLIENT_HELO, TERN_BIN, SMTPConn, Tern, assert_reply, make_message, split_received, wait_until
from tls_helpers import client_context

WAIT = 30.0


@pytest.fixture
def verbose_tern(tmp_path, certs):
    """tern serve with the test certificate and debug lines ("TLS from [ip]: ..." for each handshake)."""
    t = Tern(tmp_path / "tern", extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])}})
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}: run `swift build -c release` (or set TERN_BIN)")
    t.runs = 1
    with open(t.stderr_path, "ab") as err:
        t.proc = subprocess.Popen([str(TERN_BIN), "serve", "--verbose", "--config", str(t.config_path)], cwd=t.dir,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                  start_new_session=True)
    t.wait_ready()
    yield t
    t.stop()


class TLSConn(SMTPConn):
    def starttls(self, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> None:
        assert self.buf == b""
        self.sock = ctx.wrap_socket(self.sock, server_hostname="relay.test", session=session)


def tls_session(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
    """Greeting, EHLO, STARTTLS, handshake (offering `session`), EHLO, QUIT. Returns the session the
    client holds afterwards (with the server's ticket) and whether the handshake resumed."""
    with TLSConn(port) as c:
        c.greeting()
        assert_reply(c.ehlo(), 250)
        assert_reply(c.cmd("STARTTLS"), 220)
        c.starttls(ctx, session)
        assert_reply(c.ehlo(), 250)  # read under TLS: the ticket came before it
        reused = c.sock.session_reused
        held = c.sock.session
        assert_reply(c.cmd("QUIT"), 221)
        return held, reused


def debug_lines(t: Tern, text: str) -> list[str]:
    return [l for l in t.stderr().splitlines() if text in l]


def wait_lines(t: Tern, text: str, count: int) -> list[str]:
    return wait_until(lambda: (lambda lines: lines if len(lines) >= count else None)(debug_lines(t, text)), WAIT,
                      f"{count} lines with {text!r} in tern's log", lambda: t.stderr()[-3000:])


def test_one_ticket_per_full_handshake_and_close_notify_after_221(verbose_tern):
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{verbose_tern.port}",
                        "-servername", "relay.test", "-tls1_3", "-msg", "-ign_eof"],
                       input=b"EHLO client.test\r\nQUIT\r\n", capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    received = [l for l in out.splitlines() if l.startswith("<<< ")]
    assert any("ServerHello" in l for l in received), out
    tickets = [l for l in received if "NewSessionTicket" in l]
    assert len(tickets) == 1, out
    assert "221 " in out, out
    assert any("close_notify" in l for l in received), f"no close_notify from the server:\n{out}"


def test_a_client_that_presents_the_ticket_resumes(verbose_tern, certs):
    ctx = client_context(certs["ca"])
    session, reused = tls_session(verbose_tern.port, ctx)
    assert not reused
    assert session is not None and session.has_ticket
    _, reused = tls_session(verbose_tern.port, ctx, session)
    assert reused, "the server did not resume the session its ticket names"
    lines = wait_lines(verbose_tern, "TLS from [127.0.0.1]: TLSv1.3", 2)
    assert [("session resumed" in l) for l in lines] == [False, True], lines
    # A session on a resumed handshake carries mail as any other (the Received header says ESMTPS).
    with TLSConn(verbose_tern.port) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("STARTTLS"), 220)
        c.starttls(ctx, session)
        assert c.sock.session_reused
        assert_reply(c.ehlo(), 250)
        assert_reply(c.cmd("MAIL FROM:<alice@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<bob@far.test>"), 250)
        assert_reply(c.cmd("DATA"), 354)
        msg = make_message(subject="resumed")
        c.send(msg + b".\r\n")
        assert_reply(c.read_reply(), 250)
    qid = verbose_tern.queued()[-1]
    header, rest = split_received(verbose_tern.msg(qid))
    assert rest == msg
    assert "with ESMTPS id " + qid in header.decode()


def test_tern_blast_handshakes_are_all_full(verbose_tern):
    r = subprocess.run([str(TERN_BIN), "blast", "--server", f"127.0.0.1:{verbose_tern.port}", "--handshakes", "40",
                        "--concurrency", "4", "--quiet"], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    lines = wait_lines(verbose_tern, "TLS from [127.0.0.1]:", 40)
    assert len(lines) == 40
    assert not [l for l in lines if "session resumed" in l], "tern blast resumed a session"


def test_pipelined_replies_under_tls_come_in_order(verbose_tern, certs):
    ctx = client_context(certs["ca"])
    with TLSConn(verbose_tern.port) as c:
        c.greeting()
        c.ehlo(CLIENT_HELO)
        assert_reply(c.cmd("STARTTLS"), 220)
        c.starttls(ctx)
        assert_reply(c.ehlo(CLIENT_HELO), 250)
        c.send(b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@far.test>\r\nRCPT TO:<carol@far.test>\r\nDATA\r\n")
        assert_reply(c.read_reply(), 250)
        assert_reply(c.read_reply(), 250)
        assert_reply(c.read_reply(), 250)
        assert_reply(c.read_reply(), 354)
        c.send(make_message(subject="pipelined") + b".\r\nNOOP\r\nQUIT\r\n")
        assert_reply(c.read_reply(), 250, "2.0.0")
        assert_reply(c.read_reply(), 250)
        assert_reply(c.read_reply(), 221)
