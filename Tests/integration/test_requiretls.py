"""REQUIRETLS (RFC 8689) end to end. tern takes MAIL ... REQUIRETLS only under TLS; such a message goes
on only over TLS with a verified certificate to a next hop that offers REQUIRETLS: here a second
`tern serve` reached as mx1.mx.test (dnsmasq), with a certificate from the test CA that the relay trusts
($SSL_CERT_FILE). An aiosmtpd next hop with the same certificate but no REQUIRETLS, or a self-signed
one, gets nothing: the sender gets a bounce with 5.7.30. Other mail to that hop goes as usual."""

from __future__ import annotations

import smtplib

from conftest import free_port, make_message, wait_until
from delivery_helpers import NextHop, parse_dsn
from test_delivery import DNS_RECORDS, HOP_ADDRESSES, SINK_IP, dns, hop_port, hops  # noqa: F401
from test_outbound_tls import TLSNextHop, certs  # noqa: F401
from tls_helpers import client_context

SENDER = "sender@sender.test"


def relay_with_tls(start_tern, dns, hop_port, certs, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["ca"]))
    return start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s",
                                "port": hop_port, "tls": "opportunistic"},
                      extra_tables={"dns": {"servers": [f"127.0.0.1:{dns.port}"]},
                                    "tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])}})


def submit(port: int, ca, rcpt: str, message: bytes, requiretls: bool = True) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
        s.ehlo("client.test")
        # In the clear, REQUIRETLS is neither offered nor taken.
        assert not s.has_extn("requiretls")
        code, _ = s.mail(SENDER, ["REQUIRETLS"])
        assert code == 555, code
        s.rset()
        s.starttls(context=client_context(ca))
        s.ehlo("client.test")
        assert s.has_extn("requiretls")
        s.sendmail(SENDER, [rcpt], message, mail_options=["REQUIRETLS"] if requiretls else [])


def test_delivered_over_verified_tls_to_a_next_hop_that_offers_it(start_tern, dns, hop_port, certs, monkeypatch):
    good_cert, good_key = certs["good"]
    port = free_port()
    # The next hop: another tern, on mx1.mx.test's address (and 127.0.0.1 for the fixture's probe).
    nexthop = start_tern(port=port, server={"listen": [f"127.0.0.1:{port}", f"127.0.0.9:{hop_port}"]},
                         extra_tables={"tls": {"certificate": str(good_cert), "key": str(good_key)}})
    relay = relay_with_tls(start_tern, dns, hop_port, certs, monkeypatch)
    submit(relay.port, certs["ca"], "user@mx.test", make_message(subject="requiretls", to="user@mx.test"))
    wait_until(lambda: nexthop.queued(), 30, "the message at the next hop", on_timeout=lambda: relay.stderr()[-3000:])
    qid = nexthop.queued()[0]
    assert "requiretls\t1\n" in nexthop.env_bytes(qid).decode(), "the next hop did not get REQUIRETLS"
    wait_until(lambda: relay.queued() == [], 30, "the relay's spool to empty")
    sent = [l for l in relay.stderr().splitlines() if "status=sent" in l]
    assert sent and "verified" in sent[0], sent


def test_bounced_with_5_7_30_when_the_next_hop_cannot_promise_it(start_tern, dns, hop_port, hops, certs, monkeypatch):
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["good"])  # verified, but aiosmtpd has no REQUIRETLS
    sender_hop = hops(SINK_IP)                                    # sender.test's MX: where bounces go
    relay = relay_with_tls(start_tern, dns, hop_port, certs, monkeypatch)
    submit(relay.port, certs["ca"], "user@mx.test", make_message(subject="must be tls", to="user@mx.test"))
    submit(relay.port, certs["ca"], "other@mx.test", make_message(subject="ordinary", to="other@mx.test"),
           requiretls=False)
    bounce = sender_hop.wait_for(1, timeout=30)[0]
    dsn = parse_dsn(bounce.content)
    assert dsn.final_recipients() == ["user@mx.test"]
    assert dsn.recipients[0]["status"] == "5.7.30", dsn.recipients
    assert "REQUIRETLS" in dsn.recipients[0].get("diagnostic-code", ""), dsn.recipients
    got = hop.wait_for(1, timeout=30)
    assert [tx.rcpts for tx in got] == [["other@mx.test"]], "only the ordinary message reaches the hop"
    wait_until(lambda: relay.queued() == [], 30, "the relay's spool to empty")


def test_the_next_mx_host_is_tried_before_5_7_30(start_tern, dns, hop_port, hops, certs, monkeypatch):
    """RFC 8689 §4.2.1: a host that cannot promise REQUIRETLS is passed over for the next MX host."""
    good_cert, good_key = certs["good"]
    first = hops("127.0.0.4", cls=TLSNextHop, cert=certs["good"])  # m1.down.test, preference 10: no REQUIRETLS
    port = free_port()
    second = start_tern(port=port, server={"listen": [f"127.0.0.1:{port}", f"127.0.0.5:{hop_port}"]},
                        extra_tables={"tls": {"certificate": str(good_cert), "key": str(good_key)}})  # m2
    relay = relay_with_tls(start_tern, dns, hop_port, certs, monkeypatch)
    submit(relay.port, certs["ca"], "user@down.test", make_message(subject="must be tls", to="user@down.test"))
    submit(relay.port, certs["ca"], "other@down.test", make_message(subject="ordinary", to="other@down.test"),
           requiretls=False)
    wait_until(lambda: second.queued(), 30, "the message at the second MX host",
               on_timeout=lambda: relay.stderr()[-3000:])
    queued = second.queued()
    assert any("requiretls\t1\n" in second.env_bytes(q).decode() for q in queued), "REQUIRETLS did not go on"
    wait_until(lambda: relay.queued() == [], 30, "the relay's spool to empty")
    # The first host was asked (EHLO) and passed over: it never got the REQUIRETLS message. (The ordinary
    # one may go to either host: the connection to the second is cached and may carry it.)
    assert first.ehlos, "the preference-10 host was never tried"
    assert all(tx.rcpts != ["user@down.test"] for tx in first.received())
    assert "status=bounced" not in relay.stderr()
