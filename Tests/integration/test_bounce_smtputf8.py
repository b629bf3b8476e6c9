"""Reports to a UTF-8 sender (issue 13): a bounce to `sénder@…` goes out with SMTPUTF8 (RFC 6531) and
RFC 6532/6533 content, or not at all: a next hop without SMTPUTF8 fails it with 5.6.7, never a downgrade.

Two aiosmtpd next hops reached through [routes] (no DNS): rcpt.test on 127.0.0.2 refuses the recipient
with 550, so the message bounces; sender.test on 127.0.0.3 is where the bounce goes, with SMTPUTF8
advertised or not.
"""

from __future__ import annotations

import email
import email.policy

from conftest import CLIENT_HELO, SMTPConn, assert_reply, queue_id_of, wait_until
from delivery_helpers import NextHop, _CountingController, free_port_on, log_entries

SENDER = "sénder@sender.test"
REFUSED = "nobody@rcpt.test"
WAIT = 30.0


class NoSMTPUTF8Hop(NextHop):
    """A next hop that does not offer SMTPUTF8 (a strict, older MTA)."""

    def start(self) -> "NoSMTPUTF8Hop":
        self.controller = _CountingController(self, hostname=self.host, port=self.port,
                                              server_hostname=f"hop-{self.host}.test", ready_timeout=10,
                                              enable_SMTPUTF8=False)
        self.controller.start()
        return self


def start_relay(start_tern, bounce_hop_cls):
    port_a = free_port_on(["127.0.0.2"])
    port_b = free_port_on(["127.0.0.3"])
    refusing = NextHop("127.0.0.2", port_a, rcpt_replies={REFUSED: "550 5.1.1 <nobody@rcpt.test>: no such user"}).start()
    bounce_hop = bounce_hop_cls("127.0.0.3", port_b).start()
    tern = start_tern(
        delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
        extra_tables={"routes": {"rcpt.test": f"[127.0.0.2]:{port_a}", "sender.test": f"[127.0.0.3]:{port_b}"}},
    )
    return tern, refusing, bounce_hop


def send_utf8(tern) -> str:
    message = ("From: Sénder <sénder@sender.test>\r\nTo: nobody@rcpt.test\r\nSubject: Grüße\r\n"
               "Message-ID: <utf8-bounce@sender.test>\r\n\r\nHallo.\r\n").encode()
    with SMTPConn(tern.port) as c:
        c.greeting()
        c.ehlo(CLIENT_HELO)
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}> SMTPUTF8 BODY=8BITMIME"), 250, "2.1.0")
        assert_reply(c.cmd(f"RCPT TO:<{REFUSED}>"), 250, "2.1.5")
        qid = queue_id_of(assert_reply(c.data(message), 250, "2.0.0"))
        c.cmd("QUIT")
    return qid


def test_bounce_to_utf8_sender_goes_with_smtputf8(start_tern):
    tern, refusing, bounce_hop = start_relay(start_tern, NextHop)
    try:
        qid = send_utf8(tern)
        (bounce,) = bounce_hop.wait_for(1, timeout=WAIT, on_timeout=lambda: tern.stderr()[-3000:])
        assert bounce.mail_from == "" and bounce.rcpts == [SENDER]
        assert "SMTPUTF8" in [o.upper() for o in bounce.mail_options], bounce.mail_options
        head, _, _ = bounce.content.partition(b"\r\n\r\n")
        assert f"\r\nTo: {SENDER}\r\n".encode() in b"\r\n" + head + b"\r\n", head  # RFC 6532: raw UTF-8
        msg = email.message_from_bytes(bounce.content, policy=email.policy.compat32)
        assert msg.get_content_type() == "multipart/report"
        types = [p.get_content_type() for p in msg.walk()]
        assert "message/global-delivery-status" in types, types
        status = next(p for p in msg.walk() if p.get_content_type() == "message/global-delivery-status")
        raw = status.as_bytes()
        assert b"Final-Recipient: rfc822; nobody@rcpt.test" in raw and b"Status: 5.1.1" in raw, raw
        assert "message/global-headers" in types, types
        assert "Subject: Grüße".encode() in bounce.content, "the original headers, as they were"
        assert log_entries(tern.stderr(), qid, "bounced", REFUSED)
    finally:
        tern.stop()
        bounce_hop.stop()
        refusing.stop()


def test_bounce_to_utf8_sender_fails_with_5_6_7_without_smtputf8(start_tern):
    tern, refusing, bounce_hop = start_relay(start_tern, NoSMTPUTF8Hop)
    try:
        qid = send_utf8(tern)
        # The bounce's own delivery: refused before MAIL, permanently, and (a bounce) not bounced again.
        def failed():
            return [e for e in log_entries(tern.stderr(), status="bounced") if e["id"] != qid]
        wait_until(lambda: failed(), WAIT, "the bounce refused for lack of SMTPUTF8", lambda: tern.stderr()[-3000:])
        (entry,) = failed()
        assert entry["dsn"] == "5.6.7", entry
        assert "SMTPUTF8" in (entry["reply"] or ""), entry
        assert bounce_hop.received() == [] and bounce_hop.sessions == [], "a MAIL reached the hop without SMTPUTF8"
        assert bounce_hop.ehlos, "the hop was never asked"
        wait_until(lambda: tern.queue_files() == [], WAIT, "the spool empties", lambda: tern.queue_files())
    finally:
        tern.stop()
        bounce_hop.stop()
        refusing.stop()
