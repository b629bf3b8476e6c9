"""DSN (RFC 3461) end to end: the sender's NOTIFY, ORCPT, RET and ENVID are taken in, kept in the spool,
and passed to Postfix's smtpd (which offers DSN: the relayed notice Postfix itself sends back proves it
heard them); to an aiosmtpd next hop without DSN, tern sends the "relayed" notice for NOTIFY=SUCCESS.
Failures bounce only for NOTIFY=FAILURE (or none): NOTIFY=NEVER with a 5xx gets no bounce; RET=FULL
returns the message, RET=HDRS its headers; ENVID and ORCPT appear in the reports."""

from __future__ import annotations

import time

import pytest

from conftest import assert_reply, free_port, make_message, queue_id_of, wait_until
from delivery_helpers import NextHop, parse_dsn
from postfix_helpers import postfix_relaying_to_hop

SENDER = "sender@client.test"


def submit(t, rcpts: list[tuple[str, str]], message: bytes, mail_params: str = "") -> str:
    """One transaction with RCPT parameters per recipient; returns the queue id."""
    with t.connect() as c:
        c.greeting()
        assert "DSN" in c.ehlo().lines
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}> {mail_params}".rstrip()), 250, "2.1.0")
        for rcpt, params in rcpts:
            assert_reply(c.cmd(f"RCPT TO:<{rcpt}> {params}".rstrip()), 250, "2.1.5", context=rcpt)
        return queue_id_of(assert_reply(c.data(message), 250, "2.0.0"))


def test_parameters_are_kept_in_the_spool(start_tern):
    t = start_tern()
    qid = submit(t, [("a@x.test", "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;A+2Bb@x.test"), ("b@x.test", "")],
                 make_message(), "RET=HDRS ENVID=QQ+2B314159")
    env = t.env_bytes(qid).decode()
    assert "ret\tHDRS\nenvid\tQQ+2B314159\n" in env, env
    assert "rcpt\tpending\ta@x.test\nnotify\tSUCCESS,DELAY\norcpt\trfc822;A+2Bb@x.test\nrcpt\tpending\tb@x.test\nend\n" in env, env
    # Bad values: 501 5.5.4, the transaction goes on.
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}> RET=PARTIAL"), 501, "5.5.4")
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}> ENVID=a=b"), 501, "5.5.4")
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.cmd("RCPT TO:<a@x.test> NOTIFY=NEVER,SUCCESS"), 501, "5.5.4")
        assert_reply(c.cmd("RCPT TO:<a@x.test> ORCPT=bob"), 501, "5.5.4")
        assert_reply(c.cmd("RCPT TO:<a@x.test> NOTIFY=never"), 250)


# --------------------------------------------------------------------------------------------
# To a next hop without DSN (aiosmtpd): tern answers for NOTIFY


@pytest.fixture
def plain_hop():
    hop = NextHop("127.0.0.33", free_port("127.0.0.33"),
                  rcpt_replies={"gone@x.test": "550 5.1.1 no such user", "never@x.test": "550 5.1.1 no such user"}).start()
    yield hop
    hop.stop()


def relay_to_hop(start_tern, hop):
    # Mail for x.test and the notices for client.test (the sender's domain) both reach the hop. The
    # tests send to an address that bounced before: no suppression (test_suppression.py has it).
    return start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
                      extra_tables={"routes": {"x.test": f"[{hop.host}]:{hop.port}",
                                               "client.test": f"[{hop.host}]:{hop.port}"},
                                    "dns": {"servers": ["127.0.0.1:9"]},
                                    "suppression": {"auto_classes": []}})


def notices(hop) -> list:
    return [tx for tx in hop.transactions if tx.mail_from == ""]


def test_success_to_a_next_hop_without_dsn_gets_a_relayed_notice(start_tern, plain_hop):
    t = relay_to_hop(start_tern, plain_hop)
    qid = submit(t, [("ok@x.test", "NOTIFY=SUCCESS ORCPT=rfc822;Ok+2Balias@x.test"), ("quiet@x.test", "")],
                 make_message(subject="relayed"), "ENVID=QQ314159")
    got = plain_hop.wait_for(2, timeout=30)
    report = next(tx for tx in got if tx.mail_from == "")
    assert report.rcpts == [SENDER]
    dsn = parse_dsn(report.content)
    assert dsn.message["Subject"] == "Successful Mail Delivery Report"
    assert dsn.per_message.get("original-envelope-id") == "QQ314159", dsn.per_message
    assert len(dsn.recipients) == 1, dsn.recipients  # quiet@ asked for nothing
    r = dsn.recipients[0]
    assert r["action"] == "relayed" and r["status"] == "2.0.0", r
    assert r["original-recipient"] == "rfc822; Ok+alias@x.test", r
    assert r["final-recipient"] == "rfc822; ok@x.test", r
    wait_until(lambda: t.queued() == [], 30, "the spool to empty")
    assert qid


def test_never_gets_no_bounce_and_ret_decides_what_returns(start_tern, plain_hop):
    t = relay_to_hop(start_tern, plain_hop)
    body = b"The body that RET=FULL returns.\r\n"
    # NOTIFY=NEVER and a 5xx: bounced in silence. NOTIFY=FAILURE in the same message: bounced, with
    # its headers only (RET=HDRS).
    submit(t, [("never@x.test", "NOTIFY=NEVER"), ("gone@x.test", "NOTIFY=FAILURE ORCPT=rfc822;gone@x.test")],
           make_message(subject="hdrs", body=body), "RET=HDRS ENVID=HDRS1")
    first = wait_until(lambda: notices(plain_hop), 30, "the bounce of the first message")
    dsn = parse_dsn(first[0].content)
    assert [r["final-recipient"] for r in dsn.recipients] == ["rfc822; gone@x.test"], dsn.recipients
    assert dsn.recipients[0]["original-recipient"] == "rfc822; gone@x.test"
    assert dsn.per_message.get("original-envelope-id") == "HDRS1"
    parts = [p.get_content_type() for p in dsn.message.walk()]
    assert "text/rfc822-headers" in parts and "message/rfc822" not in parts, parts
    assert body not in first[0].content
    # RET=FULL: the whole message comes back.
    submit(t, [("gone@x.test", "")], make_message(subject="full", body=body), "RET=FULL")
    both = wait_until(lambda: len(notices(plain_hop)) >= 2 and notices(plain_hop), 30, "the bounce of the second")
    full = parse_dsn(both[1].content)
    returned = [p for p in full.message.walk() if p.get_content_type() == "message/rfc822"]
    assert returned and body in both[1].content, [p.get_content_type() for p in full.message.walk()]
    # A NOTIFY=NEVER recipient alone: bounced, logged, and no notice at all.
    submit(t, [("never@x.test", "NOTIFY=NEVER")], make_message(subject="never"))
    bounced = lambda: sum(1 for line in t.stderr().splitlines()
                          if "to=<never@x.test>" in line and "status=bounced" in line)
    wait_until(lambda: bounced() >= 2 and t.queued() == [], 30,
               "the NEVER recipient to bounce", on_timeout=lambda: t.stderr()[-2000:])
    time.sleep(1.5)
    assert len(notices(plain_hop)) == 2, [tx.content[:200] for tx in notices(plain_hop)]


# --------------------------------------------------------------------------------------------
# To Postfix, which offers DSN: the parameters go on, and Postfix answers for them


@pytest.fixture
def postfix_dsn_chain():
    with postfix_relaying_to_hop("127.0.0.34", "127.0.0.35") as chain:
        yield chain


def test_parameters_reach_postfix(start_tern, postfix_dsn_chain):
    pf, hop = postfix_dsn_chain
    t = start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
                   extra_tables={"routes": {"x.test": f"[{pf.host}]:{pf.port}"},
                                 "dns": {"servers": ["127.0.0.1:9"]}})
    submit(t, [("ok@x.test", "NOTIFY=SUCCESS ORCPT=rfc822;Orig+2Bone@x.test")], make_message(subject="to postfix"),
           "RET=HDRS ENVID=PF+2B42")
    # Postfix relays to the aiosmtpd hop, which has no DSN: Postfix sends the sender its own relayed
    # notice, with the ENVID and ORCPT it got from tern.
    got = hop.wait_for(2, timeout=60)
    report = next((tx for tx in got if tx.mail_from == ""), None)
    assert report is not None, [(tx.mail_from, tx.rcpts) for tx in got]
    dsn = parse_dsn(report.content)
    assert dsn.per_message.get("original-envelope-id") == "PF+42", dsn.per_message
    assert dsn.recipients[0]["action"] == "relayed", dsn.recipients
    assert "Orig+one@x.test" in dsn.recipients[0].get("original-recipient", ""), dsn.recipients
    # Postfix offered DSN, so tern made no notice of its own (it would wait in the queue: client.test has
    # no route here).
    wait_until(lambda: t.queued() == [], 30, "tern's spool to empty", on_timeout=lambda: t.queue_files())


def test_delay_warning_only_for_notify_delay(start_tern):
    hop = NextHop("127.0.0.36", free_port("127.0.0.36"),
                  rcpt_replies={"slow@x.test": "451 4.3.0 try later", "quiet@x.test": "451 4.3.0 try later"}).start()
    try:
        t = start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s",
                                 "delay_warning_time": "1s"},
                       extra_tables={"routes": {"x.test": f"[{hop.host}]:{hop.port}",
                                                "client.test": f"[{hop.host}]:{hop.port}"},
                                     "dns": {"servers": ["127.0.0.1:9"]}})
        # slow@ asks to hear of delays; quiet@ only of failures; the default (no NOTIFY) would hear both.
        submit(t, [("slow@x.test", "NOTIFY=DELAY,FAILURE"), ("quiet@x.test", "NOTIFY=FAILURE")],
               make_message(subject="late"))
        warning = wait_until(lambda: notices(hop), 30, "the delay warning")[0]
        dsn = parse_dsn(warning.content)
        assert dsn.final_recipients() == ["slow@x.test"], dsn.recipients
        assert dsn.recipients[0]["action"] == "delayed", dsn.recipients
        # One warning per message, whatever the retries.
        time.sleep(2.5)
        assert len(notices(hop)) == 1
    finally:
        hop.stop()
