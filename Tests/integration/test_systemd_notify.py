"""systemd's readiness protocol (Type=notify, etc/systemd/tern.service): with $NOTIFY_SOCKET set, tern sends
READY=1 once its SMTP port accepts and STOPPING=1 when a stop begins, each a datagram to that unix
socket, a path or an abstract name ("@..."). The test plays the service manager's part."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import TERN_BIN, SMTPConn, Tern

WAIT = 20.0


def run_with_notify(tern: Tern, notify_socket: str) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket)
    with open(tern.stderr_path, "wb") as err:
        return subprocess.Popen([str(TERN_BIN), "serve", "--config", str(tern.config_path)], cwd=tern.dir,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=True)


def receive(sock: socket.socket, proc: subprocess.Popen, tern: Tern) -> str:
    sock.settimeout(WAIT)
    try:
        data = sock.recv(4096)
    except socket.timeout:
        pytest.fail(f"no notification within {WAIT}s (tern exit {proc.poll()}):\n{tern.stderr()}")
    return data.decode()


def ready_then_stopping(tmp_path, sock: socket.socket, address: str) -> None:
    tern = Tern(tmp_path / "tern")
    proc = run_with_notify(tern, address)
    try:
        assert receive(sock, proc, tern) == "READY=1"
        # Ready means accepting: the greeting comes at once, no retry.
        with SMTPConn(tern.port, timeout=5) as c:
            c.greeting()
            c.cmd("QUIT")
        assert "tern ready" in tern.stderr()
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(4096)  # nothing more until the stop
        proc.send_signal(signal.SIGTERM)
        assert receive(sock, proc, tern) == "STOPPING=1"
        assert proc.wait(timeout=WAIT) == 0, tern.stderr()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert "systemd notification" not in tern.stderr(), tern.stderr()


def test_ready_and_stopping_on_a_socket_path(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        ready_then_stopping(tmp_path, sock, path)


def test_ready_and_stopping_on_an_abstract_socket(tmp_path):
    name = f"tern-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        ready_then_stopping(tmp_path, sock, "@" + name)


def test_ready_comes_after_the_spool_is_recovered(tmp_path):
    """A spool with queued mail: READY=1 still comes only once the port accepts, and the queue is there."""
    tern = Tern(tmp_path / "tern")
    tern.start()
    qid = tern.send("alice@example.test", ["bob@example.test"], b"Subject: kept\r\n\r\nbody\r\n")
    tern.stop()
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        proc = run_with_notify(tern, path)
        try:
            assert receive(sock, proc, tern) == "READY=1"
            with SMTPConn(tern.port, timeout=5) as c:
                c.greeting()
            assert tern.queued() == [qid]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=WAIT) == 0


def test_a_notify_socket_that_cannot_be_used_is_logged_not_fatal(tmp_path):
    tern = Tern(tmp_path / "tern")
    proc = run_with_notify(tern, "relative/notify.sock")
    try:
        tern.proc = proc
        tern.wait_ready()
        assert "systemd notification off: NOTIFY_SOCKET relative/notify.sock: not a unix socket path" in tern.stderr()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    # A path where nobody listens: the notice is lost and said so; tern runs on.
    tern2 = Tern(tmp_path / "tern2")
    proc = run_with_notify(tern2, str(tmp_path / "nobody.sock"))
    try:
        tern2.proc = proc
        tern2.wait_ready()
        assert "systemd notification: sendto" in tern2.stderr()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
