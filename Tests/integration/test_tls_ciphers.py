"""TLS cipher policy (issue 13): forward-secret AEAD suites only on the submission listeners
(tls.submission_ciphers = "high"); port 25's STARTTLS (tls.ciphers = "medium") also takes ECDHE with
AES-CBC for old peers, never RSA key exchange. An RSA certificate, so that every suite tried could be
negotiated if the policy allowed it. Checked with `openssl s_client -tls1_2 -cipher ...`."""

from __future__ import annotations


import pytest

from tls_helpers import make_rsa_cert, s_client


@pytest.fixture(scope="module")
def rsa_cert(tmp_path_factory):
    return make_rsa_cert(tmp_path_factory.mktemp("rsa"))


@pytest.fixture
def tern_tls(start_tern, rsa_cert, users_file):
    from conftest import free_port
    sub, subs = free_port(), free_port()
    t = start_tern(server={"submission": [f"127.0.0.1:{sub}"], "submissions": [f"127.0.0.1:{subs}"]},
                   extra_tables={"tls": {"certificate": str(rsa_cert[0]), "key": str(rsa_cert[1])},
                                 "auth": {"users_file": str(users_file)}})
    return t, sub, subs


OLD = ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA"]


def test_submission_listeners_take_forward_secret_aead_only(tern_tls):
    t, sub, subs = tern_tls
    for port, starttls in [(sub, True), (subs, False)]:
        for cipher in OLD:
            ok, out = s_client(port, cipher, starttls)
            assert not ok, f"{cipher} negotiated on port {port}:\n{out}"
        ok, out = s_client(port, "ECDHE-RSA-AES128-GCM-SHA256", starttls)
        assert ok, out
        ok, out = s_client(port, "ECDHE-RSA-CHACHA20-POLY1305", starttls)
        assert ok, out


def test_port_25_takes_ecdhe_cbc_but_never_rsa_key_exchange(tern_tls):
    t, _, _ = tern_tls
    for cipher in ["AES128-SHA", "AES256-GCM-SHA384", "DES-CBC3-SHA"]:
        ok, out = s_client(t.port, cipher)
        assert not ok, f"{cipher} negotiated on port 25's STARTTLS:\n{out}"
    for cipher in ["ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES128-GCM-SHA256"]:
        ok, out = s_client(t.port, cipher)
        assert ok, f"{cipher} refused on port 25's STARTTLS:\n{out}"
    # The session still works after a handshake on the policy.
    with t.connect() as c:
        assert_ok = c.greeting()
        assert assert_ok.code == 220


def test_cipher_lists_are_configurable(start_tern, rsa_cert):
    t = start_tern(extra_tables={"tls": {"certificate": str(rsa_cert[0]), "key": str(rsa_cert[1]),
                                         "ciphers": "high"}})
    ok, out = s_client(t.port, "ECDHE-RSA-AES128-SHA")
    assert not ok, out
    ok, out = s_client(t.port, "ECDHE-RSA-AES256-GCM-SHA384")
    assert ok, out
