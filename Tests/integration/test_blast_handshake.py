"""`tern blast --handshake-only` (and --handshakes N): sessions of greeting, EHLO, STARTTLS, the TLS
handshake, EHLO again and QUIT, no mail. Against `tern serve` with a test certificate, the handshakes
the report counts must be the handshakes the server saw (its /metrics counter and its log), and no
message may reach the queue. Against scripted servers, a STARTTLS refused, not offered, or followed
by something that is not TLS is a failed handshake with its reason, never a completed one. Bad
option combinations exit 64 naming the option.

Every run is bounded by a count or a duration and a subprocess timeout; nothing here is timed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TERN_BIN, free_port

RUN_TIMEOUT = 120


def blast(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}: run `swift build -c release` (or set TERN_BIN)")
    return subprocess.run([str(TERN_BIN), "blast", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def blast_json(*args: str, timeout: float = RUN_TIMEOUT) -> dict:
    r = blast(*args, "--json", "--quiet", timeout=timeout)
    assert r.returncode == 0, f"tern blast exited {r.returncode}:\n{r.stderr}\n{r.stdout}"
    return json.loads(r.stdout)


def metrics(tern) -> dict[str, float]:
    """Every sample of the server's /metrics as "name{k=v}" → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{tern.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


TLS_IN = "tern_tls_sessions_total{direction=in}"
RECEIVED = "tern_messages_received_total"
SESSIONS = "tern_sessions_total"


@pytest.fixture
def tls_tern(start_tern, certs):
    return start_tern(extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])}})


# --------------------------------------------------------------------------------------------
# Against tern serve: both sides count the same handshakes, and nothing is queued


def test_handshakes_counted_by_blast_are_the_handshakes_the_server_saw(tls_tern):
    before = metrics(tls_tern)
    report = blast_json("--server", f"127.0.0.1:{tls_tern.port}", "--handshakes", "60", "--concurrency", "6")
    after = metrics(tls_tern)

    assert report["settings"]["mode"] == "handshake"
    assert report["settings"]["starttls"] is True  # implied
    assert report["settings"]["handshakes"] == 60 and report["settings"]["messages"] is None
    h = report["handshakes"]
    assert (h["attempted"], h["completed"], h["failed"]) == (60, 60, 0), report
    assert h["per_s"] > 0 and abs(h["per_s"] - 60 / report["elapsed_s"]) < 1e-6 * h["per_s"] + 1e-9
    assert report["connections"] == {"opened": 60, "connect_failed": 0, "session_failed": 0}
    assert report["replies"]["starttls"] == {"2xx": 60, "3xx": 0, "4xx": 0, "5xx": 0}
    lat = report["latency_ms"]
    for stage in ("connect", "greeting", "ehlo", "tls", "handshake"):
        assert lat[stage]["count"] == 60, stage
    for stage in ("mail", "rcpt", "data", "data_end", "transaction"):
        assert lat[stage]["count"] == 0, stage
    assert report["messages"]["attempted"] == 0 and report["errors"] == []

    # The server: one session and one TLS handshake per handshake reported, no message.
    assert after[SESSIONS] - before.get(SESSIONS, 0) == 60
    assert after[TLS_IN] - before.get(TLS_IN, 0) == 60
    assert after.get(RECEIVED, 0) - before.get(RECEIVED, 0) == 0
    assert tls_tern.queued() == []


def test_a_duration_run_counts_what_finished_on_both_sides(tls_tern):
    before = metrics(tls_tern)
    report = blast_json("--server", f"127.0.0.1:{tls_tern.port}", "--handshake-only", "--duration", "1s",
                        "--concurrency", "3", "--rate", "100", timeout=60)
    after = metrics(tls_tern)
    assert report["settings"]["handshakes"] is None and report["settings"]["duration_s"] == 1
    h = report["handshakes"]
    assert h["completed"] > 0 and h["failed"] == 0
    assert h["attempted"] == h["completed"]
    # Handshakes in flight when the second ran out were let finish, and were counted: by both sides.
    assert after[TLS_IN] - before.get(TLS_IN, 0) == h["completed"]
    assert report["connections"]["opened"] == h["completed"]
    assert tls_tern.queued() == []


def test_the_table_names_the_mode(tls_tern):
    r = blast("--server", f"127.0.0.1:{tls_tern.port}", "--handshakes", "5", "--concurrency", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "handshakes only" in out
    assert "5 attempted, 5 completed, 0 failed" in out
    assert "\nSTARTTLS " in out and "\nhandshake " in out
    assert "\nMAIL " not in out


def test_a_server_without_tls_fails_every_handshake(tern):
    report = blast_json("--server", f"127.0.0.1:{tern.port}", "--handshakes", "4", "--concurrency", "2",
                        "--timeout", "10s")
    h = report["handshakes"]
    assert (h["attempted"], h["completed"], h["failed"]) == (4, 0, 4)
    assert report["connections"]["session_failed"] == 4
    assert any("does not offer STARTTLS" in e for e in report["errors"]), report["errors"]
    assert report["latency_ms"]["tls"]["count"] == 0
    assert tern.queued() == []


# --------------------------------------------------------------------------------------------
# Scripted servers: STARTTLS refused, or something other than TLS after the 220


class ScriptedServer:
    """Greets, offers STARTTLS in EHLO, and answers STARTTLS with `reply`; after a 220 it sends
    `after_220` (not TLS) and closes. Counts the STARTTLS commands it received."""

    def __init__(self, reply: bytes, after_220: bytes = b""):
        self.reply = reply
        self.after_220 = after_220
        self.starttls = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self.session, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def session(self, c: socket.socket) -> None:
        c.settimeout(10)
        buf = b""
        try:
            c.sendall(b"220 scripted.test ESMTP\r\n")
            while True:
                while b"\r\n" not in buf:
                    chunk = c.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                line, buf = buf.split(b"\r\n", 1)
                verb = line.split(b" ", 1)[0].upper()
                if verb == b"EHLO":
                    c.sendall(b"250-scripted.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                elif verb == b"STARTTLS":
                    with self.lock:
                        self.starttls += 1
                    c.sendall(self.reply)
                    if self.reply.startswith(b"220"):
                        c.sendall(self.after_220)
                        return
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"502 5.5.2 not here\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        for t in self.threads:
            t.join(timeout=5)
        self.sock.close()


@pytest.fixture
def scripted():
    made: list[ScriptedServer] = []

    def make(reply: bytes, after_220: bytes = b"") -> ScriptedServer:
        s = ScriptedServer(reply, after_220)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_starttls_refused_is_a_failed_handshake_with_its_reply(scripted):
    srv = scripted(b"454 4.7.0 TLS not available due to temporary reason\r\n")
    report = blast_json("--server", f"127.0.0.1:{srv.port}", "--handshakes", "6", "--concurrency", "2",
                        "--timeout", "10s")
    h = report["handshakes"]
    assert (h["attempted"], h["completed"], h["failed"]) == (6, 0, 6)
    assert srv.starttls == 6
    assert report["replies"]["starttls"] == {"2xx": 0, "3xx": 0, "4xx": 6, "5xx": 0}
    assert report["replies"]["ehlo"]["4xx"] == 0  # counted where it came: STARTTLS, not EHLO
    # The reply as the server gave it (it offers no ENHANCEDSTATUSCODES, so 4.7.0 is part of the text).
    assert any(e.startswith("454 ") and "TLS not available" in e and "refused STARTTLS" in e
               for e in report["errors"]), report["errors"]
    assert report["latency_ms"]["tls"]["count"] == 0 and report["latency_ms"]["handshake"]["count"] == 0


def test_not_tls_after_the_220_is_a_failed_handshake(scripted):
    srv = scripted(b"220 2.0.0 go ahead\r\n", after_220=b"this is not a TLS record\r\n")
    report = blast_json("--server", f"127.0.0.1:{srv.port}", "--handshakes", "5", "--concurrency", "1",
                        "--timeout", "10s")
    h = report["handshakes"]
    assert (h["attempted"], h["completed"], h["failed"]) == (5, 0, 5)
    assert report["replies"]["starttls"]["2xx"] == 5
    assert report["latency_ms"]["handshake"]["count"] == 0
    assert any("TLS" in e and ("handshake" in e or "failed" in e) for e in report["errors"]), report["errors"]


# --------------------------------------------------------------------------------------------
# Options that make no sense with it


@pytest.mark.parametrize("args,needle", [
    (["--handshake-only", "--messages", "5"], "--messages: --handshake-only counts handshakes"),
    (["--handshakes", "5", "--messages", "5"], "--messages"),
    (["--handshakes", "5", "--size", "1k"], "--size"),
    (["--handshake-only", "--recipients", "2"], "--recipients"),
    (["--handshake-only", "--from", "a@b.test"], "--from"),
    (["--handshake-only", "--to", "a@b.test"], "--to"),
    (["--handshake-only", "--messages-per-connection", "3"], "--messages-per-connection"),
    (["--handshake-only", "--no-pipelining"], "--no-pipelining"),
    (["--handshakes", "0"], "--handshakes"),
])
def test_message_options_with_handshake_mode_exit_64_naming_the_option(args, needle):
    r = blast("--server", "127.0.0.1:25", *args, timeout=30)
    assert r.returncode == 64, (r.returncode, r.stderr)
    assert needle in r.stderr


def test_starttls_given_too_is_accepted_and_nothing_listening_exits_69():
    port = free_port()
    r = blast("--server", f"127.0.0.1:{port}", "--handshake-only", "--starttls", "--handshakes", "3",
              "--concurrency", "3", "--json", "--quiet", timeout=30)
    assert r.returncode == 69, r.stderr
    report = json.loads(r.stdout)
    assert report["handshakes"]["failed"] == 3 and report["handshakes"]["completed"] == 0
