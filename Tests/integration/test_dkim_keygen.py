"""`tern dkim keygen`: writes a PKCS#8 key (mode 0600, never over an existing file) and prints the TXT
record to publish. The record must match the key: openssl exports the same public key, and dkimpy
(an independent implementation) signs with the key file and verifies against the printed record."""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
from pathlib import Path

import dkim
import pytest

from conftest import TERN_BIN

MESSAGE = (b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: keygen\r\n"
           b"Date: Sun, 06 Dec 2026 03:00:00 +0000\r\n\r\nHello.\r\n")


def keygen(*args: str) -> subprocess.CompletedProcess:
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}")
    return subprocess.run([str(TERN_BIN), "dkim", "keygen", *args], capture_output=True, timeout=60)


def record_of(stdout: bytes, name: str) -> bytes:
    """The TXT record of the zone-file line: its character-strings joined (RFC 6376 §3.6.2.2)."""
    line = stdout.decode().strip()
    m = re.fullmatch(re.escape(name) + r"\. IN TXT \( (.*) \)", line)
    assert m, line
    strings = re.findall(r'"([^"]*)"', m.group(1))
    assert strings and all(len(s) <= 255 for s in strings)
    return "".join(strings).encode()


def openssl_der(key: Path, *args: str) -> bytes:
    return subprocess.run(["openssl", "pkey", "-in", str(key), *args, "-outform", "DER"],
                          capture_output=True, check=True).stdout


@pytest.mark.parametrize("algorithm", ["rsa-2048", "ed25519"])
def test_key_and_record_match(tmp_path: Path, algorithm: str):
    key = tmp_path / "example.com.pem"
    p = keygen("--domain", "Example.com", "--selector", "s2026", "--algorithm", algorithm, "--out", str(key))
    assert p.returncode == 0, p.stderr.decode()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert str(key).encode() in p.stderr
    record = record_of(p.stdout, "s2026._domainkey.example.com")
    tags = dict(t.strip().split("=", 1) for t in record.decode().split(";"))
    assert tags["v"] == "DKIM1"
    assert tags["k"] == ("ed25519" if algorithm == "ed25519" else "rsa")
    spki = openssl_der(key, "-pubout")
    if algorithm == "ed25519":
        assert base64.b64decode(tags["p"]) == spki[-32:]  # RFC 8463: the raw key
        # dkimpy takes the 32-byte seed, the end of the PKCS#8 DER.
        private = base64.b64encode(openssl_der(key)[-32:])
        alg = b"ed25519-sha256"
    else:
        assert base64.b64decode(tags["p"]) == spki  # SubjectPublicKeyInfo
        assert len(record) > 255  # so the split into strings was needed
        private = subprocess.run(["openssl", "pkey", "-in", str(key), "-traditional"],
                                 capture_output=True, check=True).stdout
        alg = b"rsa-sha256"
    sig = dkim.sign(MESSAGE, b"s2026", b"example.com", private, signature_algorithm=alg,
                    include_headers=[b"from", b"to", b"subject"])

    def dnsfunc(name, timeout=5):
        return record if name == b"s2026._domainkey.example.com." else None

    assert dkim.verify(sig + MESSAGE, dnsfunc=dnsfunc)
    # The check can fail: the message changed after signing does not verify.
    assert not dkim.verify(sig + MESSAGE.replace(b"Hello", b"Jello"), dnsfunc=dnsfunc)


def test_an_existing_file_is_never_overwritten(tmp_path: Path):
    key = tmp_path / "k.pem"
    assert keygen("--domain", "example.com", "--selector", "a", "--algorithm", "ed25519", "--out", str(key)).returncode == 0
    before = key.read_bytes()
    p = keygen("--domain", "example.com", "--selector", "a", "--algorithm", "ed25519", "--out", str(key))
    assert p.returncode == 73
    assert str(key).encode() in p.stderr and b"File exists" in p.stderr
    assert p.stdout == b""
    assert key.read_bytes() == before


def test_default_file_name(tmp_path: Path):
    p = subprocess.run([str(TERN_BIN), "dkim", "keygen", "--domain", "example.org", "--selector", "sel",
                        "--algorithm", "ed25519"], capture_output=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "example.org.sel.pem").exists()


@pytest.mark.parametrize("args", [
    ["--domain", "exa mple.com", "--selector", "s"],
    ["--domain", "example.com", "--selector", "s;x"],
])
def test_bad_names_are_usage_errors(tmp_path: Path, args: list[str]):
    p = keygen(*args, "--out", str(tmp_path / "k.pem"))
    assert p.returncode == 64
    assert not (tmp_path / "k.pem").exists()


def test_bad_algorithm_is_refused(tmp_path: Path):
    p = keygen("--domain", "example.com", "--selector", "s", "--algorithm", "rsa-1024", "--out", str(tmp_path / "k.pem"))
    assert p.returncode != 0
    assert b"rsa-2048" in p.stderr
    assert not (tmp_path / "k.pem").exists()
