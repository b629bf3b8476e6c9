"""`tern blast` against real servers on loopback: Postfix's smtp-sink, an aiosmtpd recorder and
`tern serve` (delivery disabled). The counts on both sides must agree; --json must parse and match;
--duration must end the run by itself; a refused connection and bad arguments give their exit codes.

Every run is bounded (a message count or a duration, and a subprocess timeout); no assertion is
about speed. The one lower bound on elapsed time checks that the rate cap holds back a run; it cannot
fail because the machine is slow.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from conftest import TERN_BIN, free_port, wait_until

SMTP_SINK = "/usr/sbin/smtp-sink"
RUN_TIMEOUT = 120  # seconds; every run below is far shorter


def blast(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    if not TERN_BIN.exists():
        pytest.fail(f"tern binary not found at {TERN_BIN}: run `swift build -c release` (or set TERN_BIN)")
    return subprocess.run([str(TERN_BIN), "blast", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def blast_json(*args: str, timeout: float = RUN_TIMEOUT) -> dict:
    r = blast(*args, "--json", "--quiet", timeout=timeout)
    assert r.returncode == 0, f"tern blast exited {r.returncode}:\n{r.stderr}\n{r.stdout}"
    return json.loads(r.stdout)


# --------------------------------------------------------------------------------------------
# smtp-sink with -c: it prints "sess=N quit=N mesg=N" counters as they change


class SmtpSink:
    def __init__(self, tmp: Path, port: int | None = None):
        if not Path(SMTP_SINK).exists():
            pytest.skip("smtp-sink (Debian package postfix) is not installed")
        self.port = port or free_port()
        self.out_path = tmp / f"smtp-sink-{self.port}.out"
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "256"],
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(100).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"smtp-sink did not start: {self.out_path.read_bytes()!r}"
            time.sleep(0.05)
        # The probe's session shows once smtp-sink has seen it end; count from there.
        deadline = time.monotonic() + 5
        while self.counters()["sess"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.base = self.counters()

    def counters(self) -> dict[str, int]:
        text = self.out_path.read_bytes().decode(errors="replace")
        found = re.findall(r"sess=(\d+) quit=(\d+) mesg=(\d+)", text)
        if not found:
            return {"sess": 0, "quit": 0, "mesg": 0}
        s, q, m = found[-1]
        return {"sess": int(s), "quit": int(q), "mesg": int(m)}

    def messages(self) -> int:
        return self.counters()["mesg"] - self.base["mesg"]

    def wait_messages(self, n: int, sessions: int, timeout: float = 10) -> int:
        """smtp-sink writes its counters when a session ends or a message is done. Waits until the run's
        `sessions` have all ended there, so that every message they carried is counted (n, expected, is
        for the failure message), then returns the messages counted."""
        wait_until(lambda: self.counters()["sess"] - self.base["sess"] >= sessions, timeout,
                   f"{sessions} sessions to end at smtp-sink ({self.messages()} of {n} messages so far)")
        return self.messages()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.out.close()


@pytest.fixture
def sink(tmp_path):
    s = SmtpSink(tmp_path)
    yield s
    s.stop()


# --------------------------------------------------------------------------------------------
# An aiosmtpd server that records every transaction, and can refuse on request


class Recorder:
    """mail_reply, rcpt_reply(address) and data_reply(mail_from) return a reply line to refuse, or None."""

    def __init__(self, host: str = "127.0.0.1", rcpt_reply=None, data_reply=None, mail_reply=None):
        self.host = host
        self.port = free_port(host)
        self.mail_reply = mail_reply or (lambda a: None)
        self.rcpt_reply = rcpt_reply or (lambda a: None)
        self.data_reply = data_reply or (lambda f: None)
        self.lock = threading.Lock()
        self.accepted: list[dict] = []   # 250 at the end of data
        self.refused_data = 0
        self.peers: list[str] = []       # one per connection, in order
        self.controller = Controller(self, hostname=host, port=self.port, ready_timeout=10,
                                     server_hostname="recorder.test")

    def start(self) -> "Recorder":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            self.peers.append(session.peer[0])
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.mail_reply(address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_reply(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = self.data_reply(envelope.mail_from)
        with self.lock:
            if reply:
                self.refused_data += 1
                return reply
            self.accepted.append({"from": envelope.mail_from, "rcpts": list(envelope.rcpt_tos),
                                  "content": bytes(envelope.original_content), "helo": session.host_name,
                                  "peer": session.peer[0]})
        return "250 2.0.0 Ok: recorded"


@pytest.fixture
def recorder():
    made: list[Recorder] = []

    def make(**kw) -> Recorder:
        r = Recorder(**kw).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


# --------------------------------------------------------------------------------------------
# Counts agree


def test_into_smtp_sink_counts_agree(sink):
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "500", "--concurrency", "20")
    assert sink.wait_messages(500, report["connections"]["opened"]) == 500
    m = report["messages"]
    assert m == {"attempted": 500, "accepted": 500, "temp_failed": 0, "perm_failed": 0, "failed": 0}
    assert report["recipients"]["accepted"] == 500
    assert report["connections"] == {"opened": 500, "connect_failed": 0, "session_failed": 0}
    assert report["bytes_accepted"] == 500 * 4096
    for stage in ("greeting", "ehlo", "mail", "rcpt", "data_end"):
        assert report["replies"][stage] == {"2xx": 500, "3xx": 0, "4xx": 0, "5xx": 0}, stage
    # DATA's own reply is the 354; the reply after the final dot is DATA end's.
    assert report["replies"]["data"] == {"2xx": 0, "3xx": 500, "4xx": 0, "5xx": 0}
    lat = report["latency_ms"]
    for stage in ("connect", "greeting", "ehlo", "mail", "data", "data_end", "transaction"):
        assert lat[stage]["count"] == 500, stage
        assert 0 <= lat[stage]["p50"] <= lat[stage]["p90"] <= lat[stage]["p99"] <= lat[stage]["max"], stage
    assert report["elapsed_s"] > 0
    assert math.isclose(report["rates"]["messages_per_s"], 500 / report["elapsed_s"], rel_tol=1e-6)
    assert math.isclose(report["rates"]["bytes_per_s"], 500 * 4096 / report["elapsed_s"], rel_tol=1e-6)


@pytest.mark.parametrize("pipelining", ["--pipelining", "--no-pipelining"])
def test_into_smtp_sink_reusing_connections(sink, pipelining):
    before = sink.base["sess"]
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "300", "--concurrency", "6",
                        "--messages-per-connection", "10", "--recipients", "2", pipelining)
    assert sink.wait_messages(300, report["connections"]["opened"]) == 300
    assert report["messages"]["accepted"] == 300
    assert report["recipients"]["accepted"] == 600
    assert report["connections"]["opened"] == 30
    assert report["settings"]["pipelining"] is (pipelining == "--pipelining")
    # smtp-sink counts a session when it ends; the 30 connections all ended before blast exited.
    assert sink.counters()["sess"] - before == 30
    # Without pipelining every command waits for its reply, so RCPT has its own round trip.
    if pipelining == "--no-pipelining":
        assert report["latency_ms"]["rcpt"]["max"] > 0


def test_into_aiosmtpd_envelopes_follow_the_patterns(recorder):
    rec = recorder()
    report = blast_json("--server", f"127.0.0.1:{rec.port}", "--messages", "120", "--concurrency", "4",
                        "--messages-per-connection", "5", "--recipients", "3", "--size", "1k-3k",
                        "--from", "b{n}@s.test", "--to", "u{n}-{r}@r.test", "--helo", "load.test")
    got = rec.accepted
    assert len(got) == 120 == report["messages"]["accepted"]
    numbers = sorted(int(re.fullmatch(r"b(\d+)@s\.test", t["from"]).group(1)) for t in got)
    assert numbers == list(range(1, 121))
    for t in got:
        n = t["from"][1:].split("@")[0]
        assert t["rcpts"] == [f"u{n}-{r}@r.test" for r in (1, 2, 3)]
        assert 1024 <= len(t["content"]) <= 3072
        assert t["content"].endswith(b"\r\n")
        assert t["helo"] == "load.test"
    assert report["recipients"]["accepted"] == 360
    assert report["bytes_accepted"] == sum(len(t["content"]) for t in got)
    assert len(rec.peers) == report["connections"]["opened"] == 24
    assert len({len(t["content"]) for t in got}) > 10  # sizes vary


def test_into_tern_serve_every_message_is_queued(tern):
    report = blast_json("--server", f"127.0.0.1:{tern.port}", "--messages", "200", "--concurrency", "10",
                        "--messages-per-connection", "4", "--size", "2k")
    assert report["messages"]["accepted"] == 200
    queued = tern.queued()
    assert len(queued) == 200
    env = tern.env(queued[0])
    assert env.fields["sender"] == "blast@example.test"
    assert re.fullmatch(r"rcpt\d+-1@example\.test", env.recipients[0])
    assert int(env.fields["size"]) >= 2048  # plus tern's Received header


def test_refusals_are_counted_and_the_run_still_succeeds(recorder):
    # Second recipients refused for good, every fourth message deferred at the end of data.
    rec = recorder(rcpt_reply=lambda a: "550 5.1.1 no such user" if a.endswith("-2@r.test") else None,
                   data_reply=lambda f: "451 4.3.0 try later" if int(f[1:].split("@")[0]) % 4 == 0 else None)
    report = blast_json("--server", f"127.0.0.1:{rec.port}", "--messages", "40", "--concurrency", "4",
                        "--recipients", "2", "--from", "b{n}@s.test", "--to", "u{n}-{r}@r.test")
    m = report["messages"]
    assert m["attempted"] == 40
    assert m["accepted"] == 30 == len(rec.accepted)
    assert m["temp_failed"] == 10 == rec.refused_data
    assert m["perm_failed"] == 0 and m["failed"] == 0
    assert report["recipients"]["perm_failed"] == 40
    assert report["recipients"]["accepted"] == 30
    assert report["replies"]["rcpt"] == {"2xx": 40, "3xx": 0, "4xx": 0, "5xx": 40}
    # Every message reached DATA (354); the end of data was refused for 10 of them.
    assert report["replies"]["data"] == {"2xx": 0, "3xx": 40, "4xx": 0, "5xx": 0}
    assert report["replies"]["data_end"] == {"2xx": 30, "3xx": 0, "4xx": 10, "5xx": 0}


def test_421_at_mail_loses_that_message_and_counts_as_mail_4xx(recorder):
    rec = recorder(mail_reply=lambda a: "421 4.3.2 going away" if int(a[1:].split("@")[0]) % 5 == 0 else None)
    report = blast_json("--server", f"127.0.0.1:{rec.port}", "--messages", "50", "--concurrency", "5",
                        "--messages-per-connection", "2", "--from", "b{n}@s.test")
    m = report["messages"]
    assert m["attempted"] == 50
    assert m["failed"] == 10  # the connection is given up after a 421 (RFC 5321 3.8)
    assert m["accepted"] == 40 == len(rec.accepted)
    assert report["replies"]["mail"] == {"2xx": 40, "3xx": 0, "4xx": 10, "5xx": 0}


def test_bind_round_robin(recorder):
    rec = recorder()
    report = blast_json("--server", f"127.0.0.1:{rec.port}", "--messages", "10", "--concurrency", "2",
                        "--bind", "127.0.0.2,127.0.0.3")
    assert report["messages"]["accepted"] == 10
    assert sorted(rec.peers) == ["127.0.0.2"] * 5 + ["127.0.0.3"] * 5


# --------------------------------------------------------------------------------------------
# Ending: duration, rate, refused, timeouts


def test_duration_ends_the_run_by_itself_under_the_rate_cap(sink):
    started = time.monotonic()
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--duration", "2s", "--concurrency", "4",
                        "--messages-per-connection", "0", "--rate", "50", timeout=60)
    wall = time.monotonic() - started
    accepted = report["messages"]["accepted"]
    assert report["settings"]["messages"] is None and report["settings"]["duration_s"] == 2
    assert report["elapsed_s"] >= 1.9
    assert wall < 60
    # The cap: transaction k starts no earlier than (k-1) × 20 ms after the first.
    assert 0 < accepted and (accepted - 1) * 0.02 <= report["elapsed_s"] + 1e-6
    assert sink.wait_messages(accepted, report["connections"]["opened"]) == accepted
    assert report["connections"]["opened"] == 4


def test_rate_cap_holds_a_counted_run_back(sink):
    report = blast_json("--server", f"127.0.0.1:{sink.port}", "--messages", "30", "--concurrency", "10",
                        "--rate", "60")
    assert report["messages"]["accepted"] == 30
    # 30 transactions, one every 1/60 s: the last starts at least 29/60 s after the first.
    assert report["elapsed_s"] >= 29 / 60


def test_refused_connection_exits_69_with_a_clear_message():
    port = free_port()
    r = blast("--server", f"127.0.0.1:{port}", "--messages", "100", "--concurrency", "5", "--json", "--quiet",
              timeout=30)
    assert r.returncode == 69, r.stderr
    assert f"could not connect to 127.0.0.1:{port}" in r.stderr
    assert "refused" in r.stderr.lower()
    report = json.loads(r.stdout)
    assert report["connections"]["opened"] == 0
    assert report["connections"]["connect_failed"] == 5  # one per slot, then it stops
    assert report["messages"]["accepted"] == 0


@pytest.mark.parametrize("args,needle", [
    (["--size", "4x"], "--size"),
    (["--size", "10k-1k"], "--size"),
    (["--to", "a b@x"], "--to"),
    (["--from", "{q}@x"], "--from"),
    (["--concurrency", "0"], "--concurrency"),
    (["--duration", "soon"], "--duration"),
    (["--recipients", "0"], "--recipients"),
    (["--bind", "host.example"], "--bind"),
    (["--concurrency", "100000"], "file descriptors"),
])
def test_bad_arguments_exit_64_naming_the_option(args, needle):
    r = blast("--server", "127.0.0.1:25", "--messages", "1", *args, timeout=30)
    assert r.returncode == 64, (r.returncode, r.stderr)
    assert needle in r.stderr
    # blast's usage, not tern's list of subcommands.
    assert "Usage: tern blast [<options>] --server" in r.stderr, r.stderr
    assert "<subcommand>" not in r.stderr, r.stderr


def test_bad_server_exits_64():
    r = blast("--server", "mail.example.com:25", timeout=30)
    assert r.returncode == 64
    assert "--server" in r.stderr
    assert "Usage: tern blast [<options>] --server" in r.stderr, r.stderr


class Listener:
    """Accepts connections and then either says nothing (silent) or refuses at the greeting."""

    def __init__(self, greeting: bytes | None):
        self.greeting = greeting
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.conns: list[socket.socket] = []
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(c)
            if self.greeting:
                try:
                    c.sendall(self.greeting)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()


def test_greeting_refused_is_counted_not_fatal():
    lst = Listener(b"554 5.3.2 not today\r\n")
    try:
        report = blast_json("--server", f"127.0.0.1:{lst.port}", "--messages", "6", "--concurrency", "2",
                            "--timeout", "5s")
    finally:
        lst.stop()
    assert report["connections"]["opened"] == 6
    assert report["connections"]["session_failed"] == 6
    assert report["replies"]["greeting"]["5xx"] == 6
    assert report["messages"] == {"attempted": 6, "accepted": 0, "temp_failed": 0, "perm_failed": 0, "failed": 6}


def test_silent_server_times_out():
    lst = Listener(None)
    try:
        report = blast_json("--server", f"127.0.0.1:{lst.port}", "--messages", "2", "--concurrency", "2",
                            "--timeout", "1s", timeout=60)
    finally:
        lst.stop()
    assert report["connections"]["session_failed"] == 2
    assert report["messages"]["failed"] == 2
    assert any("timed out" in e for e in report["errors"]), report["errors"]


def test_progress_lines_when_not_a_terminal_and_table_at_the_end(sink):
    r = blast("--server", f"127.0.0.1:{sink.port}", "--duration", "1s", "--rate", "100", "--concurrency", "2",
              "--progress", "200ms", timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) >= 3, r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr
    assert all(re.search(r"\d+ messages\s+[\d,]+/s", l) for l in lines), lines
    out = r.stdout
    assert out.startswith(f"tern blast: 127.0.0.1:{sink.port}, 2 connections")
    for label in ("messages", "recipients", "bytes", "latency ms", "connect", "greeting", "DATA end"):
        assert re.search(rf"^{label}\b", out, re.M), label


def test_progress_on_a_terminal_is_one_line_rewritten(sink):
    import os
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([str(TERN_BIN), "blast", "--server", f"127.0.0.1:{sink.port}", "--duration", "1s",
                                 "--rate", "100", "--concurrency", "2", "--progress", "200ms", "--json"],
                                stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        slave = -1
        out, _ = proc.communicate(timeout=60)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the terminal's other end is closed and drained
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    err = b"".join(chunks).decode()
    assert proc.returncode == 0, err
    assert err.count("\r\x1b[K") >= 3, repr(err)  # each update rewrites the line
    assert "\n" not in err.replace("\r\n", "").replace("\r\x1b[K", ""), repr(err)  # no new lines
    assert err.endswith("\r\x1b[K"), repr(err[-80:])  # cleared before the report
    assert json.loads(out)["messages"]["accepted"] > 0


# --------------------------------------------------------------------------------------------
# --starttls

def test_starttls_into_tern_serve_every_message_queued_over_tls(start_tern, certs):
    tern = start_tern(extra_tables={"tls": {"certificate": str(certs["cert"]), "key": str(certs["key"])}})
    report = blast_json("--server", f"127.0.0.1:{tern.port}", "--messages", "60", "--concurrency", "6",
                        "--messages-per-connection", "3", "--starttls")
    assert report["settings"]["starttls"] is True
    assert report["messages"]["accepted"] == 60, report
    assert report["latency_ms"]["tls"]["count"] == 20  # one handshake per connection
    queued = tern.queued()
    assert len(queued) == 60
    received = tern.msg(queued[0]).split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPS" in received and b"TLSv1." in received, received


def test_starttls_refused_when_not_offered_counts_failed_sessions(tern):
    report = blast_json("--server", f"127.0.0.1:{tern.port}", "--messages", "5", "--concurrency", "1",
                        "--starttls", "--timeout", "10s")
    assert report["messages"]["accepted"] == 0
    assert report["connections"]["session_failed"] >= 1
    assert report["latency_ms"]["tls"]["count"] == 0
    assert tern.queued() == []
    assert any("STARTTLS" in e for e in report["errors"]), report["errors"]
