"""Durability: a message acknowledged with 250 survives SIGKILL byte for byte; half-written files do not
survive a restart."""

import random

from conftest import MailLoad, make_message, split_received

THREADS = 20
PER_THREAD = 25
KILL_AFTER = 150  # acknowledged messages before SIGKILL (of THREADS * PER_THREAD)


def random_body(rng: random.Random, tag: str) -> bytes:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,-"
    lines = [f"unique body {tag}"]
    for _ in range(rng.randint(1, 600)):
        line = "".join(rng.choices(alphabet, k=rng.randint(0, 76)))
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode()


def crash_message(n: int, i: int, rng: random.Random) -> tuple[str, str, bytes]:
    """(Message-Id, recipient, message): a body of random length, its Message-Id unique."""
    msgid = f"<crash-{n}-{i}-{rng.getrandbits(64):016x}@client.test>"
    rcpt = f"r{n}-{i}@x.test"
    return msgid, rcpt, make_message(subject=f"crash {n}/{i}", msgid=msgid, to=rcpt, body=random_body(rng, msgid))


def test_sigkill_loses_no_acknowledged_message(start_tern):
    t = start_tern(server={"max_connections": 200, "max_connections_per_ip": 200})
    load = MailLoad(t.port, THREADS, PER_THREAD, crash_message, conn_timeout=30).run(until_acked=KILL_AFTER, timeout=120)
    alive_at_kill = load.kill(t)
    load.join(60)
    assert not load.alive(), "client threads hung after SIGKILL"
    assert not load.errors, "errors before the kill:\n" + "\n".join(load.errors)
    sent, acked = load.sent, load.acked  # Message-Id -> (message, recipient); queue id -> Message-Id
    assert len(acked) >= min(KILL_AFTER, 50), f"only {len(acked)} messages acknowledged before the kill"
    assert len(set(acked.values())) == len(acked), "one message acknowledged under two ids"
    assert alive_at_kill > 0, f"all {len(acked)} messages were done before the kill: nothing was in flight"
    print(f"SIGKILL with {alive_at_kill} clients mid-transaction, {len(acked)} of {len(sent)} acknowledged")

    # What a crash in the middle of a commit would leave: a message file with no envelope.
    orphan = t.queue_path("0000000000ABCD.msg")
    orphan.write_bytes(b"Subject: half written\r\n\r\ntrunc")

    t.start()

    # After restart: no .msg without .env (nor the reverse), once recovery is done.
    t.wait_recovered()
    names = set(t.queue_files())
    msgs = {n[:-4] for n in names if n.endswith(".msg")}
    envs = {n[:-4] for n in names if n.endswith(".env")}
    assert msgs == envs, f".msg without .env: {sorted(msgs - envs)}; .env without .msg: {sorted(envs - msgs)}"
    assert not orphan.exists(), "orphan .msg without .env survived the restart"

    # Every acknowledged message is there, byte for byte.
    missing = [qid for qid in acked if qid not in msgs]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost: {missing[:10]}"
    for qid, msgid in acked.items():
        msg, rcpt = sent[msgid]
        header, rest = split_received(t.msg(qid))
        assert rest == msg, f"{qid} ({msgid}) differs from what was sent"
        env = t.env(qid)
        assert env.fields["id"] == qid
        assert env.recipients == [rcpt]

    # Messages that were in flight at the kill: if they are queued at all, they are whole.
    by_msgid = {}
    for qid in msgs:
        body = split_received(t.msg(qid))[1]
        env = t.env(qid)
        for line in body.split(b"\r\n"):
            if line.lower().startswith(b"message-id: "):
                by_msgid[line[12:].decode()] = (qid, body)
                break
            if line == b"":
                break
    for msgid, (qid, body) in by_msgid.items():
        if msgid in sent:
            assert body == sent[msgid][0], f"unacknowledged but queued {qid} ({msgid}) is not intact"

    # And the restarted server takes mail.
    msg = make_message(subject="after restart")
    qid = t.send("s@client.test", ["r@x.test"], msg)
    t.assert_queued(qid, msg, sender="s@client.test", rcpts=["r@x.test"])
    assert qid not in acked
