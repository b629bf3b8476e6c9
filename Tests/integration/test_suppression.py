"""The suppression list (issue 19): a hard bounce of a class in [suppression] auto_classes puts its
recipient on the list (spool/suppression.list); the next RCPT to it is refused with 550 5.1.1, in any
case of the address, while others are accepted; the list survives a restart and a SIGKILL; a 4xx or a
class not listed suppresses nothing; a line cut short by a crash is dropped at start-up."""

from __future__ import annotations

import signal

from conftest import SMTPConn, assert_reply, wait_until
from delivery_helpers import log_entries
from test_delivery import (DNS_RECORDS, HOP_ADDRESSES, SINK_IP, WAIT, diagnostics, dns, hop_port, hops,  # noqa: F401
                           relay, send)


def rcpt_replies(tern, sender: str, rcpts: list[str]) -> list:
    with SMTPConn(tern.port) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd(f"MAIL FROM:<{sender}>"), 250)
        return [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]


def test_a_hard_bounce_suppresses_its_recipient_across_restarts(relay, hops):
    hop = hops("127.0.0.11", rcpt_replies={
        "gone@five.test": "550 5.1.1 <gone@five.test>: Recipient address rejected",
        "full@five.test": "452 4.2.2 The email account that you tried to reach is over quota",
        "spam@five.test": "550 5.7.1 Service unavailable, Client host blocked using Spamhaus"})
    sink = hops(SINK_IP)
    tern = relay()
    qid, _ = send(tern, ["gone@five.test", "full@five.test", "spam@five.test", "here@five.test"], subject="first")
    line = tern.wait_log("<gone@five.test> suppressed: InvalidRecipient 5.1.1")
    assert qid in line
    wait_until(lambda: log_entries(tern.stderr(), qid, "deferred", "full@five.test"), WAIT, "full@ deferred",
               lambda: diagnostics(tern, hop, sink))
    wait_until(lambda: log_entries(tern.stderr(), qid, "bounced", "spam@five.test"), WAIT, "spam@ bounced")
    # Only the InvalidRecipient one: a 4xx and a SpamBlock (not in auto_classes) suppress nothing.
    assert tern.stderr().count(" suppressed: ") == 1
    replies = rcpt_replies(tern, "other@sender.test", ["GONE@five.test", "full@five.test", "spam@five.test",
                                                      "here@five.test"])
    assert [r.code for r in replies] == [550, 250, 250, 250], replies
    assert replies[0].is_(550, "5.1.1") and "suppressed" in replies[0].lines[-1]
    assert "+\t\tgone@five.test\t" in (tern.spool / "suppression.list").read_text()

    tern.stop()
    tern.start()
    assert [r.code for r in rcpt_replies(tern, "x@sender.test", ["gone@five.test", "here@five.test"])] == [550, 250]
    # SIGKILL: the entry was synced before; it is still there.
    tern.kill(signal.SIGKILL)
    tern.start()
    assert rcpt_replies(tern, "x@sender.test", ["gone@five.test"])[0].code == 550


def test_a_line_cut_short_by_a_crash_is_dropped(relay, hops):
    tern = relay()
    tern.stop()
    (tern.spool / "suppression.list").write_text(
        "+\t\tlisted@five.test\t1765000000\tmanual\tby hand\n"
        "+\t\t@closed.test\t1765000000\tmanual\twhole domain\n"
        "+\t\thalf@five.test\t17650")
    tern.start()
    replies = rcpt_replies(tern, "x@sender.test", ["listed@five.test", "anyone@closed.test", "half@five.test"])
    assert [r.code for r in replies] == [550, 550, 250], replies
    # The file was rewritten without the cut-short line.
    assert "half@" not in (tern.spool / "suppression.list").read_text()
    assert "suppression: 2 entries" in tern.stderr()
