"""Delivered messages leave the spool in batches (SpoolRemover): many sessions' worth of mail, journaled
and in files of its own, is delivered, each message is logged "removed" once, the spool is empty, and a
SIGKILL right after that brings nothing back: the done records of the batches reached the journal."""

from __future__ import annotations

import json
import re
import subprocess
import threading

import pytest

from conftest import TERN_BIN, SMTPConn, assert_reply, make_message, queue_id_of, read_journal, wait_until
from delivery_helpers import NextHop, free_port_on

HOP_IP = "127.0.0.23"
SESSIONS = 8
PER_SESSION = 12
LARGE_EVERY = 6  # every sixth message is larger than the writer's spill threshold: files of its own
LARGE_SIZE = 300 * 1024


@pytest.fixture
def hop():
    h = NextHop(HOP_IP, free_port_on([HOP_IP])).start()
    yield h
    h.stop()


def body(n: int, i: int) -> bytes:
    if (n * PER_SESSION + i) % LARGE_EVERY == 0:
        line = f"large {n}/{i} " + "x" * 60 + "\r\n"
        return (line * (LARGE_SIZE // len(line) + 1)).encode()
    return f"small {n}/{i}\r\n".encode()


def test_delivered_mail_leaves_the_spool_and_stays_gone_after_sigkill(start_tern, hop):
    tern = start_tern(delivery={"enabled": True, "retry_schedule": ["1h"]},
                      extra_tables={"routes": {"*": f"[{HOP_IP}]:{hop.port}"}})
    lock = threading.Lock()
    ids: list[str] = []
    errors: list[str] = []

    def session(n: int) -> None:
        try:
            with SMTPConn(tern.port, timeout=30) as c:
                c.greeting()
                c.ehlo(f"client{n}.test")
                for i in range(PER_SESSION):
                    msg = make_message(subject=f"batch {n}/{i}", to=f"r{n}-{i}@dest.test", body=body(n, i))
                    assert_reply(c.cmd(f"MAIL FROM:<s{n}@client.test>"), 250, "2.1.0")
                    assert_reply(c.cmd(f"RCPT TO:<r{n}-{i}@dest.test>"), 250, "2.1.5")
                    qid = queue_id_of(assert_reply(c.data(msg), 250, "2.0.0"))
                    with lock:
                        ids.append(qid)
                c.cmd("QUIT")
        except (OSError, EOFError, AssertionError) as e:
            with lock:
                errors.append(f"session {n}: {e!r}")

    threads = [threading.Thread(target=session, args=(n,), daemon=True) for n in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    total = SESSIONS * PER_SESSION
    assert len(set(ids)) == total

    hop.wait_for(total, timeout=60, on_timeout=lambda: tern.stderr()[-4000:])

    def removed() -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in re.finditer(r"([0-9A-F]{14}): removed$", tern.stderr(), re.M):
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        return counts

    wait_until(lambda: set(removed()) >= set(ids), 30, "every delivered message removed",
               lambda: tern.stderr()[-4000:])
    assert all(removed()[qid] == 1 for qid in ids), "a message was logged removed more than once"
    assert tern.queue_files() == [], "delivered messages left in the spool"
    assert read_journal(tern.spool) == {}
    p = subprocess.run([str(TERN_BIN), "queue", "list", "--json", "--config", str(tern.config_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["count"] == 0

    # Done records are not fsynced, but they were written before "removed" was logged: a killed
    # process (not a crashed machine) keeps them, and the restart delivers nothing again.
    tern.kill()
    tern.start()
    # The spool loaded and the queue empty: nothing was read back to deliver (or, if something was,
    # it has been delivered and the count below shows it).
    tern.wait_recovered()
    assert tern.metric("tern_queue_messages") == 0, "messages read back from the journal after a restart"
    assert len(hop.received()) == total, "mail delivered again after a restart"
    assert tern.queue_files() == []
    after = tern.stderr().split("----- restart #1 -----", 1)[1]
    assert "to=<" not in after, after[-4000:]
