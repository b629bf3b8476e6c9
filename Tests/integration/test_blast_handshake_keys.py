"""`tern blast --handshakes` against servers whose certificates hold different kinds of key. Blast
decodes EC keys with OpenSSL's built-in code (cheaper than the provider decoders in OpenSSL 3.0) and
every other kind as before: each kind must give full handshakes that both sides count alike.

Every run is bounded by a count and a subprocess timeout; nothing here is timed.
"""

from __future__ import annotations

import subprocess

import pytest

from test_blast_handshake import TLS_IN, blast_json, metrics

KEYS = {
    "ec-p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ec-p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "rsa": ["-newkey", "rsa:2048"],
    "ed25519": ["-newkey", "ed25519"],
}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_every_kind_of_server_key_gives_full_handshakes(start_tern, tmp_path, kind):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", *KEYS[kind], "-nodes", "-days", "2", "-subj", "/CN=relay.test",
                    "-addext", "subjectAltName=DNS:relay.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    tern = start_tern(extra_tables={"tls": {"certificate": str(cert), "key": str(key)}})
    before = metrics(tern)
    report = blast_json("--server", f"127.0.0.1:{tern.port}", "--handshakes", "20", "--concurrency", "4")
    h = report["handshakes"]
    assert (h["completed"], h["failed"]) == (20, 0), report["errors"]
    assert report["errors"] == []
    assert metrics(tern)[TLS_IN] - before.get(TLS_IN, 0) == 20
