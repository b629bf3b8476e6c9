"""Outbound TLS and AUTH: tern delivering to aiosmtpd next hops that offer STARTTLS (and AUTH),
through dnsmasq MX records, with the per-route and default `tls` policies of issue 4.

Certificates: a test CA (trusted by tern through SSL_CERT_FILE, which OpenSSL reads in place of the
system store), next-hop certificates it signed for the right or a wrong name, and self-signed ones.
"""

from __future__ import annotations

import ssl

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from delivery_helpers import NextHop, _CountingController, _Handler, log_entries
from test_delivery import DNS_RECORDS, HOP_ADDRESSES, SENDER, diagnostics, dns, hop_port, hops, relay, send, wait_gone, wait_log  # noqa: F401
from tls_helpers import issue_cert, server_context

WAIT = 30.0


@pytest.fixture(scope="module")
def certs(certs):
    """conftest's certificates and the next hops' own, signed by the same test CA."""
    c = dict(certs)
    c["good"] = issue_cert(c, "good", ["m1.down.test", "m2.down.test", "mx1.mx.test", "mx.retry.test",
                                       "mx.five.test"])
    c["wrong"] = issue_cert(c, "wrong", ["other.test"])
    c["selfsigned"] = issue_cert(c, "selfsigned", ["m1.down.test", "mx1.mx.test"], self_signed=True)
    return c


class _TLSHandler(_Handler):
    async def handle_DATA(self, server, session, envelope):
        with self.hop.lock:
            self.hop.tls_flags.append(session.ssl is not None)
            self.hop.auth_users.append(getattr(session, "auth_data", None))
        return await super().handle_DATA(server, session, envelope)


class TLSNextHop(NextHop):
    """A NextHop that offers STARTTLS with `cert` and, with `users`, requires AUTH (over TLS)."""

    def __init__(self, host, port, *, cert=None, users: dict[str, str] | None = None, context=None, **kw):
        super().__init__(host, port, **kw)
        self.cert = cert
        self.context = context
        self.users = users
        self.tls_flags: list[bool] = []
        self.auth_users: list = []
        self.auth_attempts: list[tuple[str, str]] = []

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        with self.lock:
            self.auth_attempts.append((mechanism, user))
        ok = self.users.get(user) == password
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    def start(self):
        kw = dict(hostname=self.host, port=self.port, server_hostname=f"hop-{self.host}.test", ready_timeout=10,
                  enable_SMTPUTF8=True)
        if self.cert:
            kw["tls_context"] = self.context or server_context(*self.cert)
        if self.users is not None:
            kw.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=True)
        self.controller = _CountingController(self, **kw)
        self.controller.handler = _TLSHandler(self)
        self.controller.start()
        return self


@pytest.fixture
def trust_test_ca(monkeypatch, certs):
    """tern (started after this) trusts the test CA instead of the system store."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["ca"]))


def test_opportunistic_starttls_by_default(relay, hops, certs):
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["selfsigned"])  # mx1.mx.test
    tern = relay()
    qid, _ = send(tern, ["user@mx.test"], subject="opportunistic")
    hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert hop.tls_flags == [True], "the session was not encrypted"
    (entry,) = wait_log(tern, qid, "sent", "user@mx.test", hop)[-1:]
    line = next(l for l in tern.stderr().splitlines() if qid in l and "status=sent" in l)
    assert "tls=TLSv1.3 " in line and " unverified" in line, line


def test_opportunistic_without_starttls_goes_in_the_clear(relay, hops):
    hop = hops("127.0.0.9")  # plain aiosmtpd: no STARTTLS
    tern = relay()
    qid, _ = send(tern, ["user@mx.test"], subject="clear")
    hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    line = next(l for l in wait_log_lines(tern, qid) if "status=sent" in l)
    assert "tls=" not in line, line


def wait_log_lines(tern, qid):
    wait_log(tern, qid, "sent")
    return [l for l in tern.stderr().splitlines() if qid in l]


def test_tls_none_never_starttls(relay, hops, certs):
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["good"])
    tern = relay(delivery={"tls": "none"})
    send(tern, ["user@mx.test"], subject="none")
    hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert hop.tls_flags == [False]


@pytest.mark.parametrize("bad", ["selfsigned", "wrong"])
def test_verify_skips_unverifiable_mx_and_uses_next(relay, hops, certs, trust_test_ca, bad):
    first = hops("127.0.0.4", cls=TLSNextHop, cert=certs[bad])     # m1.down.test, MX 10
    second = hops("127.0.0.5", cls=TLSNextHop, cert=certs["good"])  # m2.down.test, MX 20
    tern = relay(delivery={"tls": "verify"})
    qid, _ = send(tern, ["user@down.test"], subject="verify")
    second.wait_for(1, on_timeout=lambda: diagnostics(tern, first, second))
    assert first.received() == [], "mail went to a host whose certificate did not verify"
    assert second.tls_flags == [True]
    line = next(l for l in wait_log_lines(tern, qid) if "status=sent" in l)
    assert "127.0.0.5" in line and " verified" in line and "unverified" not in line, line
    assert "not verified" in tern.stderr()


def test_verify_with_only_bad_certificates_defers(relay, hops, certs, trust_test_ca):
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["selfsigned"])
    tern = relay(delivery={"tls": "verify"})
    qid, _ = send(tern, ["user@mx.test"], subject="defer")
    entries = wait_log(tern, qid, "deferred", "user@mx.test", hop)
    assert entries, tern.stderr()[-3000:]
    assert hop.received() == []
    assert qid in tern.queued()


def test_require_falls_back_to_mx_with_starttls(relay, hops, certs):
    plain = hops("127.0.0.4")                                          # m1: no STARTTLS
    secure = hops("127.0.0.5", cls=TLSNextHop, cert=certs["selfsigned"])  # m2
    tern = relay(routes={"down.test": {"next_hop": "down.test", "tls": "require"}})
    qid, _ = send(tern, ["user@down.test"], subject="require")
    secure.wait_for(1, on_timeout=lambda: diagnostics(tern, plain, secure))
    assert plain.received() == []
    assert plain.ehlos, "the preference-10 MX (no STARTTLS) was never tried"
    assert secure.tls_flags == [True]


def test_upstream_auth_with_password_file(relay, hops, certs, tmp_path, hop_port):
    pw = tmp_path / "upstream.pw"
    pw.write_text("upstream secret\n")
    hop = hops("127.0.0.14", cls=TLSNextHop, cert=certs["selfsigned"], users={"relayuser": "upstream secret"})
    route = {"next_hop": f"[127.0.0.14]:{hop_port}", "tls": "require", "auth_user": "relayuser",
             "auth_password_file": str(pw)}
    tern = relay(routes={"*": route})
    qid, _ = send(tern, ["someone@anywhere.test"], subject="smarthost")
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert t.rcpts == ["someone@anywhere.test"]
    assert hop.auth_users == ["relayuser"]
    assert hop.tls_flags == [True]
    assert "upstream secret" not in tern.stderr()


def test_upstream_auth_wrong_password_defers(relay, hops, certs, hop_port, monkeypatch):
    monkeypatch.setenv("TERN_TEST_UPSTREAM_PW", "not it")
    hop = hops("127.0.0.14", cls=TLSNextHop, cert=certs["selfsigned"], users={"relayuser": "upstream secret"})
    route = {"next_hop": f"[127.0.0.14]:{hop_port}", "auth_user": "relayuser",
             "auth_password_env": "TERN_TEST_UPSTREAM_PW"}
    tern = relay(routes={"*": route})
    qid, _ = send(tern, ["someone@anywhere.test"], subject="wrong pw")
    assert wait_log(tern, qid, "deferred", "someone@anywhere.test", hop)
    assert hop.received() == []
    assert hop.auth_attempts and hop.auth_attempts[0][1] == "relayuser"


def test_upstream_auth_never_in_the_clear(relay, hops, hop_port):
    hop = hops("127.0.0.14")  # no STARTTLS offered
    route = {"next_hop": f"[127.0.0.14]:{hop_port}", "auth_user": "relayuser", "auth_password": "secret"}
    tern = relay(routes={"*": route})
    qid, _ = send(tern, ["someone@anywhere.test"], subject="clear auth")
    assert wait_log(tern, qid, "deferred", "someone@anywhere.test", hop)
    assert hop.received() == []
    assert "only over TLS" in tern.stderr()


def broken_tls_context(cert) -> ssl.SSLContext:
    """Offers STARTTLS but cannot finish a handshake: TLS 1.2 with only an RSA key-exchange cipher,
    and an ECDSA certificate."""
    ctx = server_context(*cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES128-SHA")
    return ctx


def test_opportunistic_retries_in_the_clear_after_failed_handshake(relay, hops, certs):
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["good"], context=broken_tls_context(certs["good"]))
    tern = relay()
    qid, _ = send(tern, ["user@mx.test"], subject="broken tls")
    hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert hop.tls_flags == [False]
    assert len(hop.ehlos) >= 2, "no STARTTLS attempt before the clear retry"
    line = next(l for l in wait_log_lines(tern, qid) if "status=sent" in l)
    assert "retried in the clear" in line, line
    assert "TLS handshake with" in tern.stderr()


def test_require_does_not_fall_back_to_the_clear(relay, hops, certs):
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["good"], context=broken_tls_context(certs["good"]))
    tern = relay(delivery={"tls": "require"})
    qid, _ = send(tern, ["user@mx.test"], subject="broken tls, required")
    assert wait_log(tern, qid, "deferred", "user@mx.test", hop)
    assert hop.received() == []


def send_tls_optional(tern, rcpt: str, subject: str) -> str:
    """A message whose header says "TLS-Required: No" (RFC 8689 §5)."""
    from conftest import make_message
    msg = make_message(subject=subject, sender=SENDER, to=rcpt, headers=[("TLS-Required", " No ")])
    return tern.send(SENDER, [rcpt], msg)


def test_tls_required_no_relaxes_verify_only_when_the_config_allows_it(relay, hops, certs, trust_test_ca):
    """RFC 8689 §5: with honor_tls_required_no, a "TLS-Required: No" message goes over unverified TLS
    where the policy says verify; other mail still waits for a verified certificate, and without the
    setting the header changes nothing."""
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["selfsigned"])  # mx1.mx.test: never verifies
    tern = relay(delivery={"tls": "verify", "honor_tls_required_no": True})
    strict, _ = send(tern, ["user@mx.test"], subject="strict")
    optional = send_tls_optional(tern, "other@mx.test", "optional")
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert t.rcpts == ["other@mx.test"] and hop.tls_flags == [True]  # still STARTTLS, unverified
    assert "tlsoptional\t1\n" not in tern.env_bytes(strict).decode()
    line = next(l for l in wait_log_lines(tern, optional) if "status=sent" in l)
    assert "unverified" in line, line
    assert "TLS-Required: No: TLS policy verify relaxed to opportunistic" in tern.stderr()
    assert wait_log(tern, strict, "deferred", "user@mx.test", hop)
    assert strict in tern.queued()
    assert [tx.rcpts for tx in hop.received()] == [["other@mx.test"]]


def test_tls_required_no_is_ignored_by_default(relay, hops, certs, trust_test_ca):
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["selfsigned"])
    tern = relay(delivery={"tls": "verify"})
    optional = send_tls_optional(tern, "other@mx.test", "optional")
    assert "tlsoptional\t1\n" in tern.env_bytes(optional).decode()  # kept, for a reload that allows it
    assert wait_log(tern, optional, "deferred", "other@mx.test", hop)
    assert hop.received() == []
