"""Configuration: errors are reported and fatal; no --config means the embedded default."""

import subprocess
import time

import pytest

from conftest import (REPO, TERN_BIN, SMTPConn, Tern, assert_reply, free_port, make_message, port_is_free, read_journal,
                      queue_id_of)


def run_expecting_failure(args, cwd, timeout=15):
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}")
    p = subprocess.Popen([str(TERN_BIN), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"tern {' '.join(args)} kept running with a bad config; stderr:\n{err.decode(errors='replace')}")
    assert p.returncode != 0, f"tern {' '.join(args)} exited 0 with a bad config"
    return err.decode(errors="replace")


def bad_config(tmp_path, **kw):
    t = Tern(tmp_path / "bad", **kw)
    return t


def test_unknown_key_in_section(tmp_path):
    t = bad_config(tmp_path, server={"max_recipents": 10})  # sic
    err = run_expecting_failure(["serve", "--config", str(t.config_path)], t.dir)
    assert "server.max_recipents" in err, err


def test_unknown_top_level_key(tmp_path):
    t = bad_config(tmp_path, top={"frobnicate": True})
    err = run_expecting_failure(["serve", "--config", str(t.config_path)], t.dir)
    assert "frobnicate" in err, err


def test_unknown_section(tmp_path):
    t = bad_config(tmp_path, extra_tables={"bogus": {"x": 1}})
    err = run_expecting_failure(["serve", "--config", str(t.config_path)], t.dir)
    assert "bogus" in err, err


@pytest.mark.parametrize("key,value", [("max_recipients", "many"), ("vrfy", "yes"), ("max_connections", True),
                                       ("relay_networks", 5)])
def test_wrong_type(tmp_path, key, value):
    t = bad_config(tmp_path, server={key: value})
    err = run_expecting_failure(["serve", "--config", str(t.config_path)], t.dir)
    assert f"server.{key}" in err, err


def test_bad_duration(tmp_path):
    t = bad_config(tmp_path, server={"command_timeout": "five minutes"})
    err = run_expecting_failure(["serve", "--config", str(t.config_path)], t.dir)
    assert "server.command_timeout" in err, err


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('hostname = "relay.test"\n[server\nlisten = [\n')
    err = run_expecting_failure(["serve", "--config", str(path)], tmp_path)
    assert err.strip(), "no message for a TOML syntax error"


def test_missing_config_file(tmp_path):
    path = tmp_path / "does-not-exist" / "tern.toml"
    err = run_expecting_failure(["serve", "--config", str(path)], tmp_path)
    assert str(path) in err, err


def test_default_config_without_flag(tmp_path):
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}")
    if not port_is_free(2525):
        pytest.skip("127.0.0.1:2525 is in use on this machine; the embedded default config listens there")
    log = open(tmp_path / "stderr.log", "wb")
    p = subprocess.Popen([str(TERN_BIN), "serve"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert p.poll() is None, f"tern serve exited {p.returncode}:\n{(tmp_path / 'stderr.log').read_text()}"
            try:
                c = SMTPConn(2525, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline, "nothing listens on 127.0.0.1:2525"
                time.sleep(0.05)
        with c:
            assert_reply(c.read_reply(), 220)
            c.ehlo()
            assert_reply(c.cmd("MAIL FROM:<s@client.test>"), 250)
            r = c.cmd("RCPT TO:<postmaster>")
            if r.code == 250:
                msg = make_message(subject="default config")
                qid = queue_id_of(assert_reply(c.data(msg), 250, "2.0.0"))
                spool = tmp_path / "var" / "spool"
                assert qid in read_journal(spool) or (spool / "queue" / qid[-1] / f"{qid}.msg").exists(), \
                    "message neither in ./var/spool/journal nor in ./var/spool/queue"
            assert_reply(c.cmd("QUIT"), 221)
        assert (tmp_path / "var" / "spool").is_dir(), "embedded default spool ./var/spool not created"
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def test_etc_config_is_valid(tmp_path):
    """etc/tern.toml documents every key; it must load (we point its listen and spool at tmp)."""
    src = REPO / "etc" / "tern.toml"
    if not src.exists():
        pytest.fail("etc/tern.toml is missing")
    text = src.read_text()
    assert "127.0.0.1:2525" in text and "var/spool" in text
    port = free_port()
    text = text.replace("127.0.0.1:2525", f"127.0.0.1:{port}")  # the relative spool lands in tmp_path
    cfg = tmp_path / "tern.toml"
    cfg.write_text(text)
    log = open(tmp_path / "stderr.log", "wb")
    p = subprocess.Popen([str(TERN_BIN), "serve", "--config", str(cfg)], cwd=tmp_path,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert p.poll() is None, f"tern exited {p.returncode} on etc/tern.toml:\n" \
                                     f"{(tmp_path / 'stderr.log').read_text()}"
            try:
                with SMTPConn(port, timeout=10) as c:
                    assert_reply(c.read_reply(), 220)
                break
            except OSError:
                assert time.monotonic() < deadline, "tern with etc/tern.toml did not listen"
                time.sleep(0.05)
    finally:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
