"""SMTP AUTH (RFC 4954), the users file written by `tern passwd`, submission listeners, and an
open-relay battery against `tern serve`, with smtplib, swaks and a raw client."""

from __future__ import annotations

import base64
import os
import re
import smtplib
import stat
import subprocess

import pytest

from conftest import CLIENT_HELO, TERN_BIN, USERS, assert_reply, free_port, make_message, queue_id_of, split_received, wait_until
from tls_helpers import client_context, tern_passwd
from test_tls import TLSConn, queue_id_of_text

OUTSIDER = "127.0.0.2"  # outside relay_networks = ["127.0.0.1/32"]
PASSWORD = USERS["alice"]


def secure_tables(certs, users_file, auth=None, server=None):
    a = {"users_file": str(users_file)}
    a.update(auth or {})
    srv = {"relay_networks": ["127.0.0.1/32"]}
    srv.update(server or {})
    return dict(server=srv, extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])},
                                          "auth": a})


@pytest.fixture
def auth_tern(start_tern, certs, users_file):
    return start_tern(**secure_tables(certs, users_file))


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def tls_session(t, certs, source=OUTSIDER, port=None) -> TLSConn:
    c = TLSConn(port or t.port, source=source)
    c.greeting()
    c.ehlo()
    assert_reply(c.cmd("STARTTLS"), 220)
    c.starttls(client_context(certs["ca"]))
    c.ehlo()
    return c


def test_passwd_writes_salted_scrypt_hashes(tmp_path):
    path = tmp_path / "users"
    assert tern_passwd(path, "alice", "pw one").returncode == 0
    assert tern_passwd(path, "bob", "pw one").returncode == 0
    text = path.read_text()
    assert "pw one" not in text
    lines = dict(line.split(":", 1) for line in text.splitlines())
    assert set(lines) == {"alice", "bob"}
    for h in lines.values():
        assert re.fullmatch(r"\$scrypt\$ln=15,r=8,p=1\$[0-9a-f]{32}\$[0-9a-f]{64}", h), h
    assert lines["alice"] != lines["bob"], "same password, same hash: no salt"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # Changing a password replaces the line, keeps the order.
    assert tern_passwd(path, "alice", "pw two").returncode == 0
    again = dict(line.split(":", 1) for line in path.read_text().splitlines())
    assert list(again) == ["alice", "bob"] and again["alice"] != lines["alice"] and again["bob"] == lines["bob"]
    # Bad input.
    assert tern_passwd(path, "with:colon", "x").returncode != 0
    assert tern_passwd(path, "dave", "").returncode != 0
    # --delete removes a user; deleting an unknown one fails.
    r = subprocess.run([str(TERN_BIN), "passwd", "--file", str(path), "--delete", "bob"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert [l.split(":")[0] for l in path.read_text().splitlines()] == ["alice"]
    r = subprocess.run([str(TERN_BIN), "passwd", "--file", str(path), "--delete", "bob"], capture_output=True, timeout=30)
    assert r.returncode != 0
    path.write_text("eve:plaintext\n")
    r = tern_passwd(path, "dave", "x")
    assert r.returncode != 0 and b"line 1" in r.stderr


def test_auth_not_offered_before_starttls(auth_tern):
    with auth_tern.connect(source=OUTSIDER) as c:
        c.greeting()
        ehlo = assert_reply(c.ehlo(), 250)
        assert "STARTTLS" in ehlo.lines
        assert not any(l.startswith("AUTH") for l in ehlo.lines)
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 538, "5.7.11")
        # and the outsider cannot relay
        assert_reply(c.cmd("MAIL FROM:<alice@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<x@far.test>"), 554, "5.7.1")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_login_relays_for_outsider(auth_tern, certs, mechanism):
    t = auth_tern
    msg = make_message(subject=f"auth {mechanism}")
    with smtplib.SMTP("127.0.0.1", t.port, local_hostname=CLIENT_HELO, source_address=(OUTSIDER, 0), timeout=30) as s:
        s.starttls(context=client_context(certs["ca"]))
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        s.user, s.password = "alice", PASSWORD
        code, text = s.auth(mechanism, getattr(s, "auth_" + mechanism.lower()), initial_response_ok=mechanism == "PLAIN")
        assert code == 235, text
        assert s.sendmail("alice@client.test", ["friend@far.test"], msg) == {}
    qid = t.queued()[-1]
    header, rest = split_received(t.msg(qid))
    assert rest == msg
    assert f"with ESMTPSA id {qid}".encode() in header, header
    assert t.env(qid).fields["protocol"] == "ESMTPSA"
    assert t.env(qid).fields.get("auth") == "alice", t.env(qid).raw  # kept for the egress pool choice
    assert "AUTH user=<alice> from [" in t.stderr()


def test_wrong_password_and_unknown_user(auth_tern, certs):
    with tls_session(auth_tern, certs) as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", "wrong")), 535, "5.7.8")
        assert_reply(c.cmd("AUTH PLAIN " + plain("nobody", PASSWORD)), 535, "5.7.8")
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 235, "2.7.0")
    assert PASSWORD not in auth_tern.stderr()


def test_lockout_after_max_failures(start_tern, certs, users_file):
    t = start_tern(**secure_tables(certs, users_file, auth={"max_failures": 2, "lockout_time": "1h"}))
    with tls_session(t, certs) as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", "wrong1")), 535, "5.7.8")
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", "wrong2")), 535, "5.7.8")
        # Locked out now, even with the right password, and on a new connection too.
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 454, "4.7.0")
    with tls_session(t, certs) as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 454, "4.7.0")
    # Another client address is not locked out.
    with tls_session(t, certs, source="127.0.0.3") as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 235, "2.7.0")


def test_parallel_attempts_do_not_pass_the_limit(start_tern, certs, users_file):
    # 30 connections from one address send AUTH at once: checks in flight count toward max_failures,
    # so at most max_failures are checked (535); the rest are refused before the check (454).
    import threading
    t = start_tern(**secure_tables(certs, users_file, auth={"max_failures": 3, "lockout_time": "1h"}))
    conns = [tls_session(t, certs) for _ in range(30)]
    replies = [None] * len(conns)
    go = threading.Barrier(len(conns))

    def attempt(i):
        go.wait(timeout=30)
        replies[i] = conns[i].cmd("AUTH PLAIN " + plain("alice", f"guess{i}"))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(conns))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    codes = [r.code for r in replies]
    assert codes.count(535) <= 3 and codes.count(535) + codes.count(454) == 30, codes
    for c in conns:
        c.close()


def test_success_does_not_forgive_guesses_at_another_user(start_tern, certs, users_file):
    # Two wrong passwords for alice, then bob logs in as himself: alice's failures still count.
    t = start_tern(**secure_tables(certs, users_file, auth={"max_failures": 3, "lockout_time": "1h"}))
    with tls_session(t, certs) as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", "wrong1")), 535, "5.7.8")
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", "wrong2")), 535, "5.7.8")
    with tls_session(t, certs) as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("bob", "bobs password")), 235, "2.7.0")
    with tls_session(t, certs) as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", "wrong3")), 535, "5.7.8")
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 454, "4.7.0")


def test_submission_requires_auth(start_tern, certs, users_file):
    sub = free_port()
    t = start_tern(**secure_tables(certs, users_file, server={"submission": [f"127.0.0.1:{sub}"]}))
    # Even a client in relay_networks must authenticate on submission.
    with TLSConn(sub, source="127.0.0.1") as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<alice@client.test>"), 530, "5.7.0")
        assert_reply(c.cmd("STARTTLS"), 220)
        c.starttls(client_context(certs["ca"]))
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<alice@client.test>"), 530, "5.7.0")
        assert_reply(c.cmd("AUTH PLAIN " + plain("bob", "bobs password")), 235)
        assert_reply(c.cmd("MAIL FROM:<bob@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<x@far.test>"), 250)
        queue_id_of(assert_reply(c.data(make_message()), 250))
    # swaks --tls --auth on the submission port.
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{sub}", "--tls", "--auth", "LOGIN", "--auth-user", "carol",
                        "--auth-password", "carol pw", "--helo", CLIENT_HELO, "--from", "carol@client.test",
                        "--to", "y@far.test"], capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out
    qid = queue_id_of_text(out)
    assert b"with ESMTPSA id " + qid.encode() in t.msg(qid)


def test_submissions_implicit_tls_with_swaks(start_tern, certs, users_file):
    port = free_port()
    t = start_tern(**secure_tables(certs, users_file, server={"submissions": [f"127.0.0.1:{port}"]}))
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--tls-on-connect", "--auth", "PLAIN",
                        "--auth-user", "alice", "--auth-password", PASSWORD, "--helo", CLIENT_HELO,
                        "--from", "alice@client.test", "--to", "z@far.test"], capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out
    assert "TLS started" in out
    assert "STARTTLS" not in [l.strip() for l in re.findall(r"<-  250[- ](.*)", out)]
    qid = queue_id_of_text(out)
    header, _ = split_received(t.msg(qid))
    assert b"with ESMTPSA id " + qid.encode() in header
    assert re.search(rb"\(using TLSv1\.[23] with cipher [A-Z0-9_-]+ \(\d+/\d+ bits\)\)", header), header
    # Without AUTH: 530.
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--tls-on-connect", "--helo", CLIENT_HELO,
                        "--from", "alice@client.test", "--to", "z@far.test"], capture_output=True, timeout=60)
    assert r.returncode != 0
    assert "530 5.7.0" in r.stdout.decode(errors="replace")
    # Wrong password over swaks: 535.
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--tls-on-connect", "--auth", "LOGIN",
                        "--auth-user", "alice", "--auth-password", "nope", "--helo", CLIENT_HELO,
                        "--from", "alice@client.test", "--to", "z@far.test"], capture_output=True, timeout=60)
    assert r.returncode != 0
    assert "535 5.7.8" in r.stdout.decode(errors="replace")


def test_allowed_senders(start_tern, certs, users_file):
    t = start_tern(**secure_tables(certs, users_file, auth={"senders": {"alice": ["alice@client.test", "@alice.test"]}}))
    with tls_session(t, certs) as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 235)
        assert_reply(c.cmd("MAIL FROM:<ceo@client.test>"), 553, "5.7.1")
        assert_reply(c.cmd("MAIL FROM:<anything@alice.test>"), 250)
        assert_reply(c.cmd("RSET"), 250)
        assert_reply(c.cmd("MAIL FROM:<alice@client.test>"), 250)
    with tls_session(t, certs) as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("bob", "bobs password")), 235)
        assert_reply(c.cmd("MAIL FROM:<ceo@client.test>"), 250, None, "users not listed may use any sender")


def test_cleartext_auth_from_loopback_only_when_allowed(start_tern, certs, users_file):
    t = start_tern(**secure_tables(certs, users_file, auth={"cleartext_from_loopback": True}))
    with t.connect(source=OUTSIDER) as c:
        c.greeting()
        ehlo = c.ehlo()
        assert "AUTH PLAIN LOGIN" in ehlo.lines
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 235)


# An open-relay battery (issue 4): from outside relay_networks, not authenticated, recipients that
# try to route through the relay to another domain are all refused.
BATTERY = [
    "user%other.test@relay.test",
    '"user@other.test"@relay.test',
    "@relay.test:user@other.test",
    "other.test!user@relay.test",
    "other.test!user",
    "user@other.test@[127.0.0.1]",
    "user%other.test@[127.0.0.1]",
    "user@other.test",
    "USER@OTHER.TEST",
    "user@other.test.",
    "user%other.test@RELAY.TEST",
    "user%other.test@relay.test.",
    "@RELAY.TEST:user@other.test",
]


@pytest.mark.parametrize("sender", ["<someone@outside.test>", "<>"], ids=["sender", "null-sender"])
def test_open_relay_battery(start_tern, certs, users_file, sender):
    t = start_tern(**secure_tables(certs, users_file))
    for use_tls in (False, True):
        c = tls_session(t, certs) if use_tls else t.connect(source=OUTSIDER)
        with c:
            if not use_tls:
                c.greeting()
                c.ehlo()
            assert_reply(c.cmd(f"MAIL FROM:{sender}"), 250)
            for rcpt in BATTERY:
                r = c.cmd(f"RCPT TO:<{rcpt}>")
                assert 500 <= r.code < 600, f"RCPT TO:<{rcpt}> accepted (tls={use_tls}): {r}"
            assert_reply(c.cmd("DATA"), 554, None, "no recipient was accepted")
    assert t.queued() == []


def test_many_concurrent_auths_are_all_answered(auth_tern, certs):
    """More AUTH attempts at once than password checks run at once (8): the rest wait their turn."""
    import concurrent.futures

    sessions = [tls_session(auth_tern, certs, source="127.0.0.1") for _ in range(20)]
    try:
        for c in sessions:
            c.send("AUTH PLAIN " + plain("alice", PASSWORD) + "\r\n")
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(lambda c: c.read_reply(), sessions))
        assert [r.code for r in replies] == [235] * 20, [str(r) for r in replies]
    finally:
        for c in sessions:
            c.close()


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_auth_failure_and_lockout_are_logged(start_tern, certs, users_file, fmt):
    """The reject log (issue 13): a failed AUTH and a lockout each leave one line with the client, the
    reply and the user name, which is client text and comes out escaped (ESC as ? or \\u001B)."""
    import json

    kw = secure_tables(certs, users_file, auth={"max_failures": 1, "lockout_time": "1h"})
    kw["extra_tables"]["log"] = {"format": fmt}
    t = start_tern(**kw)
    with tls_session(t, certs) as c:
        # A name no users file holds is refused before any check (issue 14), and logged quoted.
        assert_reply(c.cmd("AUTH PLAIN " + plain("mal\x1blory", "wrong")), 535, "5.7.8")
        assert_reply(c.cmd("AUTH PLAIN " + plain("mal>lory", "wrong")), 535, "5.7.8")
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", PASSWORD)), 454, "4.7.0")
    wait_until(lambda: max(t.stderr().count("AUTH from"), t.stderr().count('"AUTH"')) >= 3, 10, "three AUTH lines")
    text = t.stderr()
    assert "\x1b" not in text and PASSWORD not in text
    if fmt == "plain":
        assert re.search(r"NOQUEUE: reject: AUTH from unknown\[127\.0\.0\.2\]: 535 5\.7\.8 Error: authentication "
                         r"failed: invalid user name; proto=ESMTPS helo=<client\.test> sasl_username=<mal\\x1Blory>",
                         text), text
        assert re.search(r"NOQUEUE: reject: AUTH from unknown\[127\.0\.0\.2\]: 535 5\.7\.8 Error: authentication "
                         r"failed; proto=ESMTPS helo=<client\.test> sasl_username=<mal\\x3Elory>", text), text
        assert "AUTH failed for user=<mal\\x3Elory> from [127.0.0.2]: locked out" in text, text
        assert re.search(r"NOQUEUE: reject: AUTH from unknown\[127\.0\.0\.2\]: 454 4\.7\.0 Error: too many failed "
                         r"authentications, try again later; proto=ESMTPS helo=<client\.test> sasl_username=<alice>",
                         text), text
        return
    entries = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
    rejects = [e for e in entries if e["msg"] == "reject"]
    assert [(e["reason"], e["sasl_username"], e["dsn"]) for e in rejects] == [
        ("auth_failed", "mal\x1blory", "5.7.8"), ("auth_failed", "mal>lory", "5.7.8"),
        ("auth_locked_out", "alice", "4.7.0")], rejects
    assert all(e["client"] == "unknown[127.0.0.2]" and e["command"] == "AUTH" for e in rejects), rejects


def test_implicit_tls_handshake_failure_is_logged(start_tern, certs, users_file):
    """A client that speaks SMTP in the clear to a submissions (implicit TLS) port: the handshake
    fails before any command, and the log says so with OpenSSL's reason (issue 13: never silent)."""
    import socket

    port = free_port()
    t = start_tern(**secure_tables(certs, users_file, server={"submissions": [f"127.0.0.1:{port}"]}))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"EHLO plain.test\r\n")
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    line = t.wait_log("TLS handshake failed", timeout=10)
    assert "NOQUEUE: reject: CONNECT from unknown[127.0.0.1]: TLS handshake failed: error:" in line, t.stderr()
    assert "proto=SMTP" in line and "session=" in line, line


def test_attempts_waiting_for_a_check_are_dropped_when_their_session_ends(start_tern, certs, tmp_path):
    """Attempts beyond max_failures wait for the check in flight (issue 14). Sessions that end while
    waiting (here command_timeout; reading is paused during AUTH, so a client's EOF is seen only after
    the answer) are forgotten: nothing is checked or logged for them when the check finishes."""
    import hashlib

    # A slow hash (ln=16, p=16: 64 MiB, seconds of CPU) keeps the first check in flight past the timeout.
    salt = os.urandom(16)
    key = hashlib.scrypt(b"slow pw", salt=salt, n=2 ** 16, r=8, p=16, maxmem=128 << 20, dklen=32)
    users = tmp_path / "users"
    users.write_text(f"alice:$scrypt$ln=16,r=8,p=16${salt.hex()}${key.hex()}\n")
    t = start_tern(**secure_tables(certs, users, server={"command_timeout": "1s"},
                                   auth={"max_failures": 1, "lockout_time": "1h", "cleartext_from_loopback": True}))

    def session():
        c = t.connect()
        c.greeting()
        c.ehlo()
        return c

    sessions = [session() for _ in range(6)]
    for c in sessions:
        c.send("AUTH PLAIN " + plain("alice", "wrong") + "\r\n")
    # All six time out (421) while the first check runs; five of them were waiting for it.
    for c in sessions:
        assert_reply(c.read_reply(), 421)
        c.close()
    t.wait_log("AUTH failed for user=<alice>", timeout=60)
    # The failure locked the address out: a new attempt gets 454, and only it is logged as refused.
    with session() as c:
        assert_reply(c.cmd("AUTH PLAIN " + plain("alice", "slow pw")), 454, "4.7.0")
    assert t.alive()
    # Log lines come in order: a replayed dead attempt would be logged before "AUTH failed" above.
    t.wait_log("refused: locked out", timeout=60)
    assert t.stderr().count("refused: locked out") == 1, t.stderr()[-3000:]
