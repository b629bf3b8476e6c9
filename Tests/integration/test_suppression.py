"""The suppression list (issue 19): a hard bounce of a class in [suppression] auto_classes puts its
recipient on the list (spool/suppression.list); the next RCPT to it is refused with 550 5.1.1, in any
case of the address, while others are accepted; the list survives a restart and a SIGKILL; a 4xx or a
class not listed suppresses nothing; a line cut short by a crash is dropped at start-up."""

from __future__ import annotations

import json
import signal
import subprocess

from conftest import TERN_BIN, SMTPConn, assert_reply, wait_until
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
    # The entry is in memory at once and appended to the file on the thread pool.
    listed = tern.spool / "suppression.list"
    wait_until(lambda: listed.exists() and "+\t\tgone@five.test\t" in listed.read_text(), WAIT,
               "the entry in suppression.list")

    tern.stop()
    tern.start()
    assert [r.code for r in rcpt_replies(tern, "x@sender.test", ["gone@five.test", "here@five.test"])] == [550, 250]
    # SIGKILL: the entry was synced before; it is still there.
    tern.kill(signal.SIGKILL)
    tern.start()
    assert rcpt_replies(tern, "x@sender.test", ["gone@five.test"])[0].code == 550


def test_a_refused_message_suppresses_none_of_its_recipients(relay, hops):
    """The end of data refused for the sender's sake (the reply reads like a recipient's, "address
    rejected"): the recipients bounce, but it was not their failure, so none is suppressed."""
    hop = hops("127.0.0.11", fail_first=1,
               fail_reply="554 5.7.1 <sender@sender.test>: Sender address rejected: Access denied")
    sink = hops(SINK_IP)
    tern = relay()
    qid, _ = send(tern, ["a@five.test", "b@five.test"], subject="sender refused")
    wait_until(lambda: log_entries(tern.stderr(), qid, "bounced", "b@five.test"), WAIT, "b@ bounced",
               lambda: diagnostics(tern, hop, sink))
    assert "bounce_class=InvalidRecipient" in tern.stderr()  # classed as the text reads...
    assert " suppressed: " not in tern.stderr()               # ...but not the recipients' own failure
    assert [r.code for r in rcpt_replies(tern, "x@sender.test", ["a@five.test", "b@five.test"])] == [250, 250]


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


def suppress(tern, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TERN_BIN, "suppress", *args, "--admin", f"127.0.0.1:{tern.admin_port}"],
                          input=stdin, capture_output=True, timeout=120)


def test_the_postmaster_adds_lists_removes_imports_and_exports(relay, hops, tmp_path):
    tern = relay()
    ok = suppress(tern, "add", "Someone@Five.test", "--reason", "asked to stop")
    assert ok.returncode == 0 and b"someone@five.test suppressed" in ok.stdout, ok
    assert suppress(tern, "add", "@closed.test").returncode == 0
    assert suppress(tern, "add", "news@five.test", "--scope", "news.sender.test").returncode == 0
    replies = rcpt_replies(tern, "x@news.sender.test", ["someone@five.test", "a@closed.test", "news@five.test",
                                                       "other@five.test"])
    assert [r.code for r in replies] == [550, 550, 550, 250], replies
    assert rcpt_replies(tern, "x@other.test", ["news@five.test"])[0].code == 250  # only for news.sender.test
    listed = suppress(tern, "list").stdout.decode()
    assert "someone@five.test  *  " in listed and "manual  asked to stop" in listed, listed
    assert "news@five.test  news.sender.test" in listed
    one = suppress(tern, "list", "someone@five.test", "--json")
    assert json.loads(one.stdout)["reason"] == "asked to stop"
    assert "suppression: <someone@five.test> added by the postmaster: asked to stop" in tern.stderr()
    # Bad input gets a clear answer naming the field; nothing is added.
    bad = suppress(tern, "add", "not an address")
    assert bad.returncode == 1 and b"address:" in bad.stderr, bad
    bad = suppress(tern, "add", "a@five.test", "--reason", "two\nlines")
    assert bad.returncode == 1 and b"reason:" in bad.stderr, bad
    missing = suppress(tern, "remove", "nobody@five.test")
    assert missing.returncode == 1 and b"not suppressed" in missing.stderr
    assert suppress(tern, "remove", "someone@five.test").returncode == 0
    assert rcpt_replies(tern, "x@other.test", ["someone@five.test"])[0].code == 250

    # An import of a million addresses (and a few bad lines), in pieces under the body limit.
    big = tmp_path / "million.txt"
    with big.open("w") as f:
        f.write("# exported from the old ESP\n")
        for i in range(1_000_000):
            f.write(f"user{i}@bulk{i % 997}.test\n")
        f.write("not an address\n\n")
    result = suppress(tern, "import", str(big), "--reason", "old list")
    assert result.returncode == 0, result
    assert b"1000000 addresses suppressed, 1 lines refused" in result.stdout, result.stdout[-500:]
    assert b"line 1000002:" in result.stdout
    replies = rcpt_replies(tern, "x@other.test", ["user0@bulk0.test", f"user999999@bulk{999999 % 997}.test",
                                                  "user1000000@bulk0.test"])
    assert [r.code for r in replies] == [550, 550, 250], replies
    # Export: every entry, a line each, and the list survives a restart.
    exported = suppress(tern, "export").stdout.decode().splitlines()
    assert len(exported) == 1_000_002 and exported[0].split("\t")[:2] == ["@closed.test", "*"]
    tern.stop()
    tern.start()
    assert "suppression: 1000002 entries" in tern.stderr()
    assert rcpt_replies(tern, "x@other.test", ["user123456@bulk" + str(123456 % 997) + ".test"])[0].code == 550
