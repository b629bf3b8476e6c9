"""The intake journal under concurrent sessions: batches of many small and a few large messages, each
record written from its pieces (header, envelope, the message as the session received it), read back
byte for byte by conftest.read_journal (zlib.crc32) and by Tern after a restart. Messages larger than
a DATA chunk take the other paths (joined chunks, or files of their own) and must come out the same."""

import random
import threading
import time

from conftest import (SMTPConn, assert_reply, dot_stuff, make_message, queue_id_of, read_journal,
                      split_received)

THREADS = 20
SMALL_PER_THREAD = 12
# Sizes around the session's 252 KiB chunk and the writer's 256 KiB spill threshold.
LARGE_SIZES = [100 * 1024, 200 * 1024, 251 * 1024, 255 * 1024, 300 * 1024, 1024 * 1024]


def body_of(rng: random.Random, size: int, tag: str) -> bytes:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,-"
    lines = [f"body {tag}"]
    total = 0
    while total < size:
        line = ("." if rng.random() < 0.05 else "") + "".join(rng.choices(alphabet, k=rng.randint(0, 76)))
        lines.append(line)
        total += len(line) + 2
    return ("\r\n".join(lines) + "\r\n").encode()


def test_concurrent_small_and_large_messages_read_back_byte_for_byte(start_tern):
    t = start_tern(server={"max_connections": 100, "max_connections_per_ip": 100})
    lock = threading.Lock()
    sent: dict[str, tuple[bytes, str, str, str]] = {}  # queue id -> (message, helo, sender, recipient)
    errors: list[str] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        sizes = [rng.randint(200, 4000) for _ in range(SMALL_PER_THREAD)]
        if n < len(LARGE_SIZES):
            sizes.insert(rng.randint(0, len(sizes)), LARGE_SIZES[n])
        try:
            with SMTPConn(t.port, timeout=60) as c:
                c.greeting()
                c.ehlo(f"client{n}.test")
                for i, size in enumerate(sizes):
                    sender, rcpt = f"s{n}@client.test", f"r{n}-{i}@x.test"
                    msg = make_message(subject=f"batch {n}/{i}", to=rcpt, body=body_of(rng, size, f"{n}/{i}"))
                    assert_reply(c.cmd(f"MAIL FROM:<{sender}>"), 250, "2.1.0")
                    assert_reply(c.cmd(f"RCPT TO:<{rcpt}>"), 250, "2.1.5")
                    qid = queue_id_of(assert_reply(c.data(msg), 250, "2.0.0"))
                    with lock:
                        sent[qid] = (msg, f"client{n}.test", sender, rcpt)
                c.cmd("QUIT")
        except (OSError, EOFError, AssertionError) as e:
            with lock:
                errors.append(f"thread {n}: {e!r}")

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    assert len(sent) == THREADS * SMALL_PER_THREAD + len(LARGE_SIZES)

    def check() -> None:
        journal = read_journal(t.spool)
        for qid, (msg, helo, sender, rcpt) in sent.items():
            t.assert_queued(qid, msg, helo=helo, sender=sender, rcpts=[rcpt])
            # Whole in memory (under the writer's 256 KiB with the Received header): journaled.
            # Larger: in files of its own, written while it arrived.
            spooled = len(split_received(t.msg(qid))[0]) + len(msg)
            assert (qid in journal) == (spooled < 256 * 1024), (qid, spooled)

    check()
    # Tern's own reading of the records, after a restart: every message is still queued, unchanged.
    t.stop()
    t.start()
    assert set(t.queued()) == set(sent)
    check()


def test_message_sent_before_the_354_keeps_its_received_header(tern):
    """A client that sends the message in the same write as DATA: the data is decoded before the
    relay makes the Received header, which then travels as its own piece in front."""
    msg = make_message(subject="eager", body=b"no wait for the 354\r\n" * 50)
    with SMTPConn(tern.port) as c:
        c.greeting()
        c.ehlo()
        c.send(b"MAIL FROM:<eager@client.test>\r\nRCPT TO:<r@x.test>\r\nDATA\r\n" + dot_stuff(msg) + b".\r\n")
        assert_reply(c.read_reply(), 250, "2.1.0")
        assert_reply(c.read_reply(), 250, "2.1.5")
        assert_reply(c.read_reply(), 354)
        qid = queue_id_of(assert_reply(c.read_reply(), 250, "2.0.0"))
        c.cmd("QUIT")
    tern.assert_queued(qid, msg, sender="eager@client.test", rcpts=["r@x.test"])
    assert qid in read_journal(tern.spool)
