"""`tern trace`: the Received chain of a message that went through two real Terns reads clean;
hand-made chains (a forged hop, dates out of order, an unparsable field) are flagged with exit 1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import CLIENT_HELO, TERN_BIN, make_message, send_message, wait_until



def trace(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}")
    return subprocess.run([str(TERN_BIN), "trace", *args], input=stdin, capture_output=True, timeout=30)


def test_message_relayed_through_two_terns_traces_clean(start_tern):
    # B keeps what it receives; A delivers everything to B. B's copy then carries two Received
    # fields: A's (from the client) and B's (from A, which says EHLO with its hostname).
    b = start_tern(top={"hostname": "relay-b.test"})
    a = start_tern(top={"hostname": "relay-a.test"},
                   delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
                   extra_tables={"routes": {"*": f"[127.0.0.1]:{b.port}"}})
    send_message(a.port, "alice@example.test", ["bob@example.test"], make_message(subject="trace me"))
    wait_until(lambda: b.queued(), 30, "the message to reach B's spool")
    [queue_id] = b.queued()
    path = b.spool.parent / f"{queue_id}.msg"  # the message may be in B's journal: a file of its own
    path.write_bytes(b.msg(queue_id))

    p = trace(str(path))
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert "2 hops, nothing flagged" in out, out
    hop1, hop2 = out.split("hop 2")[0], out.split("hop 2")[1]
    assert f"from {CLIENT_HELO} (unknown [127.0.0.1])" in hop1 and "by    relay-a.test (Tern)" in hop1, out
    assert "from relay-a.test (unknown [127.0.0.1])" in hop2 and "by    relay-b.test (Tern)" in hop2, out
    assert f"id    {queue_id}" in hop2, out
    assert "(delay " in hop2, out

    # The same from stdin, with "-" and with no argument.
    data = path.read_bytes()
    assert trace("-", stdin=data).stdout == p.stdout
    assert trace(stdin=data).returncode == 0


CLEAN = [
    "Received: from mx.example.org (mx.example.org [192.0.2.25])",
    "\tby relay.test (Tern) with ESMTP id 0661312EF1B4A7",
    "\tfor <bob@relay.test>; Thu, 26 Nov 2026 16:46:20 +0000",
    "Received: from [198.51.100.7] (helo=laptop.example.com)",
    "\tby mx.example.org with esmtpsa (TLS1.3) (Exim 4.96)",
    "\t(envelope-from <alice@example.com>) id 1kABCD-0001Ab-Cd; Thu, 26 Nov 2026 16:46:14 +0000",
]


def message(lines: list[str]) -> bytes:
    return ("\r\n".join(lines + ["Subject: test", "", "body", ""])).encode()


def test_hand_made_clean_chain(tmp_path: Path):
    f = tmp_path / "clean.eml"
    f.write_bytes(message(CLEAN))
    p = trace(str(f))
    assert p.returncode == 0, p.stdout.decode()
    assert "2 hops, nothing flagged" in p.stdout.decode()
    assert "(delay 6s)" in p.stdout.decode()


@pytest.mark.parametrize("lines,expect", [
    # A forged line below the spammer's own hop: mx.example.org says it got the message from
    # a dial-up address calling itself bank.example, but the line below claims mail.bank.example.
    ([
        "Received: from bank.example (dsl-66.isp.example [203.0.113.66])",
        "\tby mx.example.org (Postfix) with ESMTP id 7AB; Thu, 26 Nov 2026 16:46:20 +0000",
        "Received: from workstation (internal [10.0.0.5])",
        "\tby mail.bank.example (Postfix) with ESMTP id 11A; Thu, 26 Nov 2026 16:46:10 +0000",
    ], 'does not match by "mail.bank.example" of hop 1'),
    ([
        "Received: from b.example (b.example [192.0.2.2]) by c.example (Postfix) with ESMTP id 3;",
        "\tThu, 26 Nov 2026 16:40:00 +0000",
        "Received: from a.example (a.example [192.0.2.1]) by b.example (Postfix) with ESMTP id 2;",
        "\tThu, 26 Nov 2026 16:46:14 +0000",
    ], "date goes backwards: 6m14s before hop 1"),
    ([
        "Received: from a.example (a.example [192.0.2.1]) by b.example with SMTP id 2;",
        "\tFri, 1 Jan 2100 00:00:00 +0000",
    ], "in the future"),
    (["Received: this is not a trace field"], "cannot parse"),
    (["Received: from a.example by b.example with SMTP; 31 Feb 2026 10:00:00 +0000"],
     'cannot read the date "31 Feb 2026 10:00:00 +0000"'),
])
def test_hand_made_chains_are_flagged(tmp_path: Path, lines, expect):
    f = tmp_path / "m.eml"
    f.write_bytes(message(lines))
    p = trace(str(f))
    out = p.stdout.decode()
    assert p.returncode == 1, out
    assert expect in out, out
    assert "flagged" in out.splitlines()[-1]


def test_unreadable_file(tmp_path: Path):
    p = trace(str(tmp_path / "missing.eml"))
    assert p.returncode == 2
    assert "missing.eml" in p.stderr.decode()


# The classic forged chain (issue 13): mail.bieberdorf.edu, the receiving site's own MTA, recorded a
# client that said HELO galangal.org from an address whose reverse name is turmeric.com. The two
# hops below it were written by turmeric.com and name each other, so a chain check alone passes.
CLASSIC = [
    "Received: from galangal.org (turmeric.com [104.128.23.115])",
    "\tby mail.bieberdorf.edu (8.8.8.5); Thu, 26 Nov 2026 16:46:20 +0000",
    "Received: from lemongrass.org by galangal.org (8.7.3); Thu, 26 Nov 2026 16:46:17 +0000",
    "Received: from graprao.com by lemongrass.org (8.6.4); Thu, 26 Nov 2026 16:46:14 +0000",
]


def test_classic_forged_chain_is_flagged_naming_the_real_sender(tmp_path: Path):
    f = tmp_path / "forged.eml"
    f.write_bytes(message(CLASSIC))
    p = trace(str(f))
    out = p.stdout.decode()
    assert p.returncode == 1, out
    assert ("HELO galangal.org, but mail.bieberdorf.edu recorded the client as turmeric.com [104.128.23.115]: "
            "the message came from turmeric.com [104.128.23.115]") in out, out
    hop1, rest = out.split("hop 2", 1)
    hop2, hop3 = rest.split("hop 3", 1)
    for hop in (hop1, hop2):
        assert "trust unverified: written by the sender, turmeric.com [104.128.23.115]" in hop, out
    assert "trust trusted; its client is the sender, turmeric.com [104.128.23.115]" in hop3, out
    assert out.splitlines()[-1] == ("3 hops, 1 flagged; hops 1-2 unverified "
                                    "(written by the sender, turmeric.com [104.128.23.115])"), out


def test_consistent_classic_chain_passes(tmp_path: Path):
    f = tmp_path / "consistent.eml"
    f.write_bytes(message([CLASSIC[0].replace("(turmeric.com", "(galangal.org")] + CLASSIC[1:]))
    p = trace(str(f))
    out = p.stdout.decode()
    assert p.returncode == 0, out
    assert out.splitlines()[-1] == ("3 hops, nothing flagged; hops 1-2 unverified "
                                    "(written by the sender, galangal.org [104.128.23.115])"), out


def test_trusting_the_sender_moves_the_boundary(tmp_path: Path):
    f = tmp_path / "forged.eml"
    f.write_bytes(message(CLASSIC))
    p = trace("--trust", "mx.other.test,104.128.23.115", str(f))
    out = p.stdout.decode()
    assert p.returncode == 0, out
    assert out.splitlines()[-1] == "3 hops, nothing flagged; hop 1 unverified (written by the sender, lemongrass.org)"


def test_control_characters_in_a_header_are_escaped(tmp_path: Path):
    f = tmp_path / "escape.eml"
    f.write_bytes(message(["Received: from a.example (a.example [192.0.2.1]) by b.example (\x1b[2J\x07evil\r) "
                           "with SMTP; Thu, 26 Nov 2026 16:46:14 +0000"]))
    p = trace(str(f))
    out = p.stdout.decode()
    assert b"\x1b" not in p.stdout and b"\x07" not in p.stdout and b"\r" not in p.stdout, out
    assert "by    b.example (\\u{1B}[2J\\u{7}evil\\u{D})" in out, out


def test_invisible_characters_in_a_header_are_escaped(tmp_path: Path):
    """Bidi overrides and isolates, zero-width characters, a BOM, U+2028 and C1 controls draw nothing
    but change what the postmaster reads ("\u202egpj.exe" shows as "exe.jpg"): escaped too (issue 14)."""
    f = tmp_path / "invisible.eml"
    f.write_bytes(message(["Received: from a.example (a.example [192.0.2.1]) by b.example "
                           "(\u202egpj.exe \u2066x\u2069 \u200bz\ufeff\u2028y\u2029 \u009b2J \u00adé) "
                           "with SMTP; Thu, 26 Nov 2026 16:46:14 +0000"]))
    p = trace(str(f))
    out = p.stdout.decode()
    for raw in "\u202e\u2066\u2069\u200b\ufeff\u2028\u2029\u009b\u00ad":
        assert raw not in out, (hex(ord(raw)), out)
    assert ("by    b.example (\\u{202E}gpj.exe \\u{2066}x\\u{2069} \\u{200B}z\\u{FEFF}\\u{2028}y\\u{2029} "
            "\\u{9B}2J \\u{AD}é)") in out, out


def test_the_hostname_of_a_tern_config_is_trusted(tmp_path: Path):
    # A mailbox server above our relay: the top hop's client is turmeric.com, which is our Tern.
    cfg = tmp_path / "tern.toml"
    cfg.write_text('hostname = "turmeric.com"\n')
    f = tmp_path / "forged.eml"
    f.write_bytes(message(CLASSIC))
    p = trace("--config", str(cfg), str(f))
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert out.splitlines()[-1] == "3 hops, nothing flagged; hop 1 unverified (written by the sender, lemongrass.org)"
    bad = trace("--config", str(tmp_path / "missing.toml"), str(f))
    assert bad.returncode == 78 and "missing.toml" in bad.stderr.decode(), bad.stderr
