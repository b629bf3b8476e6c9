"""Start-up failures an operator must understand at once (issue "Operate it"): a port already bound,
a spool locked by another instance, a spool that cannot be written. Each exits non-zero with a line
that names the cause; none hangs."""
from __future__ import annotations

import socket
import subprocess
import time

from conftest import TERN_BIN, free_port


def config(tmp_path, name: str, port: int, spool: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'''hostname = "relay.test"
[server]
listen = ["127.0.0.1:{port}"]
[spool]
path = "{spool}"
[admin]
listen = "127.0.0.1:{free_port()}"
[delivery]
enabled = false
''')
    return str(path)


def serve(cfg: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TERN_BIN), "serve", "--config", cfg], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30)


def test_port_already_in_use(tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        p = serve(config(tmp_path, "a", port, str(tmp_path / "spool")))
    finally:
        holder.close()
    assert p.returncode != 0
    err = p.stderr.decode()
    assert f"cannot listen on 127.0.0.1:{port}" in err and "address already in use" in err, err


def test_spool_locked_by_another_instance(tmp_path):
    spool = str(tmp_path / "spool")
    first = subprocess.Popen([str(TERN_BIN), "serve", "--config", config(tmp_path, "a", free_port(), spool)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "spool" / "lock").exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "first instance never took the spool lock"
            time.sleep(0.05)
        p = serve(config(tmp_path, "b", free_port(), spool))
        assert p.returncode != 0
        err = p.stderr.decode()
        assert f"spool {spool} is in use by another tern instance" in err, err
        assert first.poll() is None, "the first instance must keep running"
    finally:
        first.terminate()
        first.wait(timeout=20)


def test_spool_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spool's parent should be\n")
    p = serve(config(tmp_path, "a", free_port(), str(blocker / "spool")))
    assert p.returncode != 0
    err = p.stderr.decode()
    # Refused before anything is created, by the check `tern check-config` makes too.
    assert "spool.path" in err and f"{blocker} is not a directory" in err, err


def test_a_stop_while_the_thread_pool_uses_openssl_exits_cleanly(start_tern, certs, users_file):
    """With [auth] users_file, Tern builds a dummy scrypt hash on the thread pool at start-up (32 MiB,
    a fraction of a second). A stop at that moment used to end in SIGSEGV: exit() ran OpenSSL's atexit
    cleanup, then libuv's shutdown waited for the pool thread, whose scrypt found OpenSSL's locks freed.
    Each stop here lands while that hash is being built; every one must exit 0."""
    codes = []
    for _ in range(5):
        t = start_tern(server={"relay_networks": ["127.0.0.1/32"]},
                       extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])},
                                     "auth": {"users_file": str(users_file)}})
        t.proc.terminate()
        codes.append(t.proc.wait(timeout=30))
    assert codes == [0] * 5, f"exit codes {codes} (-11: SIGSEGV)"
