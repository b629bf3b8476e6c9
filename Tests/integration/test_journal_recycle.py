"""Journal segments are recycled (README "Spool format"): a retired segment is kept as a spare
`<N>.free` and becomes a later segment, written over from its start with its old records behind the
new ones. Through `tern serve` with its default 32 MiB segments: enough mail is relayed that segments
retire and spares are kept; a restart starts its segment from a spare; then Tern is killed with
SIGKILL in the middle of a load and restarted. Every message that got 250 is delivered, and nothing
of a spare's previous life is read again (no message of the first load is delivered twice; neither
Tern nor conftest.read_journal finds one in the journal)."""

from __future__ import annotations

import os
import threading

from aiosmtpd.controller import Controller

from conftest import MailLoad, free_port, make_message, read_journal, wait_until

SIZE = 100 * 1024
THREADS = 10
FIRST_LOAD = 70    # per thread: 700 messages, about 72 MB, past two 32 MiB segments
SECOND_LOAD = 40   # per thread, of which KILL_AFTER are acknowledged before SIGKILL
KILL_AFTER = 150
HOP = "127.0.0.2"
FILLER = b"".join(b"%05d recycled journal segment filler 0123456789abcdefghijklmnopqrstuvwxyz\r\n" % n
                  for n in range(SIZE // 80))


class SubjectSink:
    """A next hop that keeps only the Subject of what it accepts (the messages are 100 KiB each)."""

    def __init__(self, port: int):
        self.port = port
        self.lock = threading.Lock()
        self.subjects: list[str] = []
        self.controller = Controller(self, hostname=HOP, port=port, ready_timeout=10)

    async def handle_DATA(self, server, session, envelope):
        head = bytes(envelope.content).split(b"\r\n\r\n", 1)[0]
        subject = next((line[9:].decode() for line in head.split(b"\r\n") if line.startswith(b"Subject: ")), "?")
        with self.lock:
            self.subjects.append(subject)
        return "250 2.0.0 Ok"

    def got(self) -> list[str]:
        with self.lock:
            return list(self.subjects)


def load(t, tag: str, per_thread: int, stop_after: int | None = None) -> MailLoad:
    """THREADS x per_thread messages of 100 KiB, tagged by their Subject; with stop_after, returns as
    soon as that many are acknowledged, the sessions still running."""

    def message(n: int, i: int, _rng) -> tuple[str, str, bytes]:
        subject = f"{tag} {n}/{i}"
        return subject, f"r{n}@far.test", make_message(subject=subject, to=f"r{n}@far.test",
                                                       body=b"%s\r\n" % subject.encode() + FILLER)

    run = MailLoad(t.port, THREADS, per_thread, message).run(until_acked=stop_after)
    assert not run.errors, "\n".join(run.errors)
    return run


def wait_delivered(sink: SubjectSink, subjects, what: str, timeout: float = 180) -> None:
    wait_until(lambda: not set(subjects) - set(sink.got()), timeout,
               f"{what}: every message delivered",
               lambda: f"e.g. {sorted(set(subjects) - set(sink.got()))[:5]} not delivered")


def journal_names(t, suffix: str) -> list[str]:
    return sorted(p.name for p in (t.spool / "journal").glob(f"*{suffix}"))


def test_recycled_segments_lose_nothing_acknowledged_and_replay_nothing_stale(start_tern):
    sink = SubjectSink(free_port(HOP))
    sink.controller.start()
    try:
        t = start_tern(server={"max_connections": 100, "max_connections_per_ip": 100},
                       delivery={"enabled": True},
                       extra_tables={"dns": {"servers": [f"127.0.0.1:{free_port()}"]},  # never asked
                                     "routes": {"*": f"[{HOP}]:{sink.port}"}})
        first = load(t, "first", FIRST_LOAD).acked_now()
        assert len(first) == THREADS * FIRST_LOAD
        wait_delivered(sink, first.values(), "first load")
        # Every message done: the retired segments are kept as spares (one of them may have become the
        # third segment meanwhile).
        wait_until(lambda: len(journal_names(t, ".jnl")) == 1, 30, "one segment left")
        spares = journal_names(t, ".free")
        last = journal_names(t, ".jnl")
        assert len(last) == 1 and last[0] >= "0000000000000003.jnl", f"segments after {len(first)} messages: {last}"
        assert 1 <= len(spares) <= 2, f"spares after {len(first)} messages: {spares}"
        files = {os.stat(p).st_ino for p in (t.spool / "journal").iterdir()}
        # Done records are written without a sync, a few ms after delivery: wait for the last ones, so
        # that none is lost at the restart (which would deliver a message again, allowed but not here).
        wait_until(lambda: read_journal(t.spool) == {}, 30, "no message of the first load live in the journal")

        # A restart retires the last segment and starts the new one from a spare: the file holds the
        # first load's records from here on.
        t.stop()
        t.start()
        current = journal_names(t, ".jnl")
        assert current == [f"{int(last[0][:16], 16) + 1:016X}.jnl"], f"segments after the restart: {current}"
        assert os.stat(t.spool / "journal" / current[0]).st_ino in files, "the new segment is a new file"
        assert len(journal_names(t, ".free")) <= 2
        assert read_journal(t.spool) == {}, "records of a spare's previous life read as live"

        running = load(t, "second", SECOND_LOAD, stop_after=KILL_AFTER)
        second = running.acked_now()
        running.kill(t)
        assert len(second) >= KILL_AFTER

        # What the journal holds after the kill, read without Tern: every acknowledged message that was
        # not delivered yet, and nothing of the first load.
        delivered = set(sink.got())
        journaled = read_journal(t.spool)
        assert not set(journaled) & set(first), "a message of the first load is live in the journal again"
        for qid, subject in second.items():
            if subject not in delivered:
                env = t.spool / "queue" / qid[-1] / f"{qid}.env"
                assert qid in journaled or env.exists(), f"acknowledged {qid} ({subject}) is in neither journal nor queue"

        t.start()
        wait_delivered(sink, second.values(), "acknowledged before the kill")
        got = sink.got()
        twice = [s for s in first.values() if got.count(s) != 1]
        assert not twice, f"{len(twice)} messages of the first load delivered again, e.g. {twice[:5]}"
        assert len(journal_names(t, ".free")) <= 2
    finally:
        sink.controller.stop()
