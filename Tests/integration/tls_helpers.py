"""Certificates, users files and TLS clients for the TLS and AUTH tests.

Certificates are made for each test session by the openssl command: a CA, a server certificate
signed by it for relay.test / mx.test / 127.0.0.1, and a self-signed one for the same names.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from conftest import TERN_BIN


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_certs(directory: Path) -> dict[str, Path]:
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _run(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=Tern Test CA",
          "-keyout", "ca-key.pem", "-out", "ca.pem"], d)
    _run(["openssl", "req", *ec, "-subj", "/CN=relay.test", "-keyout", "key.pem", "-out", "req.pem"], d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:relay.test,DNS:mx.test,DNS:localhost,IP:127.0.0.1\n")
    _run(["openssl", "x509", "-req", "-in", "req.pem", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
          "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "cert.pem"], d)
    _run(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=mx.test",
          "-addext", "subjectAltName=DNS:mx.test,DNS:relay.test,IP:127.0.0.1",
          "-keyout", "self-key.pem", "-out", "self.pem"], d)
    return {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem",
            "self_cert": d / "self.pem", "self_key": d / "self-key.pem"}


def tern_passwd(users_file: Path, user: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TERN_BIN), "passwd", "--file", str(users_file), user],
                          input=(password + "\n").encode(), capture_output=True, timeout=30)


def client_context(ca: Path) -> ssl.SSLContext:
    """Verifies the server against the test CA, like a careful mail client."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def issue_cert(certs: dict[str, Path], stem: str, sans: list[str], *, self_signed: bool = False) -> tuple[Path, Path]:
    """A certificate for `sans` (DNS names), signed by the test CA of make_certs (or self-signed)."""
    d = certs["ca"].parent
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    san = "subjectAltName=" + ",".join(f"DNS:{n}" for n in sans)
    cert, key = d / f"{stem}.pem", d / f"{stem}-key.pem"
    if self_signed:
        _run(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", f"/CN={sans[0]}", "-addext", san,
              "-keyout", key.name, "-out", cert.name], d)
    else:
        _run(["openssl", "req", *ec, "-subj", f"/CN={sans[0]}", "-keyout", key.name, "-out", f"{stem}.req"], d)
        (d / f"{stem}.cnf").write_text(san + "\n")
        _run(["openssl", "x509", "-req", "-in", f"{stem}.req", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
              "-CAcreateserial", "-days", "2", "-extfile", f"{stem}.cnf", "-out", cert.name], d)
    return cert, key


def make_rsa_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate for relay.test (RSA, so that TLS_RSA_* and ECDHE-RSA suites can be
    offered): (cert, key)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=relay.test",
                    "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
                   check=True, capture_output=True, timeout=120)
    return directory / "cert.pem", directory / "key.pem"


def s_client(port: int, cipher: str, starttls: bool = True) -> tuple[bool, str]:
    """A TLS 1.2 handshake offering only `cipher`: (negotiated, output)."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-cipher", cipher, "-brief"]
    if starttls:
        args += ["-starttls", "smtp"]
    r = subprocess.run(args, input=b"QUIT\r\n", capture_output=True, timeout=30)
    out = (r.stdout + r.stderr).decode(errors="replace")
    return r.returncode == 0 and f"Ciphersuite: {cipher}" in out, out
