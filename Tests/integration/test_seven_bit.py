"""8BITMIME to a 7-bit next hop (RFC 6152): tern relays 8-bit MIME messages to `tern sink --disable
8bitmime` (its keep mode writes what arrived), and what arrives is 7-bit MIME, structure kept, that
Python's email package decodes to the same text: a Latin-1 body, a UTF-8 multipart with an 8-bit
attachment. A next hop that offers 8BITMIME gets the bytes unchanged; an 8-bit message that is not
MIME goes as it is, and the log says so."""

from __future__ import annotations

import email
import email.policy

from conftest import assert_reply, make_message, queue_id_of, split_received, wait_until
from test_sink import start_sink  # noqa: F401  (the fixture)

SENDER = "sender@client.test"

LATIN1 = "Grüße aus Köln, ça coûte 100 € = trop cher.\r\nZweite Zeile mit Leerzeichen am Ende \r\n"
UTF8_HTML = "<p>日本語 and Ελληνικά</p>\r\n"
# Every octet but NUL, CR and LF (which SMTP does not carry in 8bit data), in short lines.
_OCTETS = bytes(b for b in range(1, 256) if b not in (10, 13))
ATTACHMENT = b"".join(_OCTETS[i:i + 64] + b"\r\n" for i in range(0, len(_OCTETS), 64))


def latin1_message() -> bytes:
    return make_message(subject="latin1", to="a@x.test", headers=[
        ("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=iso-8859-1"),
        ("Content-Transfer-Encoding", "8bit")], body=LATIN1.replace("€", "EUR").encode("latin-1"))


def multipart_message() -> bytes:
    return make_message(subject="multipart", to="b@x.test", headers=[
        ("MIME-Version", "1.0"), ("Content-Type", 'multipart/mixed; boundary="=-b1"')], body=(
        b"This is MIME.\r\n--=-b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + UTF8_HTML.encode() + b"--=-b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + ATTACHMENT + b"--=-b1--\r\n"))


def relay_through(start_tern, sink_port: int):
    return start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s",
                                "chunking": False},
                      extra_tables={"routes": {"x.test": f"[127.0.0.1]:{sink_port}"},
                                    "dns": {"servers": ["127.0.0.1:9"]}})


def submit(t, rcpt: str, message: bytes) -> str:
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}> BODY=8BITMIME"), 250)
        assert_reply(c.cmd(f"RCPT TO:<{rcpt}>"), 250)
        return queue_id_of(assert_reply(c.data(message), 250))


def kept(keep, n: int) -> list[bytes]:
    wait_until(lambda: keep.exists() and len(list(keep.glob("*.eml"))) >= n, 30, f"{n} messages at the sink")
    return [p.read_bytes() for p in sorted(keep.glob("*.eml"), key=lambda p: p.stat().st_mtime)]


def test_eight_bit_mime_reaches_a_seven_bit_hop_as_valid_seven_bit(start_tern, start_sink, tmp_path):
    keep = tmp_path / "kept"
    sink = start_sink(["--keep-path", str(keep), "--disable", "8bitmime"])
    t = relay_through(start_tern, sink.port)
    submit(t, "a@x.test", latin1_message())
    submit(t, "b@x.test", multipart_message())
    # Over 64 KiB: converted on the thread pool, not the loop.
    big_text = (LATIN1.replace("€", "EUR") * 3000)
    submit(t, "c@x.test", make_message(subject="big", to="c@x.test", headers=[
        ("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=iso-8859-1"),
        ("Content-Transfer-Encoding", "8bit")], body=big_text.encode("latin-1")))
    got = kept(keep, 3)
    for raw in got:
        assert all(b < 0x80 for b in raw), "an 8-bit octet reached the 7-bit next hop"
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    by_subject = {email.message_from_bytes(raw, policy=email.policy.default)["subject"]: raw for raw in got}
    latin = email.message_from_bytes(by_subject["latin1"], policy=email.policy.default)
    assert latin["Content-Transfer-Encoding"] == "quoted-printable"
    assert latin.get_content().replace("\r\n", "\n") == LATIN1.replace("€", "EUR").replace("\r\n", "\n")
    multi = email.message_from_bytes(by_subject["multipart"], policy=email.policy.default)
    parts = list(multi.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/html", "application/octet-stream"]
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    # The CRLF before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1).
    assert parts[0].get_content().replace("\r\n", "\n") == UTF8_HTML.replace("\r\n", "\n").rstrip("\n")
    assert parts[1]["Content-Transfer-Encoding"] == "base64"
    assert parts[1].get_content() == ATTACHMENT[:-2]
    big = email.message_from_bytes(by_subject["big"], policy=email.policy.default)
    assert len(by_subject["big"]) > 64 * 1024
    assert big.get_content().replace("\r\n", "\n") == big_text.replace("\r\n", "\n")
    log = t.stderr()
    assert log.count("converted to 7-bit MIME") == 3, log[-3000:]


def test_an_eight_bit_hop_gets_the_bytes_and_non_mime_goes_as_is(start_tern, start_sink, tmp_path):
    keep8 = tmp_path / "kept8"
    sink8 = start_sink(["--keep-path", str(keep8)])
    t = relay_through(start_tern, sink8.port)
    m = latin1_message()
    qid = submit(t, "a@x.test", m)
    raw = kept(keep8, 1)[0]
    assert split_received(raw)[1] == m, "a next hop with 8BITMIME gets the message unchanged"
    assert qid
    keep7 = tmp_path / "kept7"
    sink7 = start_sink(["--keep-path", str(keep7), "--disable", "8bitmime"])
    t7 = relay_through(start_tern, sink7.port)
    plain = make_message(subject="not mime", to="c@x.test", body="Grüße\r\n")
    submit(t7, "c@x.test", plain)
    assert split_received(kept(keep7, 1)[0])[1] == plain
    wait_until(lambda: "not convertible MIME sent as it is" in t7.stderr(), 10, "the warning in the log")
