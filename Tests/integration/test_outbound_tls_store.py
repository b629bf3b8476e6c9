"""Delivery's CA store under the `verify` policy. The bundle ($SSL_CERT_FILE here) is read into
memory once per client context, off the loop: at start-up and again on SIGHUP, so a CA added to it
is trusted after a reload and not before. The hashed directory ($SSL_CERT_DIR) is asked at each
handshake, as with OpenSSL's default paths: a CA dropped there counts from the next delivery on.
"""

from __future__ import annotations

import signal
import subprocess

from conftest import wait_until
from delivery_helpers import log_entries
from test_delivery import DNS_RECORDS, HOP_ADDRESSES, diagnostics, dns, hop_port, hops, relay, send, wait_log  # noqa: F401
from test_outbound_tls import TLSNextHop, certs  # noqa: F401
from tls_helpers import make_certs

WAIT = 30.0


def sent_line(tern, qid: str, hop) -> str:
    hop.wait_for(1, timeout=WAIT, on_timeout=lambda: diagnostics(tern, hop))
    wait_log(tern, qid, "sent", "user@mx.test", hop)
    return next(l for l in tern.stderr().splitlines() if qid in l and "status=sent" in l)


def test_ca_added_to_the_bundle_is_trusted_after_sighup(relay, hops, certs, tmp_path, monkeypatch):
    other_ca = make_certs(tmp_path / "other")["ca"]
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(other_ca.read_bytes())
    (tmp_path / "no-hashes").mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-hashes"))
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["good"])  # mx1.mx.test, signed by the test CA
    tern = relay(delivery={"tls": "verify"})
    qid, _ = send(tern, ["user@mx.test"], subject="bundle reload")
    assert wait_log(tern, qid, "deferred", "user@mx.test", hop)
    assert hop.received() == [], "delivered to a certificate the store does not trust"

    # The test CA joins the bundle: still not trusted (the bundle is in memory) until SIGHUP.
    bundle.write_bytes(other_ca.read_bytes() + certs["ca"].read_bytes())
    deferrals = lambda: len(log_entries(tern.stderr(), qid, "deferred", "user@mx.test"))  # noqa: E731
    before = deferrals()
    wait_until(lambda: deferrals() > before, WAIT, "another attempt with the old store",
               lambda: diagnostics(tern, hop))
    assert hop.received() == []

    tern.proc.send_signal(signal.SIGHUP)
    line = sent_line(tern, qid, hop)
    assert " verified" in line and "unverified" not in line, line


def test_hashed_directory_is_asked_at_each_handshake(relay, hops, certs, tmp_path, monkeypatch):
    empty_bundle = tmp_path / "empty.pem"
    empty_bundle.write_text("")
    hashed = tmp_path / "hashed"
    hashed.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(empty_bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(hashed))
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["good"])
    tern = relay(delivery={"tls": "verify"})
    qid, _ = send(tern, ["user@mx.test"], subject="hashed directory")
    assert wait_log(tern, qid, "deferred", "user@mx.test", hop)
    assert hop.received() == []

    # As `openssl rehash` would name it: the subject hash, ".0". No reload.
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(certs["ca"])], check=True,
                            capture_output=True, text=True).stdout.strip()
    (hashed / f"{digest}.0").write_bytes(certs["ca"].read_bytes())
    line = sent_line(tern, qid, hop)
    assert " verified" in line and "unverified" not in line, line
