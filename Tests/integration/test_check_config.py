"""`tern check-config PATH`: a valid file prints the effective config (defaults filled in) as TOML that
loads back the same; a bad one names the key and the line and exits 78."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, TERN_BIN


def check(path: Path, *args: str) -> subprocess.CompletedProcess:
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}")
    return subprocess.run([str(TERN_BIN), "check-config", *args, str(path)], capture_output=True, timeout=30)


def test_defaults_are_filled_in_and_the_output_loads_back(tmp_path: Path):
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n[server]\nmax_recipients = 7\nlisten = ["127.0.0.1:2600"]\n'
                 '[routes]\n"corp.example" = "[10.0.0.5]:25"\n[aliases]\npostmaster = "root@relay.test"\n')
    p = check(f)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    doc = tomllib.loads(out)  # a real TOML parser
    assert doc["hostname"] == "relay.test"
    assert doc["server"]["max_recipients"] == 7
    assert doc["server"]["listen"] == ["127.0.0.1:2600"]
    # Defaults the file left out (the built-in defaults, not etc/tern.toml's values).
    assert doc["server"]["max_connections"] == 20000
    assert doc["server"]["data_timeout"] == "5m"
    assert doc["spool"]["path"] == str(tmp_path / "var" / "spool")  # relative: from the file's directory
    assert doc["delivery"]["retry_schedule"] == ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
    assert doc["routes"] == {"corp.example": "[10.0.0.5]:25"}
    assert doc["aliases"] == {"postmaster": ["root@relay.test"]}
    # A fixed point: checking the printed config prints it again, byte for byte.
    again = tmp_path / "effective.toml"
    again.write_bytes(p.stdout)
    q = check(again)
    assert q.returncode == 0 and q.stdout == p.stdout


def test_shipped_config_is_valid():
    p = check(REPO / "etc" / "tern.toml")
    assert p.returncode == 0, p.stderr.decode()
    assert tomllib.loads(p.stdout.decode())["server"]["listen"] == ["127.0.0.1:2525"]


def test_quiet(tmp_path: Path):
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n')
    p = check(f, "--quiet")
    assert p.returncode == 0 and p.stdout == b""


@pytest.mark.parametrize("text,line,key", [
    ('hostname = "relay.test"\n\n[server]\nvrfy = false\nmax_recipents = 10\n', 5, "server.max_recipents"),
    ('hostname = "relay.test"\n[server]\nmax_recipients = "many"\n', 3, "server.max_recipients"),
    ('[delivery]\nretry_schedule = ["1m", "soon"]\n', 2, "delivery.retry_schedule"),
    ('[routes]\n"corp.example" = "[10.0.0.5]:99999"\n', 2, "routes.\"corp.example\""),
    ('hostname = "relay.test"\n[server\n', 2, None),  # TOML syntax error: the line, no key
])
def test_errors_name_key_and_line(tmp_path: Path, text, line, key):
    f = tmp_path / "tern.toml"
    f.write_text(text)
    p = check(f)
    err = p.stderr.decode()
    assert p.returncode == 78, err
    assert p.stdout == b""
    assert f"line {line}" in err, err
    if key:
        assert key in err, err
    assert str(f) in err, err


def test_missing_file(tmp_path: Path):
    p = check(tmp_path / "nope.toml")
    assert p.returncode == 78
    assert "nope.toml" in p.stderr.decode()


# --------------------------------------------------------------------------------------------
# check-config opens and parses every file serve would, names the key and the path, creates nothing.


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n[spool]\npath = "spool"\n' + text)
    return f


def refused(f: Path, key: str, *fragments: str) -> str:
    p = check(f)
    err = p.stderr.decode()
    assert p.returncode == 78, (p.returncode, err, p.stdout.decode())
    assert p.stdout == b""
    assert key in err, (key, err)
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_valid_files_pass_and_nothing_is_created(tmp_path: Path, certs, users_file):
    pw = tmp_path / "relay.pw"
    pw.write_text("secret\n")
    f = write(tmp_path, f'[tls]\ncertificate = "{certs["cert"]}"\nkey = "{certs["key"]}"\n'
                        f'[auth]\nusers_file = "{users_file}"\n'
                        '[routes]\n"*" = { next_hop = "[127.0.0.2]:587", auth_user = "r", auth_password_file = "relay.pw" }\n')
    p = check(f)
    assert p.returncode == 0, p.stderr.decode()
    assert not (tmp_path / "spool").exists(), "check-config created the spool"


def test_missing_certificate(tmp_path: Path, certs):
    f = write(tmp_path, f'[tls]\ncertificate = "{tmp_path}/none.pem"\nkey = "{certs["key"]}"\n')
    refused(f, "tls.certificate", f"{tmp_path}/none.pem", "No such file")


def test_unparsable_certificate(tmp_path: Path, certs):
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    f = write(tmp_path, f'[tls]\ncertificate = "garbage.pem"\nkey = "{certs["key"]}"\n')
    refused(f, "tls.certificate", f"{tmp_path}/garbage.pem")


def test_missing_key(tmp_path: Path, certs):
    f = write(tmp_path, f'[tls]\ncertificate = "{certs["cert"]}"\nkey = "{tmp_path}/none-key.pem"\n')
    refused(f, "tls.key", f"{tmp_path}/none-key.pem")


def test_key_that_does_not_match_its_certificate(tmp_path: Path, certs):
    f = write(tmp_path, f'[tls]\ncertificate = "{certs["cert"]}"\nkey = "{certs["self_key"]}"\n')
    refused(f, "tls.key", str(certs["self_key"]), "mismatch")


def test_missing_users_file(tmp_path: Path):
    f = write(tmp_path, '[auth]\nusers_file = "users"\n')
    refused(f, "auth.users_file", f"{tmp_path}/users")


def test_users_file_is_parsed(tmp_path: Path, users_file):
    (tmp_path / "users").write_text(users_file.read_text().splitlines()[0] + "\nbob:plaintext\n")
    f = write(tmp_path, '[auth]\nusers_file = "users"\n')
    refused(f, "auth.users_file", f"{tmp_path}/users", "line 2")


def test_missing_route_password_file(tmp_path: Path):
    f = write(tmp_path, '[routes]\n"*" = { next_hop = "[127.0.0.2]:587", auth_user = "r", auth_password_file = "relay.pw" }\n')
    refused(f, "auth_password_file", f"{tmp_path}/relay.pw")


def test_spool_whose_parent_does_not_exist(tmp_path: Path):
    # Outside the config's directory (as /nonexistent/deep/spool is for /etc/tern/tern.toml).
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "tern.toml"
    f.write_text(f'hostname = "relay.test"\n[spool]\npath = "{tmp_path}/nonexistent/deep/spool"\n')
    refused(f, "spool.path", f"{tmp_path}/nonexistent/deep/spool", "does not exist")
    assert not (tmp_path / "nonexistent").exists()


def test_bad_cipher_list(tmp_path: Path, certs):
    for key in ("ciphers", "submission_ciphers"):
        f = write(tmp_path, f'[tls]\ncertificate = "{certs["cert"]}"\nkey = "{certs["key"]}"\n{key} = "NO-SUCH-CIPHER"\n')
        refused(f, f"tls.{key}", "line 7")


# --------------------------------------------------------------------------------------------
# The rendering round-trips: a file key prints as itself; an inline secret does not load.


def test_password_file_is_printed_as_itself_and_round_trips(tmp_path: Path):
    (tmp_path / "relay.pw").write_text("s3cret\n")
    f = write(tmp_path, '[routes]\n"*" = { next_hop = "[127.0.0.2]:587", tls = "require", auth_user = "relay", '
                        'auth_password_file = "relay.pw" }\n')
    p = check(f)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    route = tomllib.loads(out)["routes"]["*"]
    assert route["auth_password_file"] == str(tmp_path / "relay.pw"), out
    assert "auth_password" not in {k for k in route if k != "auth_password_file"}, out
    assert "s3cret" not in out and "(hidden)" not in out
    # Loaded from elsewhere, the rendering is the same configuration: it prints the same again.
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "effective.toml").write_bytes(p.stdout)
    q = check(other / "effective.toml")
    assert q.returncode == 0 and q.stdout == p.stdout, q.stderr.decode()


def test_inline_password_rendering_does_not_load(tmp_path: Path):
    f = write(tmp_path, '[routes]\n"*" = { next_hop = "[127.0.0.2]:587", auth_user = "relay", auth_password = "s3cret" }\n')
    p = check(f)
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert "s3cret" not in out and "(hidden)" not in out
    assert "auth_password =" not in out
    assert "not printed" in out
    (tmp_path / "effective.toml").write_bytes(p.stdout)
    q = check(tmp_path / "effective.toml")
    assert q.returncode == 78, "a rendering without the inline password must not load"
    assert "auth_user" in q.stderr.decode()


def test_relative_paths_from_another_working_directory(tmp_path: Path, certs):
    chain = tmp_path / "chain"
    chain.mkdir()
    for name in ("cert", "key"):
        (chain / f"{name}.pem").write_bytes(certs[name].read_bytes())
    (chain / "host.toml").write_text('hostname = "relay.test"\n[spool]\npath = "spool"\n'
                                     '[tls]\ncertificate = "cert.pem"\nkey = "key.pem"\n')
    work = tmp_path / "work"
    work.mkdir()
    p = subprocess.run([str(TERN_BIN), "check-config", "../chain/host.toml"], cwd=work, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    doc = tomllib.loads(p.stdout.decode())
    assert Path(doc["tls"]["certificate"]).resolve() == (chain / "cert.pem").resolve()
    assert Path(doc["spool"]["path"]).resolve() == (chain / "spool").resolve()
