"""Message events as JSON Lines ([events] file, issue 19): reception per recipient, delivery,
transient_failure, bounce (with bounce_class), rejection at RCPT, suppression and the postmaster's
actions; every line is JSON; SIGUSR1 reopens the file after logrotate moved it."""

from __future__ import annotations

import json
import signal

from conftest import SMTPConn, assert_reply, wait_until
from delivery_helpers import log_entries
from test_delivery import (DNS_RECORDS, HOP_ADDRESSES, SINK_IP, WAIT, diagnostics, dns, hop_port, hops,  # noqa: F401
                           relay, send)


def events(path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    # Only whole lines: the last one may be half written.
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def test_every_recipient_has_its_events(relay, hops, tmp_path):
    hop = hops("127.0.0.11", rcpt_replies={
        "gone@five.test": "550 5.1.1 <gone@five.test>: Recipient address rejected",
        "later@five.test": "451 4.3.0 try again later"})
    sink = hops(SINK_IP)
    path = tmp_path / "events.jsonl"
    # Retried in an hour: one transient_failure event, however slow the steps below are.
    tern = relay(events={"file": str(path)}, delivery={"retry_schedule": ["1h"]})
    qid, _ = send(tern, ["ok@five.test", "gone@five.test", "later@five.test"], subject="events")
    wait_until(lambda: log_entries(tern.stderr(), qid, "deferred", "later@five.test"), WAIT, "later@ deferred",
               lambda: diagnostics(tern, hop, sink))
    wait_until(lambda: any(e["type"] == "suppression" for e in events(path)), WAIT, "the suppression event")
    # A RCPT refused: the address the bounce suppressed.
    with SMTPConn(tern.port) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<x@sender.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<gone@five.test>"), 550, "5.1.1")
    # The postmaster holds the deferred message.
    status, _ = tern.admin_get(f"/queue/{qid}/hold", method="POST")
    assert status in (200, 202)
    wait_until(lambda: any(e["type"] == "rejection" for e in events(path)), WAIT, "the rejection event")
    wait_until(lambda: any(e["type"] == "admin" for e in events(path)), WAIT, "the admin event")

    got = [e for e in events(path) if e.get("queue_id") == qid]
    by_type = {}
    for e in got:
        by_type.setdefault(e["type"], []).append(e)
    assert sorted(e["recipient"] for e in by_type["reception"]) == ["gone@five.test", "later@five.test", "ok@five.test"]
    reception = by_type["reception"][0]
    assert reception["sender"] == "sender@sender.test" and reception["client"] == "127.0.0.1" and reception["size"] > 0
    (delivery,) = by_type["delivery"]
    assert delivery["recipient"] == "ok@five.test" and delivery["dsn"] == "2.0.0" and delivery["attempt"] == 1
    # The message's own Message-ID, as make_message wrote it, on every event of the message.
    message_ids = {e.get("message_id") for e in got if e["type"] in ("reception", "delivery", "bounce", "transient_failure")}
    assert len(message_ids) == 1 and next(iter(message_ids)).endswith("@client.test>"), message_ids
    assert delivery["destination"] == "five.test" and delivery["next_hop"].startswith("mx.five.test[127.0.0.11]")
    assert "bounce_class" not in delivery
    (bounce,) = by_type["bounce"]
    assert bounce["recipient"] == "gone@five.test" and bounce["dsn"] == "5.1.1"
    assert bounce["bounce_class"] == "InvalidRecipient" and bounce["reply"].startswith("550 5.1.1")
    (transient,) = by_type["transient_failure"]
    assert transient["recipient"] == "later@five.test" and transient["bounce_class"] == "TransientFailure"
    (suppressed,) = by_type["suppression"]
    assert suppressed["recipient"] == "gone@five.test" and suppressed["source"] == "bounce"
    # Reception comes before the results of the same recipient.
    order = [e["type"] for e in got if e.get("recipient") == "gone@five.test"]
    assert order[0] == "reception" and order.index("bounce") < order.index("suppression"), order
    (admin,) = by_type["admin"]
    assert admin["action"] == "hold"
    (rejection,) = [e for e in events(path) if e["type"] == "rejection"]
    assert rejection["recipient"] == "gone@five.test" and rejection["reason"] == "suppressed"
    assert rejection["sender"] == "x@sender.test" and rejection["reply"].startswith("550 5.1.1")

    # logrotate: the file moved, SIGUSR1, and the next events go to a new file by the old name.
    rotated = tmp_path / "events.jsonl.1"
    # The bounce notice for gone@ is delivered to the sink with an event of its own: let it be written
    # before the file moves.
    wait_until(lambda: any(e["type"] == "delivery" and e["recipient"] == "sender@sender.test" for e in events(path)),
               WAIT, "the bounce notice's delivery event", lambda: diagnostics(tern, hop, sink))
    before = len(events(path))
    path.rename(rotated)
    tern.proc.send_signal(signal.SIGUSR1)
    tern.wait_log("SIGUSR1: reopening the events file")
    later, _ = send(tern, ["ok@five.test"], subject="after rotation")
    wait_until(lambda: ("delivery", later) in [(e["type"], e.get("queue_id")) for e in events(path)], WAIT,
               "the later message's delivery event in the new file")
    assert [(e["type"], e["queue_id"]) for e in events(path)] == [("reception", later), ("delivery", later)]
    assert len(events(rotated)) == before  # nothing more went to the moved file after the reopen
