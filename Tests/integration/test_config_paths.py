"""Relative paths in a config are from the config file's directory (also on SIGHUP), `tern serve`
refuses to invent the spool's parents, and the built-in default is etc/tern.toml (issue 13)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HOSTNAME, TERN_BIN, SMTPConn, assert_reply, free_port, stop_process, wait_until



def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(TERN_BIN), *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    stop_process(p, timeout=10)


def wait_greeting(p: subprocess.Popen, port: int, log: Path) -> SMTPConn:
    deadline = time.monotonic() + 20
    while True:
        assert p.poll() is None, f"tern exited {p.returncode}:\n{log.read_text()}"
        try:
            return SMTPConn(port, timeout=10)
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}:\n{log.read_text()}"
            time.sleep(0.05)


def test_serve_with_relative_paths_from_another_directory(tmp_path, certs):
    chain = tmp_path / "chain"
    chain.mkdir()
    (chain / "cert.pem").write_bytes(certs["cert"].read_bytes())
    (chain / "key.pem").write_bytes(certs["key"].read_bytes())
    port, admin = free_port(), free_port()
    (chain / "host.toml").write_text(
        f'hostname = "{HOSTNAME}"\n[server]\nlisten = ["127.0.0.1:{port}"]\nreverse_dns = false\n'
        f'[spool]\npath = "spool"\n[tls]\ncertificate = "cert.pem"\nkey = "./key.pem"\n'
        f'[delivery]\nenabled = false\n[admin]\nlisten = "127.0.0.1:{admin}"\n')
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "stderr.log"
    p = start(["serve", "--config", "../chain/host.toml"], work, log)
    try:
        with wait_greeting(p, port, log) as c:
            assert_reply(c.read_reply(), 220)
            assert "STARTTLS" in c.ehlo().text
            assert_reply(c.cmd("QUIT"), 221)
        assert (chain / "spool" / "queue").is_dir(), "the spool is not beside the config"
        assert not (work / "spool").exists()
        # SIGHUP reads the same relative paths from the config's directory, not the working directory.
        before = log.read_text().count("reloaded: certificate")
        p.send_signal(signal.SIGHUP)
        wait_until(lambda: log.read_text().count("reloaded: certificate") > before, 20, "the reload's log line",
                   lambda: log.read_text())
        assert f"reloaded: certificate {chain}/cert.pem" in log.read_text()
        assert "reload failed" not in log.read_text() and "reload refused" not in log.read_text()
    finally:
        stop(p)


def test_serve_refuses_to_invent_the_spools_parents(tmp_path):
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "tern.toml"  # the spool is outside the config's directory
    deep = tmp_path / "nonexistent" / "deep" / "spool"
    f.write_text(f'hostname = "{HOSTNAME}"\n[server]\nlisten = ["127.0.0.1:{free_port()}"]\n'
                 f'[spool]\npath = "{deep}"\n[admin]\nlisten = ""\n')
    r = subprocess.run([str(TERN_BIN), "serve", "--config", str(f)], cwd=tmp_path, capture_output=True, timeout=20)
    err = r.stderr.decode()
    assert r.returncode == 78, (r.returncode, err)
    assert "spool.path" in err and str(deep) in err, err
    assert not (tmp_path / "nonexistent").exists(), "serve created the spool's parents"


def test_serve_creates_the_spool_directory_itself(tmp_path):
    f = tmp_path / "tern.toml"
    port = free_port()
    f.write_text(f'hostname = "{HOSTNAME}"\n[server]\nlisten = ["127.0.0.1:{port}"]\n'
                 f'[spool]\npath = "{tmp_path}/spool"\n[delivery]\nenabled = false\n[admin]\nlisten = ""\n')
    log = tmp_path / "stderr.log"
    p = start(["serve", "--config", str(f)], tmp_path, log)
    try:
        with wait_greeting(p, port, log) as c:
            assert_reply(c.read_reply(), 220)
        assert (tmp_path / "spool" / "queue").is_dir()
    finally:
        stop(p)


def test_empty_config_is_the_built_in_default(tmp_path):
    """An empty file, no --config and etc/tern.toml are one configuration (check-config prints it)."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    from conftest import REPO
    a = subprocess.run([str(TERN_BIN), "check-config", str(empty)], capture_output=True, timeout=30)
    (tmp_path / "tern.toml").write_bytes((REPO / "etc" / "tern.toml").read_bytes())
    b = subprocess.run([str(TERN_BIN), "check-config", str(tmp_path / "tern.toml")], capture_output=True, timeout=30)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout
    out = a.stdout.decode()
    assert 'listen = ["127.0.0.1:2525"]' in out
    assert 'hostname = "localhost"' not in out or subprocess.run(["hostname"], capture_output=True,
                                                                  text=True).stdout.strip() == "localhost"
    assert "root@localhost" not in out


def test_sink_config_paths_are_from_its_directory(tmp_path):
    """`tern sink --config ../chain/sink.toml`: keep_path = "mail" lands beside the file."""
    from conftest import make_message, send_message
    chain, work = tmp_path / "chain", tmp_path / "work"
    chain.mkdir()
    work.mkdir()
    port = free_port()
    (chain / "sink.toml").write_text(f'[sink]\nlisten = ["127.0.0.1:{port}"]\nmode = "keep"\nkeep_path = "mail"\n'
                                     f'metrics_listen = ""\n')
    log = tmp_path / "sink.log"
    p = start(["sink", "--config", "../chain/sink.toml"], work, log)
    try:
        with wait_greeting(p, port, log) as c:
            assert_reply(c.read_reply(), 220)
            assert_reply(c.cmd("QUIT"), 221)
        send_message(port, "a@client.test", ["b@x.test"], make_message(subject="kept"))
        wait_until(lambda: list((chain / "mail").glob("*.eml")) if (chain / "mail").is_dir() else [], 20,
                   "a kept message beside the sink's config", lambda: log.read_text())
        assert not (work / "mail").exists()
    finally:
        stop(p)
