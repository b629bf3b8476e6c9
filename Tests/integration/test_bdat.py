"""CHUNKING (RFC 3030) end to end. In: BDAT chunks of every shape into `tern serve` (boundaries inside
CRLF and inside "\\r\\n.\\r\\n", a 0-octet LAST chunk, 1 MB in 1-octet chunks, pipelined), refusals, a
client gone mid-chunk (nothing queued), kill -9 after the 250 (kept). Out: tern relays with BDAT to
Postfix's smtpd, which offers CHUNKING; its log counts the session's commands (bdat=1), and what it
relays on to an aiosmtpd next hop is the message byte for byte. `tern blast --bdat` into Postfix too."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time

import pytest

from conftest import TERN_BIN, SMTPConn, assert_reply, make_message, queue_id_of, split_received, wait_until
from delivery_helpers import NextHop
from postfix_helpers import PostfixHop, postfix_relaying_to_hop

SENDER = "sender@client.test"
RCPT = "rcpt@x.test"


def body_lines(count: int, first: int = 0) -> bytes:
    return b"".join(b"%06d " % n + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"\r\n"
                    for n in range(first, first + count))


def tricky_message(lines: int = 200) -> bytes:
    """Lines that DATA would have to stuff, a lone ".", "..", and ".\\r\\n" runs a chunk may cut."""
    body = body_lines(lines // 2) + b".\r\n..\r\n.starts with a dot\r\n\r\n.\r\n" + body_lines(lines // 2, lines // 2)
    return make_message(subject="chunks", body=body, to=RCPT)


def bdat_commands(message: bytes, sizes: list[int]) -> tuple[bytes, int]:
    """BDAT commands carrying `message` in chunks of `sizes` (the rest, if any, in one more), the last
    marked LAST; returns the bytes and the number of chunks."""
    out, pos, n = [], 0, 0
    for size in sizes:
        if pos + size > len(message):
            break
        out.append(b"BDAT %d\r\n" % size + message[pos:pos + size])
        pos += size
        n += 1
    out.append(b"BDAT %d LAST\r\n" % (len(message) - pos) + message[pos:])
    return b"".join(out), n + 1


def send_chunked(c: SMTPConn, message: bytes, sizes: list[int], rcpts: list[str] | None = None) -> list:
    """MAIL, RCPT and every BDAT pipelined in one go (written by a thread, so that the replies are read
    while the commands go out); returns every reply in order."""
    rcpts = rcpts or [RCPT]
    commands, chunks = bdat_commands(message, sizes)
    data = f"MAIL FROM:<{SENDER}>\r\n".encode() + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + commands
    writer = threading.Thread(target=c.send, args=(data,), daemon=True)
    writer.start()
    replies = [c.read_reply() for _ in range(1 + len(rcpts) + chunks)]
    writer.join(timeout=60)
    return replies


# --------------------------------------------------------------------------------------------
# In


def test_ehlo_offers_chunking(start_tern):
    t = start_tern()
    with t.connect() as c:
        c.greeting()
        assert "CHUNKING" in c.ehlo().lines


def test_chunk_boundaries_anywhere_arrive_byte_for_byte(start_tern):
    t = start_tern()
    msg = tricky_message()
    dot = msg.index(b"\r\n.\r\n")
    cr = msg.index(b"\r\n", 100)
    shapes = {
        "one chunk": [],
        "inside CRLF": [cr + 1],
        "inside CRLF.CRLF": [dot + 1, 1, 1, 1],
        "before the dot": [dot + 2, 1],
        "1 octet then the rest": [1],
        "random": [random.Random(5).randint(1, 700) for _ in range(200)],
        "0-octet LAST": [len(msg)],  # the whole message in one chunk, then "BDAT 0 LAST"
    }
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        for name, sizes in shapes.items():
            replies = send_chunked(c, msg, sizes)
            assert all(r.code == 250 for r in replies), f"{name}: {[(r.code, r.lines) for r in replies]}"
            if name == "0-octet LAST":
                assert replies[-2].lines[-1] == f"2.0.0 Ok: {len(msg)} octets received", replies[-2]
            qid = queue_id_of(replies[-1])
            t.assert_queued(qid, msg, sender=SENDER, rcpts=[RCPT])
        assert_reply(c.cmd("QUIT"), 221)


def test_one_megabyte_in_one_octet_chunks(start_tern):
    t = start_tern()
    msg = make_message(subject="one octet at a time", body=body_lines(13_000), to=RCPT)
    assert len(msg) > 1_000_000
    with t.connect(timeout=120) as c:
        c.greeting()
        c.ehlo()
        replies = send_chunked(c, msg, [1] * (len(msg) - 1))  # and "BDAT 1 LAST"
        assert len(replies) == 2 + len(msg)
        bad = [(i, r.code, r.lines) for i, r in enumerate(replies) if r.code != 250]
        assert not bad, f"{len(bad)} chunks refused, the first: {bad[:3]}"
        t.assert_queued(queue_id_of(replies[-1]), msg, sender=SENDER, rcpts=[RCPT])


def test_refusals_keep_the_session_in_step(start_tern):
    t = start_tern(server={"max_message_size": 20000})
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        # BDAT without MAIL: 503, and its octets are read, not taken for commands.
        c.send(b"BDAT 6\r\nQUIT\r\n")
        assert_reply(c.read_reply(), 503, "5.5.1")
        assert_reply(c.cmd("NOOP"), 250)
        # DATA and RCPT after a chunk: 503; the message goes on.
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        c.send(b"BDAT 4\r\nab\r\n")
        assert_reply(c.read_reply(), 250, "2.0.0")
        assert_reply(c.cmd("DATA"), 503, "5.5.1")
        assert_reply(c.cmd("RCPT TO:<other@x.test>"), 503, "5.5.1")
        c.send(b"BDAT 4 LAST\r\ncd\r\n")
        qid = queue_id_of(assert_reply(c.read_reply(), 250, "2.0.0"))
        t.assert_queued(qid, b"ab\r\ncd\r\n", sender=SENDER, rcpts=[RCPT])
        # Past max_message_size: 552 once that chunk is read; the chunks pipelined behind it get 503.
        big = b"x" * 998 + b"\r\n"
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode()
               + b"BDAT 15000\r\n" + big * 15 + b"BDAT 15000\r\n" + big * 15 + b"BDAT 10 LAST\r\n" + b"0123456789")
        codes = [c.read_reply().code for _ in range(5)]
        assert codes == [250, 250, 250, 552, 503], codes
        # A bare LF in a chunk: 554 at its end.
        c.send(f"RSET\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode() + b"BDAT 8 LAST\r\nbare\nx\r\n")
        codes = [c.read_reply() for _ in range(4)]
        assert [r.code for r in codes] == [250, 250, 250, 554] and codes[-1].lines[-1].startswith("5.6.0"), codes
        # A BDAT whose size cannot be read: nothing tells where its octets end, so the session ends.
        c.send(b"BDAT lots\r\n")
        assert_reply(c.read_reply(), 501, "5.5.4")
        assert c.wait_closed()
    assert len(t.queued()) == 1, t.queue_files()


def test_client_gone_mid_chunk_queues_nothing(start_tern):
    t = start_tern()
    msg = tricky_message()
    before = t.stderr().count(", 0 queued")
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode() + b"BDAT 1000\r\n" + msg[:1000]
               + b"BDAT %d LAST\r\n" % (len(msg) - 1000) + msg[1000:5000])
        for _ in range(3):
            assert_reply(c.read_reply(), 250)
    # Gone between chunks, too.
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode() + b"BDAT 1000\r\n" + msg[:1000])
        for _ in range(3):
            assert_reply(c.read_reply(), 250)
    wait_until(lambda: t.stderr().count(", 0 queued") >= before + 2, 10,
               "both sessions logged as ended with nothing queued", on_timeout=lambda: t.stderr()[-3000:])
    assert t.queued() == [], t.queue_files()
    # The server takes the next message as usual.
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        replies = send_chunked(c, msg, [4000])
        t.assert_queued(queue_id_of(replies[-1]), msg, sender=SENDER, rcpts=[RCPT])
    assert len(t.queued()) == 1


def test_kill9_after_the_250_keeps_the_message(start_tern):
    t = start_tern()
    msg = tricky_message(2000)
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        replies = send_chunked(c, msg, [70_000, 1, 9_999])
        qid = queue_id_of(assert_reply(replies[-1], 250, "2.0.0"))
        t.kill(signal.SIGKILL)
    t.start()
    t.wait_recovered()
    t.assert_queued(qid, msg, sender=SENDER, rcpts=[RCPT])


# --------------------------------------------------------------------------------------------
# Out: to Postfix's smtpd, which relays on to aiosmtpd


@pytest.fixture
def postfix_chain():
    """A Postfix smtpd on 127.0.0.31 relaying everything to an aiosmtpd NextHop on 127.0.0.32."""
    with postfix_relaying_to_hop("127.0.0.31", "127.0.0.32") as chain:
        yield chain


def relay_to(start_tern, pf: PostfixHop, chunking: bool):
    return start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s",
                                "chunking": chunking},
                      extra_tables={"routes": {"x.test": f"[{pf.host}]:{pf.port}"},
                                    "dns": {"servers": ["127.0.0.1:9"]}})


def check_relayed(hop: NextHop, sent: dict[str, bytes]) -> None:
    got = hop.wait_for(len(sent), timeout=60)
    by_rcpt = {tx.rcpts[0]: tx for tx in got}
    assert sorted(by_rcpt) == sorted(sent)
    for rcpt, msg in sent.items():
        content = by_rcpt[rcpt].content
        # Postfix's Received header, then tern's, then the message as it was sent.
        postfix_received, rest = split_received(content)
        assert b"postfix-hop.test" in postfix_received, postfix_received[:300]
        tern_received, rest = split_received(rest)
        assert rest == msg, f"{rcpt}: {len(msg)} bytes sent, {len(rest)} arrived after two Received headers"


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_relay_to_postfix(start_tern, postfix_chain, chunking):
    pf, hop = postfix_chain
    t = relay_to(start_tern, pf, chunking)
    sent = {}
    for i, body in enumerate([tricky_message(4000), make_message(subject="small", to="small@x.test",
                                                                  body=b".\r\nHi\r\n"),
                              make_message(subject="empty body", to="empty@x.test", body=b"")]):
        rcpt = f"r{i}@x.test"
        with t.connect() as c:
            c.greeting()
            c.ehlo()
            assert_reply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
            assert_reply(c.cmd(f"RCPT TO:<{rcpt}>"), 250)
            assert_reply(c.data(body), 250)
        sent[rcpt] = body
    check_relayed(hop, sent)
    verb = "bdat=" if chunking else "data="

    def messages_by_verb() -> int:
        # Postfix logs a session's counts when it ends (tern's cached connection ends a little later).
        return sum(int(s.split(verb)[1].split()[0].split("/")[0]) for s in pf.disconnects() if verb in s)
    wait_until(lambda: messages_by_verb() == 3, 30, f"three messages sent with {verb} at Postfix",
               on_timeout=lambda: pf.disconnects())
    assert all(verb in s for s in pf.disconnects()), pf.disconnects()
    wait_until(lambda: t.queued() == [], 30, "the spool to empty")


def test_blast_bdat_into_postfix(postfix_chain):
    pf, hop = postfix_chain
    out = subprocess.run([str(TERN_BIN), "blast", "--server", f"{pf.host}:{pf.port}", "--messages", "40",
                          "--concurrency", "4", "--messages-per-connection", "10", "--size", "3k-9k",
                          "--to", "rcpt{n}@x.test", "--bdat", "--chunk-size", "1000", "--json", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["settings"]["bdat"] is True and report["settings"]["chunk_size"] == 1000
    assert report["messages"]["accepted"] == 40, report["messages"]
    # Chunks before the last are answered 250 and counted under DATA; the LAST ones under DATA end.
    assert report["replies"]["data"]["2xx"] >= 40 * 2, report["replies"]
    assert report["replies"]["data_end"]["2xx"] == 40
    sessions = pf.wait_disconnects(4)
    assert sum(int(s.split("bdat=")[1].split()[0]) for s in sessions) == report["replies"]["data"]["2xx"] + 40
    got = hop.wait_for(40, timeout=60)
    # Postfix adds Date and Message-Id to blast's header block; the bodies are as blast sent them.
    header = b"From: <blast@tern.test>\r\nTo: <sink@tern.test>\r\nSubject: tern blast\r\n\r\n"
    bodies = [tx.content.split(b"\r\n\r\n", 1)[1] for tx in got]
    assert sum(len(b) for b in bodies) == report["bytes_accepted"] - 40 * len(header)
    assert all(b.startswith(b"line 000000 ") for b in bodies)
