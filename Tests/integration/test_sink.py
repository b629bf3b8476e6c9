"""`tern sink`: the load-test target. Each fault kind is observed from a real client (Python smtplib,
swaks, raw sockets, Postfix's smtp-source) with the expected codes; /metrics is read with
prometheus_client's own text parser and must match what was sent; keep mode must hold the exact bytes.

Delays are checked only from below (a reply cannot come before its delay): no upper time bounds.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TERN_BIN, SMTPConn, assert_reply, dot_stuff, free_port

SINK_HOST = "sink.test"


class Sink:
    """One `tern sink` process on free loopback ports, metrics on another."""

    def __init__(self, workdir: Path, args: list[str] | None = None, listeners: int = 1,
                 config: str | None = None, metrics: bool = True):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port() for _ in range(listeners)]
        self.port = self.ports[0]
        self.metrics_port = free_port() if metrics else None
        self.cmd = [str(TERN_BIN), "sink", "--hostname", SINK_HOST]
        for p in self.ports:
            self.cmd += ["--listen", f"127.0.0.1:{p}"]
        if metrics:
            self.cmd += ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        if config is not None:
            path = self.dir / "sink.toml"
            path.write_text(config)
            self.cmd += ["--config", str(path)]
        self.cmd += args or []
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Sink":
        if not TERN_BIN.exists():
            pytest.fail(f"tern binary not found at {TERN_BIN}")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)
        # Ready when it says so: probing the SMTP port would itself meet the faults and be counted.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tern sink exited with {self.proc.returncode}:\n{self.stderr()}")
            if "tern sink ready" in self.stderr():
                return self
            time.sleep(0.05)
        pytest.fail(f"tern sink not ready:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> str:
        """SIGTERM; returns what it printed on stdout (the summary)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                pytest.fail("tern sink did not stop on SIGTERM")
        return self.stdout_path.read_text()

    def smtp(self, port: int | None = None) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", port or self.port, local_hostname="client.test", timeout=15)

    def connect(self, port: int | None = None) -> SMTPConn:
        return SMTPConn(port or self.port)

    def http(self, path: str = "/metrics", method: str = "GET") -> tuple[int, dict, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.metrics_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def metrics(self) -> dict[tuple, float]:
        """Every sample, keyed by (name, sorted labels), parsed by prometheus_client."""
        status, headers, body = self.http()
        assert status == 200, body
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def counter(self, name: str, **labels) -> float:
        return self.metrics()[(name, tuple(sorted(labels.items())))]

    def faults(self, stage: str, kind: str) -> float:
        return self.counter("tern_sink_faults_total", stage=stage, kind=kind)


@pytest.fixture
def start_sink(tmp_path, request):
    sinks: list[Sink] = []

    def start(args: list[str] | None = None, **kw) -> Sink:
        s = Sink(tmp_path / f"sink{len(sinks)}", args, **kw)
        sinks.append(s)
        return s.start()

    yield start
    for s in sinks:
        s.stop()
        print(f"--- sink stderr ({s.stderr_path}) ---\n{s.stderr()[-5000:]}")  # shown by pytest on failure


def swaks(port: int, *args: str) -> tuple[int, str]:
    if shutil.which("swaks") is None:
        pytest.skip("swaks not installed")
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test", "--from", "a@client.test",
                        *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


MESSAGE = (b"From: a@client.test\r\nTo: b@example.test\r\nBcc: hidden@example.test\r\nSubject: sink\r\n\r\n"
           b"Hello\r\n.leading dot\r\n8bit: \xc3\xa9t\xc3\xa9\r\n\r\nlast line\r\n")


def raw_transaction(c: SMTPConn, rcpts: list[str], message: bytes = MESSAGE) -> list:
    """EHLO, MAIL, RCPT..., DATA, message; returns the replies from MAIL on."""
    assert_reply(c.greeting(), 220)
    assert_reply(c.ehlo(), 250)
    replies = [c.cmd("MAIL FROM:<a@client.test> BODY=8BITMIME")]
    replies += [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
    d = c.cmd("DATA")
    replies.append(d)
    if d.code == 354:
        c.send(dot_stuff(message) + b".\r\n")
        replies.append(c.read_reply())
    return replies


# ---------------------------------------------------------------------------------------------
# Accepting: discard, keep, counters


def test_discard_counts_match_metrics_and_summary(start_sink):
    sink = start_sink(["--seed", "1"])
    sent_bytes = 0
    for i in range(5):
        s = sink.smtp()
        msg = b"Subject: %d\r\n\r\n" % i + b"x" * (100 * i) + b"\r\n"
        rcpts = [f"u{j}@example.test" for j in range(i + 1)]
        assert s.sendmail("a@client.test", rcpts, msg) == {}
        sent_bytes += len(msg)
        s.quit()
    assert sink.counter("tern_sink_sessions_total") == 5
    assert sink.counter("tern_sink_messages_total") == 5
    assert sink.counter("tern_sink_recipients_total") == 1 + 2 + 3 + 4 + 5
    assert sink.counter("tern_sink_message_bytes_total") == sent_bytes
    assert sink.counter("tern_sink_sessions_active") == 0
    assert all(v == 0 for (name, _), v in sink.metrics().items() if name == "tern_sink_faults_total")
    summary = sink.stop()
    assert f"5 sessions (0 refused), 5 messages, 15 recipients, {sent_bytes} bytes, 0 faults injected" in summary
    assert "seed 1" in summary


def test_advertises_what_the_relay_advertises(start_sink):
    sink = start_sink()
    s = sink.smtp()
    code, _ = s.ehlo()
    assert code == 250
    for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes"):
        assert s.has_extn(ext), ext
    s.quit()


def test_dsn_parameters_accepted_unless_switched_off(start_sink):
    on = start_sink()
    with on.connect() as c:
        c.greeting()
        assert "DSN" in c.ehlo().lines
        assert_reply(c.cmd("MAIL FROM:<a@client.test> RET=HDRS ENVID=QQ314159"), 250)
        assert_reply(c.cmd("RCPT TO:<b@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@example.test"), 250)
    off = start_sink(["--disable", "dsn"])
    with off.connect() as c:
        c.greeting()
        assert "DSN" not in c.ehlo().lines
        assert_reply(c.cmd("MAIL FROM:<a@client.test> RET=HDRS"), 555)
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<b@example.test> NOTIFY=NEVER"), 555)


def test_extensions_switched_off(start_sink):
    sink = start_sink(["--disable", "pipelining", "--disable", "size", "--disable", "enhancedstatuscodes"])
    with sink.connect() as c:
        c.greeting()
        r = assert_reply(c.ehlo(), 250)
        kws = [line.split()[0].upper() for line in r.lines[1:]]
        assert "PIPELINING" not in kws and "SIZE" not in kws and "ENHANCEDSTATUSCODES" not in kws
        assert "8BITMIME" in kws and "SMTPUTF8" in kws
        r = assert_reply(c.cmd("MAIL FROM:<a@client.test> SIZE=100"), 555)
        assert r.enhanced is None, r  # no enhanced codes once ENHANCEDSTATUSCODES is off
        assert str(c.cmd("MAIL FROM:<a@client.test>")) == "250 Ok"


def test_keep_eml_holds_exact_bytes(start_sink, tmp_path):
    keep = tmp_path / "kept"
    sink = start_sink(["--keep-path", str(keep)])
    with sink.connect() as c:
        replies = raw_transaction(c, ["b@example.test", "c@other.test"])
        final = assert_reply(replies[-1], 250, "2.0.0")
    qid = final.text.split()[-1]
    files = sorted(p.name for p in keep.iterdir())
    assert files == [f"{qid}.eml"]
    # Unstuffed, Bcc kept, no header added, CRLF as sent.
    assert (keep / f"{qid}.eml").read_bytes() == MESSAGE
    assert sink.counter("tern_sink_message_bytes_total") == len(MESSAGE)


def test_keep_maildir(start_sink, tmp_path):
    md = tmp_path / "Maildir"
    sink = start_sink(["--keep-path", str(md), "--keep-format", "maildir"])
    s = sink.smtp()
    msgs = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
    for m in msgs:
        assert s.sendmail("a@client.test", ["b@example.test"], m) == {}
    s.quit()
    assert sorted(p.name for p in md.iterdir()) == ["cur", "new", "tmp"]
    assert list((md / "tmp").iterdir()) == []
    kept = sorted(p.read_bytes() for p in (md / "new").iterdir())
    assert kept == sorted(msgs)


def test_keep_with_pipelined_transactions(start_sink, tmp_path):
    """Commands pipelined behind a message wait until its file is written; replies stay in order."""
    keep = tmp_path / "kept"
    sink = start_sink(["--keep-path", str(keep)])
    bodies = [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]
    with sink.connect() as c:
        c.greeting()
        c.ehlo()
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        codes = [c.read_reply().code for _ in range(3)]
        for i, body in enumerate(bodies):
            tail = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n" if i < 2 else b"QUIT\r\n"
            c.send(body + b".\r\n" + tail)
            codes += [c.read_reply().code for _ in range(4 if i < 2 else 2)]
        assert codes == [250, 250, 354] + [250, 250, 250, 354] * 2 + [250, 221]
    assert sorted(p.read_bytes() for p in keep.iterdir()) == sorted(bodies)


def test_content_checks_still_apply(start_sink):
    sink = start_sink()
    with sink.connect() as c:
        replies = raw_transaction(c, ["b@example.test"], b"bare\nLF\r\n")
        assert_reply(replies[-1], 554, "5.6.0")
    assert sink.counter("tern_sink_messages_total") == 0


# ---------------------------------------------------------------------------------------------
# Magic recipients


def test_magic_rcpt_codes_smtplib(start_sink):
    sink = start_sink()
    s = sink.smtp()
    s.ehlo()
    s.mail("a@client.test")
    assert s.rcpt("rcpt-451@any.test") == (451, b"4.3.0 tern sink: 451 injected at rcpt")
    code, text = s.rcpt("rcpt-550@any.test")
    assert (code, text.split()[0]) == (550, b"5.1.1")
    assert s.rcpt("rcpt-452@any.test")[0] == 452
    assert s.rcpt("ok@any.test")[0] == 250
    s.quit()
    assert sink.faults("rcpt", "reply") == 3


def test_magic_rcpt_swaks(start_sink):
    sink = start_sink()
    rc, out = swaks(sink.port, "--to", "rcpt-550@any.test")
    assert rc != 0
    assert "<** 550 5.1.1 tern sink: 550 injected at rcpt" in out, out


def test_magic_data_code_at_end_of_data(start_sink):
    sink = start_sink()
    s = sink.smtp()
    with pytest.raises(smtplib.SMTPDataError) as e:
        s.sendmail("a@client.test", ["ok@any.test", "data-554@any.test"], b"Subject: x\r\n\r\nbody\r\n")
    assert e.value.smtp_code == 554
    assert e.value.smtp_error.startswith(b"5.6.0")
    # The session goes on: the next message is accepted.
    assert s.sendmail("a@client.test", ["ok@any.test"], b"Subject: y\r\n\r\nbody\r\n") == {}
    s.quit()
    assert sink.counter("tern_sink_messages_total") == 1
    assert sink.faults("dot", "reply") == 1


def test_magic_data_swaks(start_sink):
    sink = start_sink()
    rc, out = swaks(sink.port, "--to", "data-451@any.test")
    assert rc != 0
    assert "<** 451 4.3.0 tern sink: 451 injected at dot" in out, out


def test_magic_delay(start_sink):
    sink = start_sink()
    with sink.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        t0 = time.monotonic()
        assert_reply(c.cmd("RCPT TO:<delay-400@any.test>"), 250, "2.1.5")
        assert time.monotonic() - t0 >= 0.4
    assert sink.faults("rcpt", "delay") == 1


def test_magic_delay_keeps_pipelined_replies_in_order(start_sink):
    sink = start_sink()
    with sink.connect() as c:
        c.greeting()
        c.ehlo()
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<delay-300@any.test>\r\nRCPT TO:<rcpt-550@any.test>\r\n"
               b"RCPT TO:<b@any.test>\r\nNOOP\r\n")
        codes = [c.read_reply().code for _ in range(5)]
        assert codes == [250, 250, 550, 250, 250]


@pytest.mark.parametrize("rcpt,range_text", [
    ("rcpt-999", "250, 251 or 400 to 599"),
    ("rcpt-200", "250, 251 or 400 to 599"),  # not a reply RCPT can have: not a silent 250 either
    ("data-99", "250 or 400 to 599"),
    ("delay-99999999", "0 to 600000 milliseconds"),
])
def test_magic_recipient_out_of_range_is_refused_with_553(start_sink, rcpt, range_text):
    sink = start_sink()
    with sink.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        r = c.cmd(f"RCPT TO:<{rcpt}@any.test>")
        assert_reply(r, 553, "5.1.3")
        assert rcpt in r.text and range_text in r.text, r.text
        # The session goes on: an ordinary recipient after it is accepted.
        assert_reply(c.cmd("RCPT TO:<b@any.test>"), 250)
    # Bad input, not a fault injected.
    assert all(v == 0 for (name, _), v in sink.metrics().items() if name == "tern_sink_faults_total")


def test_log_lines_are_serves(start_sink):
    # The same format as tern serve's log (LogOutput.swift): RFC 3339 time with milliseconds, the
    # level, the message; no logger label, no "[tern]".
    import re
    sink = start_sink(["--verbose"])
    s = sink.smtp()
    assert s.sendmail("a@client.test", ["b@example.test"], b"Subject: x\r\n\r\nhi\r\n") == {}
    s.quit()
    sink.stop()
    lines = sink.stderr().splitlines()
    assert lines, sink.stderr()
    line_re = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|debug|notice|warning|error) \S")
    for line in lines:
        assert line_re.match(line), line
        assert "[tern]" not in line and "tern-sink" not in line, line
    assert any("tern sink ready" in line for line in lines)
    assert any(re.search(r" debug [0-9A-F]{14}: from=<a@client.test>, size=\d+, nrcpt=1", line) for line in lines), lines


def test_log_format_json(start_sink):
    import json
    sink = start_sink(["--log-format", "json"])
    sink.stop()
    records = [json.loads(line) for line in sink.stderr().splitlines()]
    assert any(r["msg"].startswith("tern sink ready") for r in records), records
    assert all(set(r) >= {"ts", "level", "msg"} for r in records)


def test_summary_counts_delays_apart_and_rates_over_the_busy_time(start_sink):
    import re
    sink = start_sink(["--tarpit", "20ms"])
    time.sleep(1.5)  # idle before the load: not part of the rate
    s = sink.smtp()
    for i in range(4):
        assert s.sendmail("a@client.test", ["b@example.test"], b"Subject: x\r\n\r\nhi\r\n") == {}
    s.quit()
    time.sleep(1.0)  # and idle after it
    summary = sink.stop()
    assert "4 messages" in summary and ", 0 faults injected, " in summary, summary
    delays = sink_delays = re.search(r", (\d+) replies delayed;", summary)
    assert delays and int(sink_delays.group(1)) > 10, summary  # every reply of the session was held
    m = re.search(r"up ([\d.]+) s, busy ([\d.]+) s with sessions open, ([\d.]+) messages/s while busy", summary)
    assert m, summary
    up, busy, rate = (float(x) for x in m.groups())
    assert up >= 2.5 and 0 < busy < up - 2.0, summary
    assert rate > 4 / up, summary  # over the lifetime it would be 4/up or less


def test_magic_drop_mid_data(start_sink):
    sink = start_sink()
    s = sink.smtp()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        s.sendmail("a@client.test", ["drop@any.test"], b"Subject: x\r\n\r\n" + b"line\r\n" * 1000)
    assert sink.counter("tern_sink_messages_total") == 0
    assert sink.faults("data", "drop") == 1


def test_magic_drop_raw(start_sink):
    sink = start_sink()
    with sink.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<drop@any.test>"), 250)
        assert_reply(c.cmd("DATA"), 354)
        c.send(b"Subject: x\r\n")
        assert c.wait_closed(10)
        assert c.buf == b"", "no reply expected after a drop"


def test_no_magic(start_sink):
    sink = start_sink(["--no-magic"])
    s = sink.smtp()
    assert s.sendmail("a@client.test", ["rcpt-550@any.test", "drop@any.test"], b"Subject: x\r\n\r\nx\r\n") == {}
    s.quit()


# ---------------------------------------------------------------------------------------------
# Fault rules


def test_greeting_421(start_sink):
    sink = start_sink(["--fault", "stage=greeting,reply=421"])
    with pytest.raises(smtplib.SMTPConnectError) as e:
        sink.smtp()
    assert e.value.smtp_code == 421
    assert sink.faults("greeting", "reply") == 1


def test_greeting_554_then_503_until_quit(start_sink):
    sink = start_sink(["--fault", "stage=greeting,reply=554"])
    with sink.connect() as c:
        g = assert_reply(c.read_reply(), 554)
        assert g.enhanced is None  # RFC 2034: none on the greeting
        assert_reply(c.cmd("EHLO client.test"), 503, "5.5.1")
        assert_reply(c.cmd("QUIT"), 221)
        assert c.wait_closed(5)


def test_mail_fault_swaks(start_sink):
    sink = start_sink(["--fault", "stage=mail,reply=451"])
    rc, out = swaks(sink.port, "--to", "b@any.test")
    assert rc != 0
    assert "<** 451 4.3.0 tern sink: 451 injected at mail" in out, out
    assert sink.faults("mail", "reply") == 1


def test_rcpt_fault_by_recipient_pattern(start_sink):
    sink = start_sink(["--fault", "stage=rcpt,reply=450,recipient=*@slow.test"])
    s = sink.smtp()
    refused = s.sendmail("a@client.test", ["a@fast.test", "b@slow.test"], b"Subject: x\r\n\r\nx\r\n")
    assert refused == {"b@slow.test": (450, b"4.2.1 tern sink: 450 injected at rcpt")}
    s.quit()
    assert sink.counter("tern_sink_recipients_total") == 1


def test_data_command_fault(start_sink):
    sink = start_sink(["--fault", "stage=data,reply=554"])
    s = sink.smtp()
    with pytest.raises(smtplib.SMTPDataError) as e:
        s.sendmail("a@client.test", ["b@any.test"], b"Subject: x\r\n\r\nx\r\n")
    assert (e.value.smtp_code, e.value.smtp_error.split()[0]) == (554, b"5.3.0")
    s.quit()


def test_dot_fault_and_drop_rule(start_sink):
    sink = start_sink(["--fault", "stage=dot,reply=452,recipient=full@*",
                       "--fault", "stage=data,drop=true,recipient=cut@*"])
    s = sink.smtp()
    with pytest.raises(smtplib.SMTPDataError) as e:
        s.sendmail("a@client.test", ["full@any.test"], b"Subject: x\r\n\r\nx\r\n")
    assert (e.value.smtp_code, e.value.smtp_error.split()[0]) == (452, b"4.3.1")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        s.sendmail("a@client.test", ["cut@any.test"], b"Subject: x\r\n\r\nx\r\n")
    assert sink.faults("dot", "reply") == 1
    assert sink.faults("data", "drop") == 1


def test_421_at_rcpt_closes(start_sink):
    sink = start_sink(["--fault", "stage=rcpt,reply=421"])
    with sink.connect() as c:
        c.greeting()
        c.ehlo()
        c.cmd("MAIL FROM:<a@client.test>")
        assert_reply(c.cmd("RCPT TO:<b@any.test>"), 421, "4.3.2")
        assert c.wait_closed(5)


def session_outcomes(sink: Sink, n: int) -> list[int]:
    """The MAIL reply code of n sessions in a row."""
    out = []
    for _ in range(n):
        with sink.connect() as c:
            c.greeting()
            c.ehlo()
            out.append(c.cmd("MAIL FROM:<a@client.test>").code)
            c.cmd("QUIT")
            c.wait_closed(5)
    return out


def test_fraction_is_seeded_and_counted(start_sink):
    args = ["--fault", "stage=mail,fraction=0.5,reply=451", "--seed", "1234"]
    first = session_outcomes(start_sink(args), 30)
    second_sink = start_sink(args)
    second = session_outcomes(second_sink, 30)
    assert first == second, "same seed, same faults"
    assert set(first) == {250, 451}, first
    assert second_sink.faults("mail", "reply") == second.count(451)
    other = session_outcomes(start_sink(["--fault", "stage=mail,fraction=0.5,reply=451", "--seed", "99"]), 30)
    assert other != first


def test_per_session_fraction(start_sink):
    sink = start_sink(["--fault", "stage=rcpt,fraction=0.5,reply=451,per=session", "--seed", "5"])
    kinds = set()
    for _ in range(16):
        with sink.connect() as c:
            c.greeting()
            c.ehlo()
            c.cmd("MAIL FROM:<a@client.test>")
            codes = {c.cmd(f"RCPT TO:<u{i}@any.test>").code for i in range(4)}
            assert len(codes) == 1, "one coin per session"
            kinds |= codes
    assert kinds == {250, 451}


def test_per_listener_faults(start_sink, tmp_path):
    sink0 = Sink(tmp_path / "pl", ["--seed", "1"], listeners=2)
    sink0.cmd += ["--fault", f"stage=mail,reply=451,listen=127.0.0.1:{sink0.ports[1]}"]
    sink0.start()
    try:
        for port, code in ((sink0.ports[0], 250), (sink0.ports[1], 451)):
            with sink0.connect(port) as c:
                c.greeting()
                c.ehlo()
                assert c.cmd("MAIL FROM:<a@client.test>").code == code
    finally:
        sink0.stop()


def test_banner_delay_and_tarpit(start_sink):
    sink = start_sink(["--banner-delay", "300ms", "--tarpit", "100ms"])
    t0 = time.monotonic()
    with sink.connect() as c:
        assert_reply(c.greeting(), 220)
        assert time.monotonic() - t0 >= 0.4  # banner delay + tarpit
        t1 = time.monotonic()
        assert_reply(c.cmd("NOOP"), 250)
        assert_reply(c.cmd("NOOP"), 250)
        assert time.monotonic() - t1 >= 0.2
    assert sink.faults("greeting", "delay") == 1
    assert sink.faults("all", "delay") >= 3


def test_random_delay_range_from_below(start_sink):
    sink = start_sink(["--fault", "stage=mail,delay=200ms..300ms", "--seed", "3"])
    with sink.connect() as c:
        c.greeting()
        c.ehlo()
        t0 = time.monotonic()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert time.monotonic() - t0 >= 0.2


# ---------------------------------------------------------------------------------------------
# Config file, flags, errors


def test_config_file(start_sink, tmp_path):
    keep = tmp_path / "k"
    sink = start_sink(config=f"""
[sink]
mode = "keep"
keep_path = "{keep}"
seed = 7
[sink.advertise]
smtputf8 = false
[[sink.fault]]
stage = "rcpt"
reply = 553
recipient = "bad@*"
""")
    s = sink.smtp()
    s.ehlo()
    assert not s.has_extn("smtputf8")
    assert s.sendmail("a@client.test", ["ok@x.test", "bad@x.test"], b"Subject: c\r\n\r\nc\r\n") == {
        "bad@x.test": (553, b"5.1.3 tern sink: 553 injected at rcpt")}
    s.quit()
    assert len(list(keep.iterdir())) == 1
    assert "seed 7" in sink.stop()


@pytest.mark.parametrize("args,needle", [
    (["--fault", "stage=rcpt,reply=700"], "--fault reply"),
    (["--fault", "stage=helo,reply=451"], "--fault stage"),
    (["--mode", "keep"], "--keep-path"),
    (["--disable", "xclient"], "--disable"),
    (["--listen", "localhost:25"], "not an \"ip:port\""),
])
def test_bad_flags_exit_78(args, needle):
    p = subprocess.run([str(TERN_BIN), "sink", *args], capture_output=True, text=True, timeout=20)
    assert p.returncode == 78, p
    assert needle in p.stderr, p.stderr


def test_bad_config_key_named(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[sink]\nlisten = [\"127.0.0.1:1\"]\nmode = \"discard\"\ntarpitt = \"1s\"\n")
    p = subprocess.run([str(TERN_BIN), "sink", "--config", str(path)], capture_output=True, text=True, timeout=20)
    assert p.returncode == 78
    assert "line 4: unknown key sink.tarpitt" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# The HTTP endpoint


def test_http_endpoint_statuses(start_sink):
    sink = start_sink()
    assert sink.http("/nope")[0] == 404
    status, headers, _ = sink.http("/metrics", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = sink.http("/metrics", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    with socket.create_connection(("127.0.0.1", sink.metrics_port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 400 Bad Request" in data and data.rstrip().endswith(b"Bad Request: request line")


# ---------------------------------------------------------------------------------------------
# A real load generator


def test_smtp_source_counts_agree(start_sink):
    if shutil.which("smtp-source") is None and not Path("/usr/sbin/smtp-source").exists():
        pytest.skip("smtp-source not installed")
    tool = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    sink = start_sink(["--mode", "count"])
    p = subprocess.run([tool, "-c", "-m", "500", "-s", "10", "-l", "4096", "-r", "2", "-f", "a@client.test",
                        "-t", "b@example.test", f"127.0.0.1:{sink.port}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert sink.counter("tern_sink_messages_total") == 500
    assert sink.counter("tern_sink_recipients_total") == 1000
    summary = sink.stop()
    assert ", 500 messages, 1000 recipients," in summary


# --------------------------------------------------------------------------------------------
# STARTTLS (with a certificate made by openssl for the test)

def tls_args(certs) -> list[str]:
    return ["--tls-certificate", str(certs["cert"]), "--tls-key", str(certs["key"])]


def test_starttls_offered_only_with_a_certificate(start_sink, certs):
    plain = start_sink()
    s = plain.smtp()
    s.ehlo()
    assert not s.has_extn("starttls")
    s.quit()
    off = start_sink(tls_args(certs) + ["--disable", "starttls"])
    s = off.smtp()
    s.ehlo()
    assert not s.has_extn("starttls")
    s.quit()


def test_smtplib_starttls_keep_mode_exact_bytes_and_metrics(start_sink, certs, tmp_path):
    import ssl
    keep = tmp_path / "kept-tls"
    sink = start_sink(tls_args(certs) + ["--keep-path", str(keep)])
    msg = b"Subject: over tls\r\n\r\nbody line\r\n.leading dot\r\n"
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    ctx.check_hostname = False  # the test certificate names relay.test; the sink answers as sink.test
    s = sink.smtp()
    s.ehlo()
    assert s.has_extn("starttls")
    code, _ = s.starttls(context=ctx)
    assert code == 220
    assert s.sock.version() in ("TLSv1.3", "TLSv1.2")
    s.ehlo()
    assert not s.has_extn("starttls"), "STARTTLS offered again under TLS"
    assert s.sendmail("a@client.test", ["u@example.test"], msg) == {}
    # A magic recipient works the same under TLS.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        s.sendmail("a@client.test", ["rcpt-452@example.test"], msg)
    assert refused.value.recipients["rcpt-452@example.test"][0] == 452
    s.quit()
    files = sorted(keep.iterdir())
    assert len(files) == 1
    assert files[0].read_bytes().endswith(msg), "kept bytes differ from what was sent over TLS"
    assert sink.counter("tern_sink_tls_sessions_total") == 1
    assert sink.counter("tern_sink_messages_total") == 1


def test_swaks_tls(start_sink, certs):
    sink = start_sink(tls_args(certs))
    code, out = swaks(sink.port, "--tls", "--to", "u@example.test")
    assert code == 0, out
    assert "STARTTLS" in out and "250" in out
    assert sink.counter("tern_sink_tls_sessions_total") == 1
    assert sink.counter("tern_sink_messages_total") == 1


def test_tls_certificate_without_key_is_a_config_error(tmp_path, certs):
    p = subprocess.run([str(TERN_BIN), "sink", "--listen", f"127.0.0.1:{free_port()}", "--tls-certificate",
                        str(certs["cert"])], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 78
    assert b"tls" in p.stderr and b"together" in p.stderr, p.stderr
