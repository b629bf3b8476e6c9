"""The SMTP dialogue itself: greeting, HELO/EHLO, command replies, errors, limits on a session."""

import smtplib
import socket
import time

import pytest

from conftest import HOSTNAME, SMTPConn, assert_reply


def test_greeting_helo_and_quit(tern):
    with tern.connect() as c:
        g = c.read_reply()
        assert str(g) == f"220 {HOSTNAME} ESMTP Tern"
        r = assert_reply(c.cmd("HELO client.test"), 250)
        assert r.lines == [HOSTNAME]
        assert str(c.cmd("QUIT")) == "221 2.0.0 Bye"
        assert c.wait_closed(5), "connection not closed after QUIT"
        assert c.buf == b"", f"bytes after 221: {c.buf!r}"


def test_ehlo_features_smtplib(start_tern):
    t = start_tern(server={"max_message_size": 12345678})
    s = smtplib.SMTP("127.0.0.1", t.port, local_hostname="client.test", timeout=15)
    try:
        code, msg = s.ehlo()
        assert code == 250
        assert msg.split(b"\n")[0].split()[0] == HOSTNAME.encode()
        for feature in ("pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8", "help"):
            assert s.has_extn(feature), f"EHLO lacks {feature}: {msg!r}"
        assert s.esmtp_features.get("size") == "12345678", s.esmtp_features
    finally:
        s.quit()


def test_noop_rset_help(tern):
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"
        assert str(c.cmd("RSET")) == "250 2.0.0 Ok"
        assert_reply(c.cmd("HELP"), 214, "2.0.0")
        # RSET ends a transaction: RCPT then needs a new MAIL.
        assert str(c.cmd("MAIL FROM:<a@x.test>")) == "250 2.1.0 Ok"
        assert str(c.cmd("RSET")) == "250 2.0.0 Ok"
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 503, "5.5.1")
        assert str(c.cmd("MAIL FROM:<a@x.test>")) == "250 2.1.0 Ok"
        assert str(c.cmd("RCPT TO:<b@x.test>")) == "250 2.1.5 Ok"
        # Commands are case-insensitive.
        assert str(c.cmd("noop")) == "250 2.0.0 Ok"


def test_unknown_command(tern):
    with tern.connect() as c:
        c.greeting()
        assert_reply(c.cmd("FROBNICATE now"), 500, "5.5.2")
        c.ehlo()
        assert_reply(c.cmd("XYZZY"), 500, "5.5.2")
        assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"


def test_bad_sequence(tern):
    with tern.connect() as c:
        c.greeting()
        assert_reply(c.cmd("MAIL FROM:<a@x.test>"), 503, "5.5.1", "MAIL before HELO/EHLO")
        c.ehlo()
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 503, "5.5.1", "RCPT before MAIL")
        assert_reply(c.cmd("DATA"), 503, "5.5.1", "DATA before MAIL")
        assert_reply(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        assert_reply(c.cmd("DATA"), 503, "5.5.1", "DATA before RCPT")
        assert_reply(c.cmd("MAIL FROM:<a@x.test>"), 503, "5.5.1", "nested MAIL")
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 250, "2.1.5")
    assert tern.queue_files() == []


def test_syntax_errors_and_unknown_parameters(tern):
    with tern.connect() as c:
        c.greeting()
        assert_reply(c.cmd("HELO"), 501, "5.5.4", "HELO without a domain")
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:a@x.test"), 501, "5.5.4", "MAIL without <>")
        assert_reply(c.cmd("MAIL FROM:<a@x.test"), 501, "5.5.4", "MAIL without closing >")
        assert_reply(c.cmd("MAIL FROM:<a@x.test> FROBNICATE=yes"), 555, "5.5.4", "unknown MAIL parameter")
        assert_reply(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        assert_reply(c.cmd("RCPT TO:b@x.test"), 501, "5.5.4", "RCPT without <>")
        assert_reply(c.cmd("RCPT TO:<b@x.test> FROBNICATE=yes"), 555, "5.5.4", "unknown RCPT parameter")
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 250, "2.1.5")


def test_command_line_too_long(tern):
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        # 512 octets including CRLF is the limit (RFC 5321 4.5.3.1.4): not "line too long".
        line = "NOOP " + "x" * (512 - 2 - 5)
        assert len(line) + 2 == 512
        r = c.cmd(line)
        assert not r.is_(500, "5.5.2"), f"a 512-octet command line was refused as too long: {r}"
        # 513 and far beyond: 500 5.5.2, and the session goes on after the line's end.
        assert_reply(c.cmd("NOOP " + "x" * (513 - 2 - 5)), 500, "5.5.2", "513-octet line")
        assert_reply(c.cmd("MAIL FROM:<" + "a" * 5000 + "@x.test>"), 500, "5.5.2", "5 KB line")
        assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"
        # The over-long MAIL was not executed.
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 503, "5.5.1")


@pytest.mark.parametrize("line", [b"NOOP\nNOOP", b"NOOP\rNOOP", b"MAIL FROM:<a@x.test>\n", b"NO\rOP"],
                         ids=["bare-LF", "bare-CR", "LF-before-CRLF", "CR-inside"])
def test_bare_cr_or_lf_in_command(tern, line):
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        c.send(line + b"\r\n")
        assert_reply(c.read_reply(), 500, "5.5.2", f"command {line!r}")
        # Exactly one reply, and nothing was executed: the next command gets its own reply.
        assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 503, "5.5.1")


def test_too_many_errors_closes(start_tern):
    max_errors = 3
    t = start_tern(server={"max_errors": max_errors})
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        errors = 0
        final = None
        for _ in range(max_errors + 3):
            try:
                c.send(b"BOGUS\r\n")
            except OSError:
                pass  # already closed: the 421 is in our buffer
            try:
                r = c.read_reply()
            except EOFError:
                break
            if r.code == 421:
                final = r
                break
            assert_reply(r, 500, "5.5.2")
            errors += 1
        assert final is not None, f"no 421 after {errors} errors"
        assert final.enhanced == "4.7.0", str(final)
        assert max_errors - 1 <= errors <= max_errors, f"421 came after {errors} errors, limit {max_errors}"
        assert c.wait_closed(5), "connection still open after 421"


def test_errors_below_limit_do_not_close(start_tern):
    t = start_tern(server={"max_errors": 5})
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        for _ in range(3):
            assert_reply(c.cmd("BOGUS"), 500, "5.5.2")
        assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"


def test_idle_timeout(start_tern):
    t = start_tern(server={"command_timeout": "2s"})
    with t.connect(timeout=20) as c:
        c.greeting()
        c.ehlo()
        started = time.monotonic()
        r = c.read_reply()
        waited = time.monotonic() - started
        assert_reply(r, 421, "4.4.2", "idle session")
        assert 1.5 <= waited <= 8, f"timed out after {waited:.1f}s with command_timeout 2s"
        assert c.wait_closed(5), "connection still open after 421 4.4.2"


def test_dripping_a_command_line_does_not_outlive_the_timeout(start_tern):
    """Issue 14: a command line's deadline counts from its first byte. A byte every 0.5 s kept the
    session alive for ever when every byte restarted the timer."""
    t = start_tern(server={"command_timeout": "2s"})
    with t.connect(timeout=20) as c:
        c.greeting()
        c.ehlo()
        started = time.monotonic()
        c.sock.settimeout(0.5)
        reply = b""
        for byte in b"NOOP" + b" " * 30:  # 17 s of dripping at most: bounded
            try:
                c.send(bytes([byte]))
                reply += c.sock.recv(4096)
            except socket.timeout:
                pass
            except OSError:
                break
            if b"\r\n" in reply:
                break
        waited = time.monotonic() - started
        assert reply.startswith(b"421 4.4.2"), reply
        assert 1.5 <= waited <= 5, f"timed out after {waited:.1f}s of dripping with command_timeout 2s"


def test_activity_resets_idle_timeout(start_tern):
    t = start_tern(server={"command_timeout": "2s"})
    with t.connect(timeout=20) as c:
        c.greeting()
        c.ehlo()
        for _ in range(8):  # 4 s of activity in total, never 2 s idle (0.5 s gaps leave a slow machine room)
            time.sleep(0.5)
            assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"
        # The timer started at the first command fired meanwhile and was moved on; idle now, the
        # session still times out about 2 s after the last command.
        started = time.monotonic()
        r = c.read_reply()
        waited = time.monotonic() - started
        assert_reply(r, 421, "4.4.2", "idle session")
        assert 1.5 <= waited <= 8, f"timed out after {waited:.1f}s with command_timeout 2s"


def test_timeouts_follow_the_phase(start_tern):
    # The timer keeps running between reads and is moved only when it must fire sooner: DATA's
    # shorter timeout (first case) takes effect at once, and the command timeout again after the
    # message (second case).
    def into_data(t, then: bytes = b""):
        c = t.connect(timeout=20)
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<b@relay.test>"), 250)
        assert_reply(c.cmd("DATA"), 354)
        if then:
            c.send(then)
            assert_reply(c.read_reply(), 250)
        return c

    def assert_times_out(c, what: str):
        with c:
            started = time.monotonic()
            r = c.read_reply()
            waited = time.monotonic() - started
            assert_reply(r, 421, "4.4.2")
            assert 1.5 <= waited <= 8, f"timed out after {waited:.1f}s {what}"

    t = start_tern(server={"command_timeout": "30s", "data_timeout": "2s"})
    assert_times_out(into_data(t), "in DATA with data_timeout 2s")
    t2 = start_tern(server={"command_timeout": "2s", "data_timeout": "30s"})
    assert_times_out(into_data(t2, b"Subject: t\r\n\r\nbody\r\n.\r\n"), "after DATA with command_timeout 2s")


def test_vrfy_expn_disabled(start_tern):
    t = start_tern(server={"vrfy": False, "expn": False},
                   aliases={"list@relay.test": ["a@x.test", "b@x.test"]})
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("VRFY list@relay.test"), 252, "2.5.2")
        assert_reply(c.cmd("VRFY nobody@relay.test"), 252, "2.5.2")
        assert_reply(c.cmd("EXPN list@relay.test"), 502, "5.5.1")


def test_vrfy_expn_enabled(start_tern):
    t = start_tern(server={"vrfy": True, "expn": True},
                   aliases={"list@relay.test": ["a@x.test", "b@x.test"], "alias@relay.test": "c@x.test"})
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        r = assert_reply(c.cmd("VRFY alias@relay.test"), 250, "2.1.5", "VRFY alias key")
        assert "<" in r.text and "@" in r.text, str(r)
        r = assert_reply(c.cmd("VRFY a@x.test"), 250, "2.1.5", "VRFY list member")
        assert "<a@x.test>" in r.text, str(r)
        assert_reply(c.cmd("VRFY nobody@relay.test"), 550, "5.1.1", "VRFY unknown")
        r = assert_reply(c.cmd("EXPN list@relay.test"), 250, context="EXPN list")
        assert len(r.lines) == 2, str(r)
        assert sorted(r.lines) == ["2.1.5 <a@x.test>", "2.1.5 <b@x.test>"], str(r)
        assert_reply(c.cmd("EXPN nobody@relay.test"), 550, "5.1.1", "EXPN unknown")
        assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"


def _refused_total(t, reason: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{t.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f'tern_commands_refused_total{{reason="{reason}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"no tern_commands_refused_total for {reason}:\n{text}")


def test_too_many_errors_is_counted(start_tern):
    """Issue 13: tern_commands_refused_total{reason="too_many_errors"} stayed 0 when sessions were closed
    for it (only the first reply of a batch was read for the metric)."""
    t = start_tern(server={"max_errors": 2})
    for _ in range(2):
        with t.connect() as c:
            c.greeting()
            c.send(b"BOGUS\r\nBOGUS\r\n")
            assert_reply(c.read_reply(), 500, "5.5.2")
            assert_reply(c.read_reply(), 500, "5.5.2")
            assert_reply(c.read_reply(), 421, "4.7.0")
            assert c.wait_closed(5)
    assert _refused_total(t, "too_many_errors") == 2
    assert _refused_total(t, "unrecognized_command") == 4


@pytest.mark.parametrize("name", [b"a\x00b.test", b"a\x01b.test", b"a\x7fb", b"caf\xc3(.test", b"\xff\xfe"],
                         ids=["nul", "soh", "del", "bad-utf8", "not-utf8"])
def test_helo_names_with_control_characters_or_bad_utf8_are_refused(tern, name):
    with tern.connect() as c:
        c.greeting()
        for verb in (b"EHLO", b"HELO"):
            assert_reply(c.cmd(verb + b" " + name), 501, "5.5.2", f"{verb!r} {name!r}")
        # No HELO was accepted: the name cannot reach a Received header.
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 503, "5.5.1")
        c.ehlo("bücher.test")  # valid UTF-8 is fine
        assert_reply(c.cmd("QUIT"), 221)


@pytest.mark.parametrize("enabled", [False, True])
def test_help_lists_only_enabled_commands(start_tern, enabled):
    t = start_tern(server={"vrfy": enabled, "expn": enabled})
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        r = assert_reply(c.cmd("HELP"), 214, "2.0.0")
        words = r.text.split()
        assert ("VRFY" in words) == enabled and ("EXPN" in words) == enabled, r.text
        assert {"EHLO", "MAIL", "RCPT", "DATA", "QUIT"} <= set(words), r.text
