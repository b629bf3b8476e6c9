"""What an operator does with the admin endpoint on day one (issue 13): curl without a body, errors
in JSON, /health and /ready for probes (and `tern health`, the Dockerfile's HEALTHCHECK), `tern queue`
on several ids, `-`, ALL and selectors, summary --json, "delivery disabled", durations as the config
reads them; and `tern passwd` on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TERN_BIN, read_until_closed, wait_until

from test_admin import SENDER, deferring, hop_port, hops, listing, queue, send, wait_state  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def http(port: int, raw: bytes) -> tuple[int, dict, bytes]:
    """Sends raw request bytes; returns (status, headers lowercased, body) of the one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if b"\r\n\r\n" in data:
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                if len(body) >= length:
                    break
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(port: int, path: str) -> tuple[int, dict]:
    status, headers, body = http(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    assert headers["content-type"] == "application/json", headers
    return status, json.loads(body)


def health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TERN_BIN), "health", *args], capture_output=True, text=True, timeout=30)


# --------------------------------------------------------------------------------------------
# The endpoint


def test_post_without_a_body_is_accepted(deferring):
    """`curl -X POST .../queue/ID/flush` sends neither Content-Length nor a body: RFC 9112 §6.3 says it
    has none. It was answered 411 in plain text."""
    tern, defer_hop, _ = deferring
    qid = send(tern, ["a@defer.test"], "flush me with curl")
    wait_state(tern, qid, "deferred")
    status, headers, body = http(tern.admin_port, f"POST /queue/{qid}/flush HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert status == 200, body
    assert json.loads(body)["message"] == f"{qid}: 1 delivery job(s) due now"
    wait_until(lambda: len(defer_hop.attempts) >= 2, 20, "the flushed retry", lambda: tern.stderr()[-3000:])
    # The connection stays open for the next request, which follows at once (no body was awaited).
    with socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) as s:
        s.sendall(b"POST /queue/flush HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                  b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = read_until_closed(s)
    assert data.count(b"HTTP/1.1 200 OK") == 2, data
    assert b'{"status":"ok"}' in data


@pytest.mark.parametrize("raw,status", [
    (b"GET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    (b"POST /queue/0123456789ABCD/explode HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    (b"GET /queue/0123456789ABCD HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    (b"DELETE /queue HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"GET /queue/nonsense HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET /queue?min_age=5x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"POST /queue/delete HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\nHost: 127.0.0.1\n\n", 400),
    (b"POST /queue/flush HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"POST /queue/flush HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"GET /metrics HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
    (b"POST /queue/0123456789ABCD/delete HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 409),  # delivery is off
    (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n\r\n", 403),
])
def test_every_error_is_json(tern, raw, status):
    got, headers, body = http(tern.admin_port, raw)
    assert got == status, body
    assert headers["content-type"] == "application/json", (headers, body)
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error, body


def test_too_many_connections_is_json(tern):
    """The endpoint serves 16 connections at once; the next one is refused in JSON like any error."""
    held = [socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) for _ in range(16)]
    try:
        for c in held:  # each is being served: one answer each, the connection kept
            c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        # Refused at once, before any request: read the answer without sending one.
        with socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) as extra:
            data = read_until_closed(extra)
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 503") and b"Content-Type: application/json" in head, data
        assert json.loads(body) == {"error": "too many connections"}
    finally:
        for c in held:
            c.close()
    wait_until(lambda: get(tern.admin_port, "/health")[0] == 200, 10, "served again once they closed")


def test_health_and_ready(tern):
    assert get(tern.admin_port, "/health") == (200, {"status": "ok"})
    status, ready = get(tern.admin_port, "/ready")
    assert status == 200, ready
    assert ready == {"status": "ready", "listening": True, "recovery_done": True, "spool_writable": True}
    assert not list(tern.queue_dir.glob(".write-probe*")), "the probe leaves nothing behind"
    # Several at once share one probe: each gets the answer.
    conns = [socket.create_connection(("127.0.0.1", tern.admin_port), timeout=10) for _ in range(6)]
    for c in conns:
        c.sendall(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    for c in conns:
        data = read_until_closed(c)
        c.close()
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'"status":"ready"}\n'), data
    p = health("--config", str(tern.config_path))
    assert p.returncode == 0 and json.loads(p.stdout) == {"status": "ok"}, p
    p = health("--ready", "--admin", f"127.0.0.1:{tern.admin_port}")
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "ready", p
    tern.stop()
    p = health("--config", str(tern.config_path), "--timeout", "2")
    assert p.returncode == 1 and "cannot reach the admin endpoint" in p.stderr, p


def test_ready_is_503_while_the_spool_disk_is_full(start_tern, tmp_path):
    """Root ignores mode bits, so a read-only spool directory would still be writable here; a full
    disk is not, for root either: the spool on a small tmpfs, filled up, then emptied."""
    disk = tmp_path / "disk"
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {p.stderr.decode().strip()}")
    t = None
    try:
        t = start_tern(spool={"path": str(disk / "spool")})
        assert get(t.admin_port, "/ready")[0] == 200
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            with pytest.raises(OSError):
                for _ in range(2048):  # 2 MiB at most into a 1 MiB disk
                    f.write(b"\0" * 1024)
        status, ready = get(t.admin_port, "/ready")
        assert status == 503, ready
        assert ready["status"] == "not ready" and ready["spool_writable"] is False and ready["listening"] is True
        assert "spool is not writable" in ready["error"] and "No space left on device" in ready["error"], ready
        p = health("--ready", "--config", str(t.config_path))
        assert p.returncode == 1 and "503" in p.stderr and "No space left" in p.stderr, p
        assert get(t.admin_port, "/health") == (200, {"status": "ok"}), "alive, only not ready"
        filler.unlink()
        assert get(t.admin_port, "/ready")[0] == 200, "ready again once there is room"
    finally:
        if t is not None:
            t.stop()
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_dockerfile_healthcheck_runs_against_a_relay(tern, tmp_path):
    """The HEALTHCHECK's own command line, with the image's paths replaced by this test's."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    m = re.search(r"^HEALTHCHECK [^\[]*?CMD (\[[^\]]*\])", text, re.M)
    assert m, "no HEALTHCHECK ... CMD [...] in docker/Dockerfile"
    argv = json.loads(m.group(1))
    assert argv[0] == "/usr/local/bin/tern" and argv[1] == "health", argv
    assert argv[argv.index("--config") + 1] == "/etc/tern/tern.toml", argv
    argv = [str(TERN_BIN)] + argv[1:]
    argv[argv.index("--config") + 1] = str(tern.config_path)
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    tern.stop()
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 1


# --------------------------------------------------------------------------------------------
# tern queue


def test_actions_on_several_ids_stdin_and_selections(deferring):
    tern, _, _ = deferring
    a = send(tern, ["a@defer.test"], "a")
    b = send(tern, ["b@defer.test"], "b")
    c = send(tern, ["c@defer.test"], "c", sender="zed@elsewhere.test")
    for qid in (a, b, c):
        wait_state(tern, qid, "deferred")

    # Several ids, one bad: each reported, the others still done, and the exit status says so.
    p = queue(tern, "hold", a, "0123456789ABCD", b, expect=1)
    assert f"{a} held" in p.stdout and f"{b} held" in p.stdout, p.stdout
    assert "0123456789ABCD: no such message in the queue" in p.stderr, p.stderr
    assert p.stdout.rstrip().endswith("3 queue ids: 2 held, 1 failed"), p.stdout
    assert {m["id"] for m in listing(tern, "--state", "held")} == {a, b}

    # A selection: what is deferred now (c), not what is held.
    p = queue(tern, "hold", "ALL", "--deferred")
    assert p.stdout.rstrip().endswith("1 message selected: 1 held"), p.stdout
    assert {m["id"] for m in listing(tern, "--state", "held")} == {a, b, c}

    # Release by sender: only zed's message.
    p = queue(tern, "release", "--sender", "@elsewhere.test")
    assert f"{c} released" in p.stdout and p.stdout.rstrip().endswith("1 message selected: 1 released"), p.stdout
    wait_state(tern, c, "deferred")

    # Ids on standard input (as `postsuper -d -`), as `tern queue list` prints them, with a bad line;
    # control characters in it reach the terminal escaped.
    p = subprocess.run([str(TERN_BIN), "queue", "delete", "-", "--config", str(tern.config_path)],
                       input=f"{a}!\n\n  bogus\x1b[31m \n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p
    assert f"{a} deleted" in p.stdout and p.stdout.rstrip().endswith("2 queue ids: 1 deleted, 1 failed"), p.stdout
    assert "is not a queue id" in p.stderr and "\x1b" not in p.stderr, p.stderr

    # ALL: every message as the queue is now, held or not.
    p = queue(tern, "delete", "ALL")
    assert sorted(re.findall(r"([0-9A-F]{14}) deleted", p.stdout)) == sorted([b, c]), p.stdout
    assert p.stdout.rstrip().endswith("2 messages selected: 2 deleted"), p.stdout
    assert listing(tern) == []
    assert queue(tern, "bounce", "ALL").stdout.rstrip().endswith("0 messages selected: 0 returned to the sender")


@pytest.mark.parametrize("args,why", [
    (["delete"], "give queue ids"),
    (["delete", "ALL", "0123456789ABCD"], "ALL selects every message"),
    (["delete", "0123456789ABCD", "--domain", "x.test"], "not with queue ids"),
    (["hold", "ALL", "--deferred", "--held"], "give one of them"),
    (["release", "-", "-"], "once"),
    (["list", "--min-age", "5x"], "--min-age"),
    (["list", "--max-age", "2w"], "--max-age"),
    (["summary", "--min-age=-5m"], "--min-age"),
])
def test_usage_errors_exit_64(tmp_path, args, why):
    # No relay needed: refused before any request (a port nothing listens on).
    p = subprocess.run([str(TERN_BIN), "queue", *args, "--admin", "127.0.0.1:9"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 64, p
    assert why in p.stderr, p.stderr


def test_ages_are_durations_as_in_the_config(tern):
    send(tern, ["r@far.test"], "aged")
    # "5x" was taken as 5 seconds (by the client and the endpoint alike).
    p = queue(tern, "list", "--min-age", "5x", expect=64)
    assert '--min-age: "5x" is not a duration (unknown unit "x")' in p.stderr, p.stderr
    assert len(listing(tern, "--max-age", "1h30m")) == 1
    queue(tern, "list", "--min-age", "1500ms")  # exit 0: a unit of the config's
    assert listing(tern, "--min-age", "1d") == []


def test_delivery_disabled_is_said(tern):
    # The test relay does not deliver ([delivery] enabled = false).
    qid = send(tern, ["r@far.test"], "kept")
    shown = queue(tern, "show", qid).stdout
    assert "State        queued (delivery disabled: [delivery] enabled = false)" in shown, shown
    assert "Next attempt none: delivery disabled" in shown, shown
    assert json.loads(queue(tern, "show", qid, "--json").stdout)["delivery_enabled"] is False
    assert queue(tern, "list").stdout.startswith("Delivery disabled ([delivery] enabled = false)")
    summary = queue(tern, "summary").stdout.splitlines()
    assert summary[0].startswith("Delivery disabled") and summary[2].split()[:2] == ["TOTAL", "1"], summary
    data = json.loads(queue(tern, "summary", "--json").stdout)
    assert data["delivery_enabled"] is False
    assert data["total"]["total"] == 1 and data["total"]["buckets"][0] == 1
    assert [d["domain"] for d in data["domains"]] == ["far.test"]


def test_remote_reply_with_escapes_is_shown_escaped(hops, start_tern, hop_port):
    """A remote server chooses its reply text: `tern queue show` and `list` print its control
    characters escaped (issue 14), never raw to the postmaster's terminal."""
    from test_admin import DEFER_IP
    hops(DEFER_IP, fail_first=10**9, fail_reply="451 4.3.0 \x1b[2J\x1b]0;owned\x07 later")
    tern = start_tern(delivery={"enabled": True, "retry_schedule": ["1h"], "connect_timeout": "2s"},
                      extra_tables={"routes": {"*": f"[{DEFER_IP}]:{hop_port}"}})
    qid = send(tern, ["x@defer.test"], "escapes")
    wait_state(tern, qid, "deferred")
    assert "\x1b" in entry_reply(tern, qid), "the reply is stored as the remote server sent it"
    for args in (["show", qid], ["list"]):
        out = queue(tern, *args).stdout
        assert "\x1b" not in out and "\x07" not in out, out
        assert "\\u{1B}[2J\\u{1B}]0;owned\\u{7} later" in out, out


def test_show_message_escapes_on_a_terminal_and_not_when_piped(tern):
    """A sender's ESC[2J (clear screen) and U+202E (right-to-left override) in a message body: `tern
    queue show --message` shows them escaped on a terminal and writes the bytes as stored when piped,
    so that `> file` gets the message back exactly (issue 14)."""
    body = "clear\x1b[2J here\tand \u202egpj.exe\r\nnext line é\r\n".encode()
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=15) as s:
        s.ehlo("client.test")
        s.mail(SENDER)
        assert s.rcpt("r@far.test")[0] == 250
        code, reply = s.data(b"Subject: escapes\r\n\r\n" + body)
        assert code == 250, reply
    qid = re.search(r"queued as ([0-9A-F]{14})", reply.decode()).group(1)
    args = [str(TERN_BIN), "queue", "show", "--message", qid, "--config", str(tern.config_path)]

    piped = subprocess.run(args, capture_output=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith(b"Received: ") and piped.stdout.endswith(b"\r\n\r\n" + body), piped.stdout

    master, slave = pty.openpty()
    p = subprocess.Popen(args, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, f"no end of output: {shown!r}"
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has closed it
                    break
                if not chunk:
                    break
                shown += chunk
        assert p.wait(timeout=30) == 0, p.stderr.read()
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    assert b"\x1b" not in shown and "\u202e".encode() not in shown, shown
    # The terminal turns "\n" into "\r\n" (onlcr): lines and tabs stay, the rest shows escaped.
    assert "clear\\u{1B}[2J here\tand \\u{202E}gpj.exe\r\r\nnext line é".encode() in shown, shown


def entry_reply(tern, qid: str) -> str:
    return json.loads(queue(tern, "show", qid, "--json").stdout)["recipients"][0]["last_reply"]


def test_delivery_enabled_is_not_flagged(deferring):
    tern, _, _ = deferring
    qid = send(tern, ["x@defer.test"], "tried")
    wait_state(tern, qid, "deferred")
    assert "disabled" not in queue(tern, "show", qid).stdout
    assert "delivery_enabled" not in json.loads(queue(tern, "show", qid, "--json").stdout)
    assert not queue(tern, "list").stdout.startswith("Delivery disabled")
    data = json.loads(queue(tern, "summary", "--json").stdout)
    assert data["delivery_enabled"] is True and data["domains"][0]["domain"] == "defer.test"


# --------------------------------------------------------------------------------------------
# tern passwd on a terminal


def passwd_on_a_tty(users: Path, answers: list[str]) -> tuple[int, str]:
    """Runs `tern passwd` with a pseudo-terminal as standard input, typing each answer after its
    prompt appears on standard error (the prompt flushes input typed before it)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([str(TERN_BIN), "passwd", "--file", str(users), "alice"], stdin=slave,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    err = b""
    try:
        for prompt, answer in zip([b"Password for alice: ", b"Again: "], answers):
            deadline = time.monotonic() + 20
            while prompt not in err:
                assert time.monotonic() < deadline, f"no prompt {prompt!r}: {err!r}"
                if select.select([p.stderr], [], [], 1)[0]:
                    err += os.read(p.stderr.fileno(), 4096)
            os.write(master, answer.encode() + b"\n")
        out, rest = p.communicate(timeout=60)
        return p.returncode, (err + rest).decode()
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()


def test_passwd_mismatch_says_only_that(tmp_path):
    users = tmp_path / "users"
    code, err = passwd_on_a_tty(users, ["one", "two"])
    assert code != 0 and "the passwords differ" in err, err
    assert "empty password" not in err, err
    assert not users.exists(), "nothing written"
    code, err = passwd_on_a_tty(users, ["secret", "secret"])
    assert code == 0, err
    assert users.read_text().startswith("alice:$scrypt$")


def test_json_escapes_what_a_terminal_would_obey(tern):
    """`tern queue ... --json` and the endpoint's JSON write invisible formatting (a bidi override,
    U+2028/U+2029) from a client's HELO as \\uXXXX (issue 14): catting the JSON prints none raw. (EHLO
    refuses DEL and C1 controls; their escapes are in QueueViewTests and AdminTests.)"""
    from conftest import QUEUED_RE, SMTPConn, assert_reply
    helo = "evil\u202e2J\u2028\u2029.test"
    with SMTPConn(tern.port) as c:
        c.greeting()
        assert_reply(c.cmd(b"EHLO " + helo.encode()), 250)
        assert_reply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<r@far.test>"), 250)
        assert_reply(c.cmd("DATA"), 354)
        reply = c.cmd("Subject: c1\r\n\r\nbody\r\n.")
        assert_reply(reply, 250)
        c.cmd("QUIT")
    qid = QUEUED_RE.search(" ".join(reply.lines)).group(1)
    for args in (["show", qid, "--json"], ["list", "--json"]):
        p = subprocess.run([str(TERN_BIN), "queue", *args, "--config", str(tern.config_path)],
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out = p.stdout
        for raw in ("\u202e".encode(), "\u2028".encode(), "\u2029".encode(), b"\x1b"):
            assert raw not in out, (raw, out)
        assert b"evil\\u202E2J\\u2028\\u2029.test" in out, out
        data = json.loads(out)
        shown = data if args[0] == "show" else data["messages"][0]
        assert shown["helo"] == helo, shown
    # The endpoint's own answer, not only what the CLI prints.
    status, _, body = http(tern.admin_port, f"GET /queue/{qid} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    assert status == 200 and "\u202e".encode() not in body and b"evil\\u202E2J\\u2028\\u2029.test" in body, body


@pytest.mark.parametrize("name,shown", [("\ufeffalice", "\\u{FEFF}alice"), ("ali\u202ece", "ali\\u{202E}ce"),
                                        ("a\u2028b", "a\\u{2028}b")])
def test_passwd_refuses_invisible_characters_and_shows_them(tmp_path, name, shown):
    """A BOM, a bidi override or U+2028 in a user name: refused (exit 64, nothing written), and the
    message shows the character rather than a name that looks right (issue 14)."""
    users = tmp_path / "users"
    p = subprocess.run([str(TERN_BIN), "passwd", "--file", str(users), name], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert p.returncode == 64, p
    assert p.stderr == f'tern passwd: bad user name "{shown}"\n', p.stderr
    assert not users.exists()
