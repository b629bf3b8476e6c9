"""DKIM signing on the receive path (issue 17): Tern relays to an aiosmtpd next hop with [[dkim.sign]]
keys made by `tern dkim keygen`, and dkimpy (an implementation Tern did not write) verifies what the
next hop received against the TXT records keygen printed (dnsfunc). Only mail from relay_networks or
authenticated clients is signed, by the From: domain's keys or its closest configured parent's."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
from pathlib import Path

import dkim
import pytest

from conftest import (TERN_BIN, SMTPConn, assert_reply, free_port, make_message, send_message, split_received,
                      wait_until)
from delivery_helpers import NextHop
from test_sink import start_sink  # noqa: F401  (the fixture)

SENDER = "sender@client.test"

# (domain, selector, keygen algorithm, [[dkim.sign]] algorithm, canonicalization)
KEYS = [
    ("example.com", "rsa1", "rsa-2048", "rsa-sha256", "relaxed/relaxed"),
    ("example.com", "ed1", "ed25519", "ed25519-sha256", "relaxed/relaxed"),
    ("simple.test", "s1", "rsa-2048", "rsa-sha256", "simple/simple"),
    ("simple.test", "s2", "ed25519", "ed25519-sha256", "simple/simple"),
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """[[dkim.sign]] tables and the DNS records keygen printed, by record name."""
    d = tmp_path_factory.mktemp("dkim")
    tables, records = [], {}
    for domain, selector, gen, alg, canon in KEYS:
        path = d / f"{selector}.{domain}.pem"
        p = subprocess.run([str(TERN_BIN), "dkim", "keygen", "--domain", domain, "--selector", selector,
                            "--algorithm", gen, "--out", str(path)], capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        name = f"{selector}._domainkey.{domain}"
        m = re.fullmatch(re.escape(name) + r"\. IN TXT \( (.*) \)", p.stdout.decode().strip())
        assert m, p.stdout
        records[name + "."] = "".join(re.findall(r'"([^"]*)"', m.group(1))).encode()
        tables.append({"domain": domain, "selector": selector, "key": str(path), "algorithm": alg,
                       "canonicalization": canon})
    return tables, records, d


def dnsfunc_for(records):
    def dnsfunc(name, timeout=5):
        return records.get(name.decode() if isinstance(name, bytes) else name)
    return dnsfunc


def signatures(content: bytes) -> list[bytes]:
    head = content.split(b"\r\n\r\n", 1)[0]
    return re.findall(rb"(?ims)^DKIM-Signature:.*?(?=^\S)", head + b"\r\nX")


def verifies(content: bytes, idx: int, records) -> bool:
    """dkimpy's verdict on signature idx; a mismatch it raises for counts as a failure."""
    try:
        return dkim.DKIM(content).verify(idx=idx, dnsfunc=dnsfunc_for(records))
    except dkim.DKIMException:
        return False


def verify_all(content: bytes, records) -> list[dict]:
    """Verifies every signature; returns their tags. Fails unless all verify."""
    sigs = signatures(content)
    out = []
    d = dkim.DKIM(content)
    for i, sig in enumerate(sigs):
        ok = d.verify(idx=i, dnsfunc=dnsfunc_for(records))
        assert ok, f"signature {i} does not verify: {sig!r}"
        tags = dict((k.strip(), v) for k, v in (t.split(b"=", 1) for t in
                    re.sub(rb"\s+", b"", sig.split(b":", 1)[1]).split(b";") if t))
        out.append({k.decode(): v.decode() for k, v in tags.items()})
    return out


@pytest.fixture
def signing_relay(tmp_path, keys):
    """(start(**tern options) -> Tern, hop): Tern relays every domain to the hop on 127.0.0.1."""
    tables, _, _ = keys
    hop = NextHop("127.0.0.1", free_port()).start()
    started = []
    from conftest import Tern

    def start(dkim_tables=None, routes=None, dkim_extra=None, **kw) -> Tern:
        extra = {"routes": routes or {"*": f"[127.0.0.1]:{hop.port}"},
                 "dkim": {"sign": tables if dkim_tables is None else dkim_tables, **(dkim_extra or {})}}
        extra.update(kw.pop("extra_tables", {}))
        t = Tern(tmp_path / f"tern{len(started)}", delivery={"enabled": True, "retry_schedule": ["1s"],
                                                               "max_queue_lifetime": "5d"},
                 extra_tables=extra, **kw)
        started.append(t)
        return t.start()

    yield start, hop
    for t in started:
        t.stop()
    hop.stop()


def relay_one(tern, hop, message: bytes, rcpt: str = "rcpt@x.test", source: str | None = None):
    before = len(hop.transactions)
    send_message(tern.port, SENDER, [rcpt], message, source=source)
    got = hop.wait_for(before + 1, timeout=30, on_timeout=lambda: tern.stderr()[-3000:])
    return got[before].content


ODD_HEADERS = [
    ("Subject", "folded\r\n\tover two lines  \r\n  and a third"),
    ("Received", "from a.test by b.test; Sun, 6 Dec 2026 03:00:00 +0000"),
    ("X-Repeated", "one"),
    ("X-Repeated", "two"),
    ("Cc", "a@x.test,\r\n b@x.test"),
    ("Content-Type", "text/plain; charset=utf-8"),
]

ODD_BODY = ("Ünïcödé 8-bit body\r\n"
            ".a line that starts with a dot\r\n"
            "..two dots\r\n"
            "trailing whitespace   \t\r\n"
            "\r\n  \r\n"
            "end\r\n\r\n\r\n").encode()


def test_dual_signatures_rsa_and_ed25519_verify_and_an_altered_message_fails(signing_relay, keys):
    _, records, _ = keys
    start, hop = signing_relay
    tern = start()
    msg = make_message(sender="Alice <alice@example.com>", headers=ODD_HEADERS, body=ODD_BODY)
    content = relay_one(tern, hop, msg)
    tags = verify_all(content, records)
    assert sorted((t["d"], t["s"], t["a"], t["c"]) for t in tags) == [
        ("example.com", "ed1", "ed25519-sha256", "relaxed/relaxed"),
        ("example.com", "rsa1", "rsa-sha256", "relaxed/relaxed")]
    for t in tags:
        assert "t" in t and "l" not in t
        assert t["h"].lower().count("from") == 2  # From signed once more than it appears
        assert "x-repeated" not in t["h"].lower()
    # The signatures are in front of the message (before or after Tern's Received), the rest as sent.
    rest = re.sub(rb"(?ims)^(DKIM-Signature|Received):.*?(?=^\S)", b"", content, count=3)
    assert rest == msg
    # The verifier really checks: one changed byte of the body, or of a signed header, fails.
    altered = content.replace(b"end\r\n", b"End\r\n")
    assert not verifies(altered, 0, records) and not verifies(altered, 1, records)
    altered = content.replace(b"over two lines", b"over 2 lines")
    assert not verifies(altered, 0, records) and not verifies(altered, 1, records)


def test_simple_canonicalization_and_an_empty_body(signing_relay, keys):
    _, records, _ = keys
    start, hop = signing_relay
    tern = start()
    for body in [b"", ODD_BODY]:
        content = relay_one(tern, hop, make_message(sender="bob@simple.test", headers=ODD_HEADERS, body=body))
        tags = verify_all(content, records)
        assert sorted((t["s"], t["c"]) for t in tags) == [("s1", "simple/simple"), ("s2", "simple/simple")]


def test_a_subdomain_is_signed_by_its_closest_configured_parent(signing_relay, keys):
    _, records, _ = keys
    start, hop = signing_relay
    tern = start()
    content = relay_one(tern, hop, make_message(sender="news@Letters.News.Example.COM"))
    tags = verify_all(content, records)
    assert len(tags) == 2 and {t["d"] for t in tags} == {"example.com"}


def test_a_message_of_several_megabytes_is_signed_on_the_spilled_path(signing_relay, keys):
    _, records, _ = keys
    start, hop = signing_relay
    tern = start()
    body = b"".join(b"%07d .dot later and 8-bit \xc3\xa9 text in a long line of the body\r\n" % i
                    for i in range(60000))
    body += b".\r\n..\r\n"
    msg = make_message(sender="alice@example.com", body=body)
    assert len(msg) > 3_000_000
    content = relay_one(tern, hop, msg)
    assert len(verify_all(content, records)) == 2
    _, rest = split_received(re.sub(rb"(?ims)^DKIM-Signature:.*?(?=^\S)", b"", content, count=2))
    assert rest == msg


def test_a_from_domain_without_a_key_passes_unsigned_and_byte_identical(signing_relay, keys):
    start, hop = signing_relay
    tern = start()
    msg = make_message(sender="carol@nokey.test", headers=ODD_HEADERS, body=ODD_BODY)
    content = relay_one(tern, hop, msg)
    assert signatures(content) == []
    _, rest = split_received(content)
    assert rest == msg


def test_mail_from_an_untrusted_client_to_accept_domains_is_not_signed(signing_relay, keys):
    start, hop = signing_relay
    tern = start(server={"relay_networks": ["127.0.0.1/32"], "accept_domains": ["inbound.test"]})
    msg = make_message(sender="alice@example.com", to="someone@inbound.test")
    content = relay_one(tern, hop, msg, rcpt="someone@inbound.test", source="127.0.0.2")
    assert signatures(content) == []
    _, rest = split_received(content)
    assert rest == msg
    # From relay_networks, the same message is signed.
    content = relay_one(tern, hop, msg, rcpt="someone@inbound.test")
    assert len(signatures(content)) == 2


def test_a_second_tern_hop_keeps_the_signatures_valid(signing_relay, keys):
    _, records, _ = keys
    start, hop = signing_relay
    far = start(dkim_tables=[])  # relays to the hop, signs nothing
    near = start(routes={"*": f"[127.0.0.1]:{far.port}"})
    msg = make_message(sender="alice@example.com", headers=ODD_HEADERS, body=ODD_BODY)
    content = relay_one(near, hop, msg)
    assert content.count(b"Received: from") >= 2
    assert len(verify_all(content, records)) == 2


def test_a_route_fixes_the_signing_domain_of_the_mail_it_carries(signing_relay, keys):
    _, records, _ = keys
    start, hop = signing_relay
    to_hop = f"[127.0.0.1]:{hop.port}"
    tern = start(routes={"partner.test": to_hop, "*": to_hop}, dkim_extra={"routes": {"partner.test": "simple.test"}})
    # From a domain without keys, to the route: simple.test's two keys sign.
    msg = make_message(sender="carol@nokey.test", to="p@partner.test", body=ODD_BODY)
    tags = verify_all(relay_one(tern, hop, msg, rcpt="p@Partner.Test"), records)
    assert sorted((t["d"], t["s"]) for t in tags) == [("simple.test", "s1"), ("simple.test", "s2")]
    # The same message elsewhere: the From: domain decides, and it has no keys.
    assert signatures(relay_one(tern, hop, msg, rcpt="q@x.test")) == []
    # From example.com to the route: only the route's domain signs, not the From: domain's keys.
    msg = make_message(sender="alice@example.com", to="p@partner.test")
    tags = verify_all(relay_one(tern, hop, msg, rcpt="p@partner.test"), records)
    assert {t["d"] for t in tags} == {"simple.test"}


def test_an_authenticated_user_signs_with_a_fixed_domain(signing_relay, keys, certs, users_file):
    from test_tls import TLSConn
    from tls_helpers import client_context
    import base64
    _, records, _ = keys
    start, hop = signing_relay
    tern = start(server={"relay_networks": ["127.0.0.1/32"]}, dkim_extra={"users": {"bob": "simple.test"}},
                 extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])},
                               "auth": {"users_file": str(users_file)}})
    msg = make_message(sender="Alice <alice@example.com>", headers=ODD_HEADERS, body=ODD_BODY)

    def submit(user: str) -> bytes:
        from conftest import USERS
        before = len(hop.transactions)
        with TLSConn(tern.port, source="127.0.0.2") as c:  # outside relay_networks: signed only as a user
            c.greeting()
            c.ehlo()
            assert_reply(c.cmd("STARTTLS"), 220)
            c.starttls(client_context(certs["ca"]))
            c.ehlo()
            token = base64.b64encode(f"\0{user}\0{USERS[user]}".encode()).decode()
            assert_reply(c.cmd("AUTH PLAIN " + token), 235, "2.7.0")
            assert_reply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
            assert_reply(c.cmd("RCPT TO:<rcpt@x.test>"), 250)
            assert_reply(c.data(msg), 250, "2.0.0")
            c.cmd("QUIT")
        return hop.wait_for(before + 1, timeout=30, on_timeout=lambda: tern.stderr()[-3000:])[before].content

    # bob's mail is signed by his fixed domain, whatever its From: says; alice's by the From: domain.
    tags = verify_all(submit("bob"), records)
    assert sorted((t["d"], t["s"]) for t in tags) == [("simple.test", "s1"), ("simple.test", "s2")]
    tags = verify_all(submit("alice"), records)
    assert sorted((t["d"], t["s"]) for t in tags) == [("example.com", "ed1"), ("example.com", "rsa1")]


def test_an_unparsable_header_block_from_a_signed_domain_is_451_and_logged(signing_relay, keys):
    start, hop = signing_relay
    tern = start()
    bad = b"From: alice@example.com\r\nthis line has no colon\r\nSubject: x\r\n\r\nbody\r\n"
    with SMTPConn(tern.port) as c:
        c.greeting()
        c.ehlo("client.test")
        assert_reply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.cmd("RCPT TO:<rcpt@x.test>"), 250)
        reply = c.data(bad)
        assert reply.code == 451 and reply.lines[-1].startswith("4.3.0"), reply
        assert_reply(c.cmd("QUIT"), 221)
    line = tern.wait_log("DKIM signing failed")
    assert "unparsable header block" in line and re.search(r"\b[0-9A-F]{14}\b", line), line
    # The same header block from a domain without keys passes unsigned.
    ok = bad.replace(b"example.com", b"nokey.test")
    content = relay_one(tern, hop, ok)
    assert signatures(content) == [] and split_received(content)[1] == ok
    assert tern.admin_get("/queue")[0] == 200


def test_a_key_of_the_wrong_type_is_a_config_error_naming_the_file(tmp_path, keys):
    tables, _, _ = keys
    wrong = dict(tables[1], algorithm="rsa-sha256")  # an Ed25519 key
    cfg = tmp_path / "tern.toml"
    cfg.write_text('[spool]\npath = "%s"\n[[dkim.sign]]\n' % (tmp_path / "spool")
                   + "".join(f'{k} = "{v}"\n' for k, v in wrong.items()))
    p = subprocess.run([str(TERN_BIN), "check-config", str(cfg)], capture_output=True, timeout=30)
    err = p.stderr.decode()
    assert p.returncode != 0
    assert "dkim.sign[0].key" in err and wrong["key"] in err and "Ed25519" in err, err


def test_sighup_with_a_missing_key_keeps_the_old_keys(signing_relay, keys, tmp_path):
    _, records, d = keys
    start, hop = signing_relay
    key = tmp_path / "copy.pem"
    key.write_bytes((d / "rsa1.example.com.pem").read_bytes())
    tern = start(dkim_tables=[{"domain": "example.com", "selector": "rsa1", "key": str(key)}])
    key.unlink()
    line = tern.hup("reload refused")
    assert "dkim.sign[0].key" in line and str(key) in line, line
    content = relay_one(tern, hop, make_message(sender="alice@example.com"))
    assert [t["s"] for t in verify_all(content, records)] == ["rsa1"]
    # The key back and an Ed25519 table added: the reload takes both, the next message has two signatures.
    key.write_bytes((d / "rsa1.example.com.pem").read_bytes())
    text = tern.config_path.read_text()
    one = '{ domain = "example.com", selector = "rsa1", key = "%s" }' % key
    assert one in text, text
    tern.config_path.write_text(text.replace(one, one + ', { domain = "example.com", selector = "ed1", key = "%s", '
                                             'algorithm = "ed25519-sha256" }' % (d / "ed1.example.com.pem")))
    line = tern.hup("reloaded ")
    assert "dkim" in line, line
    content = relay_one(tern, hop, make_message(sender="alice@example.com"))
    assert sorted(t["s"] for t in verify_all(content, records)) == ["ed1", "rsa1"]


def test_dkim_check_compares_the_published_records_with_the_keys(tmp_path, start_dns):
    """`tern dkim check` looks the records up through [dns] (dnsmasq on loopback): a published record
    matches, another key's record, a revoked key and a missing record each fail and say so."""
    keys = {}
    for sel, gen in [("r1", "rsa-2048"), ("e1", "ed25519"), ("other", "ed25519"), ("gone", "ed25519"),
                     ("revoked", "rsa-2048")]:
        path = tmp_path / f"{sel}.pem"
        p = subprocess.run([str(TERN_BIN), "dkim", "keygen", "--domain", "signer.test", "--selector", sel,
                            "--algorithm", gen, "--out", str(path)], capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        m = re.search(r'\( (.*) \)', p.stdout.decode())
        keys[sel] = (path, gen, re.findall(r'"([^"]*)"', m.group(1)))

    def txt(name: str, strings: list[str]) -> str:
        return f"--txt-record={name}," + ",".join(strings)

    records = [txt("r1._domainkey.signer.test", keys["r1"][2]),   # RSA: two strings of <= 255
               txt("e1._domainkey.signer.test", keys["e1"][2]),
               txt("other._domainkey.signer.test", keys["e1"][2]),  # e1's key, not other's
               txt("revoked._domainkey.signer.test", ["v=DKIM1; k=rsa; p="])]
    assert len(keys["r1"][2]) == 2
    dns = start_dns(records)
    alg = {"rsa-2048": "rsa-sha256", "ed25519": "ed25519-sha256"}

    def config(sels: list[str]) -> Path:
        cfg = tmp_path / f"{'-'.join(sels)}.toml"
        text = f'[dns]\nservers = ["127.0.0.1:{dns.port}"]\n'
        for sel in sels:
            path, gen, _ = keys[sel]
            text += (f'[[dkim.sign]]\ndomain = "signer.test"\nselector = "{sel}"\nkey = "{path}"\n'
                     f'algorithm = "{alg[gen]}"\n')
        cfg.write_text(text)
        return cfg

    def check(cfg: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(TERN_BIN), "dkim", "check", "--config", str(cfg), *args],
                              capture_output=True, timeout=60)

    p = check(config(["r1", "e1"]))
    out = p.stdout.decode()
    assert p.returncode == 0, (out, p.stderr.decode())
    assert re.search(r"(?m)^ok +r1\._domainkey\.signer\.test \(rsa-sha256", out), out
    assert re.search(r"(?m)^ok +e1\._domainkey\.signer\.test \(ed25519-sha256", out), out

    p = check(config(["r1", "other", "gone", "revoked"]))
    out = p.stdout.decode()
    assert p.returncode == 1, (out, p.stderr.decode())
    assert re.search(r"(?m)^ok +r1\.", out), out
    assert re.search(r"(?m)^FAIL other\._domainkey\.signer\.test: p= is another key$", out), out
    assert re.search(r"(?m)^FAIL gone\._domainkey\.signer\.test: no record", out), out
    assert re.search(r"(?m)^FAIL revoked\._domainkey\.signer\.test: p= is empty", out), out

    p = check(config(["r1", "other"]), "--domain", "nosuch.test")
    assert p.returncode == 78 and b"no [[dkim.sign]] table for nosuch.test" in p.stderr, p.stderr


def test_smtputf8_mail_with_utf8_headers_is_signed(signing_relay, keys):
    _, records, _ = keys
    start, hop = signing_relay
    tern = start()
    msg = make_message(sender="Jöran Ünïcode <jöran@example.com>", subject="Grüße, 你好",
                       to="ünï@x.test", body="Grüße\r\n".encode())
    before = len(hop.transactions)
    send_message(tern.port, "jöran@example.com", ["ünï@x.test"], msg, mail_params="SMTPUTF8")
    t = hop.wait_for(before + 1, timeout=30, on_timeout=lambda: tern.stderr()[-3000:])[before]
    assert "SMTPUTF8" in [o.upper() for o in t.mail_options], t.mail_options
    assert len(verify_all(t.content, records)) == 2
    altered = t.content.replace("你好".encode(), "您好".encode())
    assert not verifies(altered, 0, records) and not verifies(altered, 1, records)


def test_eight_bit_mail_is_signed_in_its_seven_bit_form(signing_relay, keys, start_sink, tmp_path):
    """RFC 6376 §5.3: an 8BITMIME message that Tern signs is made 7-bit MIME first, so the signature
    holds at a next hop with 8BITMIME and at one without it (which would otherwise get a converted copy
    whose body no longer matches)."""
    _, records, _ = keys
    start, hop = signing_relay
    keep = tmp_path / "kept"
    sink = start_sink(["--keep-path", str(keep), "--disable", "8bitmime"])
    tern = start(routes={"seven.test": f"[127.0.0.1]:{sink.port}", "*": f"[127.0.0.1]:{hop.port}"})
    text = "Grüße aus Köln, ça coûte trop cher.\r\n.a dot line\r\n"
    msg = make_message(sender="alice@example.com", headers=[
        ("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=iso-8859-1"),
        ("Content-Transfer-Encoding", "8bit")], body=text.encode("latin-1"))
    send_message(tern.port, SENDER, ["rcpt@x.test"], msg, mail_params="BODY=8BITMIME")
    send_message(tern.port, SENDER, ["rcpt@seven.test"], msg, mail_params="BODY=8BITMIME")
    got = hop.wait_for(1, timeout=30, on_timeout=lambda: tern.stderr()[-3000:])
    wait_until(lambda: keep.exists() and len(list(keep.glob("*.eml"))) >= 1, 30, "the message at the 7-bit sink")
    at_sink = next(keep.glob("*.eml")).read_bytes()
    for content in [got[0].content, at_sink]:
        assert all(b < 0x80 for b in content), "an 8-bit octet in the signed message"
        assert len(verify_all(content, records)) == 2
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
        assert parsed.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")
    # The same message without BODY=8BITMIME is signed as it came (nothing declared it 8-bit MIME).
    send_message(tern.port, SENDER, ["rcpt@x.test"], msg)
    plain = hop.wait_for(2, timeout=30)[1].content
    assert len(verify_all(plain, records)) == 2
    _, rest = split_received(re.sub(rb"(?ims)^DKIM-Signature:.*?(?=^\S)", b"", plain, count=2))
    assert rest == msg


def test_injected_mail_is_signed_as_an_authenticated_users(signing_relay, keys, tmp_path):
    """The injection API's mail is the relay's own users' mail: signed (issue 19's same policy as SMTP)."""
    from test_inject import Injector, make_token
    _, records, _ = keys
    start, hop = signing_relay
    tokens = tmp_path / "tokens"
    token = make_token(tokens)
    port = free_port()
    tern = start(extra_tables={"http": {"listen": f"127.0.0.1:{port}", "tokens_file": str(tokens)}})
    tern.wait_log(f"injection API (POST /api/inject) on 127.0.0.1:{port}", timeout=10)
    inj = Injector(tern, port, token, tokens, tmp_path / "none.jsonl")
    inj.ok({"envelope_sender": SENDER, "recipients": [{"email": "rcpt@x.test", "name": "Ré"}],
            "content": {"from": {"email": "author@example.com", "name": "Author"}, "subject": "signed",
                        "text_body": "Grüße\n", "html_body": "<p>hi</p>"}})
    (t,) = hop.wait_for(1, timeout=30, on_timeout=lambda: tern.stderr()[-3000:])
    tags = verify_all(t.content, records)
    assert sorted(x["s"] for x in tags) == ["ed1", "rsa1"], tags
    assert all(x["d"] == "example.com" for x in tags), tags
