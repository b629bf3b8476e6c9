"""`tern token`: a bearer token for the HTTP injection API, printed once; the file (mode 0600) keeps
only its SHA-256, one "NAME:sha256$HEX" line each; a name again gets a new token; --delete removes it."""

from __future__ import annotations

import hashlib
import stat
import subprocess

from conftest import TERN_BIN


def token(path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TERN_BIN, "token", "--file", str(path), *args], capture_output=True, text=True, timeout=30)


def test_tokens_are_printed_once_and_kept_as_hashes(tmp_path):
    path = tmp_path / "tokens"
    first = token(path, "app-1")
    assert first.returncode == 0, first
    secret = first.stdout.strip()
    assert secret.startswith("tern_") and len(secret) == 69
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"app-1:sha256${hashlib.sha256(secret.encode()).hexdigest()}\n"
    assert secret not in path.read_text()
    again = token(path, "app-1")
    assert again.stdout.strip() != secret and path.read_text().count("app-1:") == 1
    assert token(path, "other").returncode == 0
    assert token(path, "--delete", "app-1").returncode == 0
    assert path.read_text().startswith("other:sha256$") and "app-1" not in path.read_text()
    bad = token(path, "bad name")
    assert bad.returncode == 64 and "bad name" in bad.stderr
    (tmp_path / "broken").write_text("not a token line\n")
    broken = token(tmp_path / "broken", "x")
    assert broken.returncode == 65 and "line 1" in broken.stderr, broken
