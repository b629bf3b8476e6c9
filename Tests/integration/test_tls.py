"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314) against `tern serve`, with Python's ssl/smtplib
and swaks as clients and a certificate made by openssl for the test."""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import CLIENT_HELO, HOSTNAME, SMTPConn, assert_reply, free_port, make_message, queue_id_of, split_received, wait_until
from tls_helpers import client_context


@pytest.fixture
def tls_tern(start_tern, certs):
    return start_tern(extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])}})


class TLSConn(SMTPConn):
    """SMTPConn whose socket can be wrapped in TLS mid-session, keeping unread bytes visible."""

    def starttls(self, ctx: ssl.SSLContext, server_hostname: str = HOSTNAME) -> None:
        assert self.buf == b"", f"bytes left in the clear before the handshake: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)


def test_no_certificate_no_starttls(tern):
    with tern.connect() as c:
        c.greeting()
        ehlo = assert_reply(c.ehlo(), 250)
        assert "STARTTLS" not in ehlo.lines
        assert_reply(c.cmd("STARTTLS"), 454, "4.7.0")
        # The session goes on in the clear.
        assert_reply(c.cmd("NOOP"), 250)


def test_smtplib_starttls_and_received_header(tls_tern, certs):
    t = tls_tern
    msg = make_message(subject="over tls")
    with smtplib.SMTP("127.0.0.1", t.port, local_hostname=CLIENT_HELO, timeout=15) as s:
        code, text = s.ehlo()
        assert code == 250 and s.has_extn("starttls")
        code, text = s.starttls(context=client_context(certs["ca"]))
        assert code == 220, text
        version = s.sock.version()
        assert version in ("TLSv1.3", "TLSv1.2")
        cipher = s.sock.cipher()[0]
        s.ehlo()
        assert not s.has_extn("starttls"), "STARTTLS offered again under TLS"
        refused = s.sendmail("alice@client.test", ["bob@far.test"], msg)
        assert refused == {}
    qid = t.queued()[-1]
    header, rest = split_received(t.msg(qid))
    text = header.decode()
    assert rest == msg
    assert "with ESMTPS id " + qid in text, text
    assert f"(using {version} with cipher {cipher} (" in text, text
    assert t.env(qid).fields["protocol"] == "ESMTPS"
    assert "auth" not in t.env(qid).fields  # no AUTH, no identity


def test_swaks_tls(tls_tern, certs, tmp_path):
    t = tls_tern
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{t.port}", "--tls", "--helo", CLIENT_HELO,
                        "--from", "alice@client.test", "--to", "bob@far.test", "--header", "Subject: swaks tls"],
                       capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert "TLS started with cipher" in out, out
    qid = queue_id_of_text(out)
    assert b"with ESMTPS id " + qid.encode() in t.msg(qid)


def queue_id_of_text(out: str) -> str:
    import re
    m = re.search(r"queued as ([0-9A-F]{14})", out)
    assert m, out
    return m.group(1)


@pytest.mark.parametrize("split", ["one-write", "byte-by-byte"])
def test_commands_pipelined_after_starttls_are_discarded(tls_tern, certs, split):
    """CVE-2011-0411: RSET, MAIL and RCPT sent in the clear right behind STARTTLS must never run."""
    t = tls_tern
    with TLSConn(t.port) as c:
        c.greeting()
        assert_reply(c.ehlo(), 250)
        attack = b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@client.test>\r\nRCPT TO:<victim@far.test>\r\n"
        if split == "one-write":
            c.send(attack)
        else:
            for b in attack:
                c.send(bytes([b]))
        assert_reply(c.read_reply(), 220, "2.0.0")
        # Nothing else may come back in the clear: the next bytes must be the TLS handshake.
        c.sock.settimeout(1.0)
        c.starttls(client_context(certs["ca"]))
        c.sock.settimeout(15)
        # The session restarted: no EHLO yet, and the injected MAIL did not open a transaction.
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 503, "5.5.1")
        ehlo = assert_reply(c.ehlo(), 250)
        assert "STARTTLS" not in ehlo.lines
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250, "2.1.0")
        assert_reply(c.cmd("RCPT TO:<b@far.test>"), 250, "2.1.5")
        qid = queue_id_of(assert_reply(c.data(make_message(subject="after")), 250))
        assert_reply(c.cmd("QUIT"), 221)
    env = t.env(qid)
    assert env.fields["sender"] == "a@client.test"
    assert env.recipients == ["b@far.test"]
    assert len(t.queued()) == 1


def test_starttls_twice_and_in_transaction(tls_tern, certs):
    with TLSConn(tls_tern.port) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("STARTTLS"), 503, "5.5.1")
        assert_reply(c.cmd("RSET"), 250)
        assert_reply(c.cmd("STARTTLS"), 220)
        c.starttls(client_context(certs["ca"]))
        c.ehlo()
        assert_reply(c.cmd("STARTTLS"), 503, "5.5.1")


def test_tls_1_1_is_refused(tls_tern):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this Python cannot offer TLS 1.1 at all")
    with TLSConn(tls_tern.port) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("STARTTLS"), 220)
        with pytest.raises((ssl.SSLError, OSError)):
            c.starttls(ctx)
    # The server carries on.
    with tls_tern.connect() as c:
        assert_reply(c.greeting(), 220)


def test_garbage_instead_of_handshake_closes_connection(tls_tern):
    with TLSConn(tls_tern.port) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("STARTTLS"), 220)
        c.send(b"EHLO not.tls\r\n" * 3)
        assert c.wait_closed(10)
    assert tls_tern.alive()


def test_sighup_reloads_certificate(start_tern, certs, tmp_path):
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_bytes(certs["cert"].read_bytes())
    key.write_bytes(certs["key"].read_bytes())
    t = start_tern(extra_tables={"tls": {"certificate": str(cert), "key": str(key)}})

    def served_certificate() -> bytes:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with TLSConn(t.port) as c:
            c.greeting()
            c.ehlo()
            assert_reply(c.cmd("STARTTLS"), 220)
            c.starttls(ctx)
            der = c.sock.getpeercert(binary_form=True)
            c.cmd("QUIT")
            return der

    def der_of(pem_path) -> bytes:
        return ssl.PEM_cert_to_DER_cert(pem_path.read_text())

    assert served_certificate() == der_of(certs["cert"])
    cert.write_bytes(certs["self_cert"].read_bytes())
    key.write_bytes(certs["self_key"].read_bytes())
    t.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: served_certificate() == der_of(certs["self_cert"]), 10, "the new certificate after SIGHUP")
    # A broken pair keeps the old one in force: wait for the refusal, then ask.
    key.write_text("not a key\n")
    t.hup("reload refused")
    assert t.alive()
    assert served_certificate() == der_of(certs["self_cert"])


def test_config_errors_name_the_key(tmp_path, certs):
    from conftest import TERN_BIN, toml_document
    cases = [
        ({"tls": {"key": str(certs["key"])}}, "tls.key"),
        ({"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"]), "cipher": "x"}}, "tls.cipher"),
        ({"server": {"listen": ["127.0.0.1:1"], "submission": [f"127.0.0.1:{free_port()}"]}}, "server.submission"),
        ({"auth": {"max_failures": "5"}}, "auth.max_failures"),
        ({"delivery": {"tls": "sometimes"}}, "delivery.tls"),
    ]
    for tables, key in cases:
        path = tmp_path / "bad.toml"
        path.write_text(toml_document({"hostname": HOSTNAME}, tables))
        r = subprocess.run([str(TERN_BIN), "serve", "--config", str(path)], capture_output=True, timeout=20)
        assert r.returncode == 78, (tables, r.returncode, r.stderr)
        assert key in r.stderr.decode(), (key, r.stderr)


def test_missing_certificate_file_stops_startup(tmp_path):
    from conftest import TERN_BIN, toml_document
    path = tmp_path / "t.toml"
    path.write_text(toml_document({"hostname": HOSTNAME}, {
        "server": {"listen": [f"127.0.0.1:{free_port()}"]}, "spool": {"path": str(tmp_path / "spool")},
        "tls": {"certificate": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"}}))
    r = subprocess.run([str(TERN_BIN), "serve", "--config", str(path)], capture_output=True, timeout=20)
    assert r.returncode != 0
    assert "/nonexistent/cert.pem" in r.stderr.decode()


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_tls_handshake_failure_is_logged_with_openssls_reason(start_tern, certs, fmt):
    """Issue 13: no TLS failure is silent. A client that sends plain text after 220 to STARTTLS leaves
    one reject line naming the client, the session's envelope so far and OpenSSL's reason."""
    import json

    t = start_tern(extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])},
                                 "log": {"format": fmt}})
    with TLSConn(t.port) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("STARTTLS"), 220)
        c.send(b"EHLO not.tls\r\n" * 3)
        assert c.wait_closed(10)
    t.wait_log("TLS handshake failed", timeout=10)
    text = t.stderr()
    if fmt == "plain":
        line = next((l for l in text.splitlines() if "TLS handshake failed" in l), "")
        assert line.split(" ", 2)[2].startswith(
            f"NOQUEUE: reject: STARTTLS from unknown[127.0.0.1]: TLS handshake failed: "), line
        assert "wrong version number" in line or "record" in line or "packet" in line, line  # OpenSSL's words
        assert f"proto=ESMTP helo=<{CLIENT_HELO}>" in line and "session=" in line, line
        return
    (e,) = [json.loads(l) for l in text.splitlines() if l.startswith("{") and '"reject"' in l]
    assert e["msg"] == "reject" and e["reason"] == "tls_failed" and e["command"] == "STARTTLS", e
    assert e["client"] == "unknown[127.0.0.1]" and e["helo"] == CLIENT_HELO, e
    assert e["tls"].startswith("TLS handshake failed: "), e
