"""BODY=BINARYMIME (RFC 3030 §3) end to end. tern serve offers BINARYMIME beside CHUNKING and takes a
binary body only with BDAT (DATA is 503); the body is kept octet for octet (NUL, bare CR and LF, no
CRLF at the end) and relayed with BDAT BODY=BINARYMIME to a `tern sink` that offers it, which keeps it
byte for byte. A next hop without BINARYMIME gets nothing: the sender gets a bounce with 5.6.3 that
carries the headers only, also for RET=FULL."""

from __future__ import annotations

import email
import email.policy

from conftest import SMTPConn, assert_reply, free_port, make_message, queue_id_of, split_received, wait_until
from delivery_helpers import NextHop, parse_dsn
from test_sink import start_sink  # noqa: F401  (the fixture)

SENDER = "sender@sender.test"
# Octets no line reader would take: NUL, bare CR and LF, 0xFF, a line of 3,000 octets, no final CRLF.
BINARY = bytes([0, 1, 2, 13, 65, 10, 66, 13, 13, 10, 0xFF, 0xFE]) + b"B" * 3000 + b"\n.\r\n.\x00"


def binary_message() -> bytes:
    return make_message(subject="binary", to="a@bin.test", headers=[
        ("MIME-Version", "1.0"), ("Content-Type", "application/octet-stream"),
        ("Content-Transfer-Encoding", "binary")], body=BINARY)


def relay(start_tern, routes: dict[str, str]):
    return start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
                      extra_tables={"routes": routes, "dns": {"servers": ["127.0.0.1:9"]}})


def bdat(c: SMTPConn, chunk: bytes, last: bool = False):
    """One BDAT command and its octets (nothing after them), and its reply."""
    c.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
    return c.read_reply()


def submit_binary(port: int, rcpt: str, message: bytes, mail_params: str = "") -> str:
    with SMTPConn(port) as c:
        c.greeting()
        ehlo = assert_reply(c.cmd("EHLO client.test"), 250)
        assert "BINARYMIME" in ehlo.lines and "CHUNKING" in ehlo.lines, ehlo
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}> BODY=BINARYMIME{mail_params}"), 250, "2.1.0")
        assert_reply(c.cmd(f"RCPT TO:<{rcpt}>"), 250, "2.1.5")
        assert_reply(c.cmd("DATA"), 503, "5.5.1")  # a binary body has no end-of-data line
        half = len(message) // 2
        assert_reply(bdat(c, message[:half]), 250)
        qid = queue_id_of(assert_reply(bdat(c, message[half:], last=True), 250))
        assert_reply(c.cmd("QUIT"), 221)
        return qid


def test_binary_body_kept_and_relayed_octet_for_octet(start_tern, start_sink, tmp_path):
    keep = tmp_path / "kept"
    sink = start_sink(["--keep-path", str(keep)])
    t = relay(start_tern, {"bin.test": f"[127.0.0.1]:{sink.port}"})
    message = binary_message()
    qid = submit_binary(t.port, "a@bin.test", message)
    wait_until(lambda: keep.exists() and len(list(keep.glob("*.eml"))) >= 1, 30, "the message at the sink",
               on_timeout=lambda: t.stderr()[-3000:])
    _, rest = split_received(next(keep.glob("*.eml")).read_bytes())
    assert rest == message
    wait_until(lambda: t.queued() == [], 30, "the relay's spool to empty")
    sent = [l for l in t.stderr().splitlines() if qid in l and "status=sent" in l]
    assert sent, t.stderr()[-3000:]


def test_no_binarymime_at_the_next_hop_bounces_with_5_6_3_and_headers_only(start_tern, start_sink, tmp_path):
    sink = start_sink(["--keep-path", str(tmp_path / "kept"), "--disable", "binarymime"])
    sender_hop = NextHop("127.0.0.1", free_port()).start()
    try:
        t = relay(start_tern, {"bin.test": f"[127.0.0.1]:{sink.port}",
                               "sender.test": f"[127.0.0.1]:{sender_hop.port}"})
        message = binary_message()
        submit_binary(t.port, "a@bin.test", message, " RET=FULL")
        bounce = sender_hop.wait_for(1, timeout=30, on_timeout=lambda: t.stderr()[-3000:])[0]
        dsn = parse_dsn(bounce.content)
        assert dsn.final_recipients() == ["a@bin.test"]
        assert dsn.recipients[0]["status"] == "5.6.3", dsn.recipients
        assert "BINARYMIME" in dsn.recipients[0].get("diagnostic-code", "")
        parts = list(email.message_from_bytes(bounce.content, policy=email.policy.compat32).walk())
        types = [p.get_content_type() for p in parts]
        assert "text/rfc822-headers" in types and "message/rfc822" not in types, types
        assert BINARY[-20:] not in bounce.content  # the body never goes back
        assert not (tmp_path / "kept").exists() or not list((tmp_path / "kept").iterdir())
        wait_until(lambda: t.queued() == [], 30, "the relay's spool to empty")
    finally:
        sender_hop.stop()


def test_body_values_and_binary_octets_without_binarymime(start_tern):
    t = start_tern()
    with SMTPConn(t.port) as c:
        c.greeting()
        c.cmd("EHLO client.test")
        assert_reply(c.cmd("MAIL FROM:<a@client.test> BODY=BINARY"), 501, "5.5.4")
        assert_reply(c.cmd("MAIL FROM:<a@client.test> BODY=BINARYMIME"), 250)
        # Without BODY=BINARYMIME the same octets are refused: they are not CRLF lines.
        c.cmd("RSET")
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 250)
        message = binary_message()
        assert_reply(bdat(c, message, last=True), 554, "5.6.0")
    assert t.queued() == []
