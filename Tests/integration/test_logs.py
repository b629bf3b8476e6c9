"""Logs: one line per event; plain text by default, JSON lines with `[log] format = "json"` or
`tern serve --log-format json`. The session lines (connect, helo, from, to, queued as) and the delivery
lines carry the same queue id, so one grep shows a message's whole life."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import CLIENT_HELO, TERN_BIN, Tern, free_port, make_message, send_message, wait_until
from delivery_helpers import NextHop


@pytest.fixture
def hop():
    h = NextHop("127.0.0.1", free_port()).start()
    yield h
    h.stop()


def relay_through(start_tern, hop, **kw) -> Tern:
    return start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
                      extra_tables={"routes": {"*": f"[127.0.0.1]:{hop.port}"}, **kw.pop("tables", {})}, **kw)


def json_lines(text: str) -> list[dict]:
    """Every line must be a JSON object with ts, level and msg."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)  # raises on any line that is not JSON
        assert isinstance(entry, dict) and {"ts", "level", "msg"} <= entry.keys(), line
        assert entry["ts"].endswith("Z") and "T" in entry["ts"], line
        out.append(entry)
    return out


def test_json_lines_follow_a_message_from_connect_to_delivery(start_tern, hop):
    tern = relay_through(start_tern, hop, tables={"log": {"format": "json"}})
    rcpts = ["bob@example.test", "carol@example.test"]
    qid = send_message(tern.port, "alice@example.test", rcpts, make_message(subject="logs"))
    hop.wait_for(1)
    wait_until(lambda: any(e.get("qid") == qid and e["msg"] == "removed" for e in json_lines(tern.stderr())),
               30, f"{qid} to leave the queue")

    entries = json_lines(tern.stderr())
    mine = [e for e in entries if e.get("qid") == qid]
    msgs = [e["msg"] for e in mine]
    # The fields are members of their own (issue 13), not text inside msg.
    client = next(e for e in mine if e["msg"] == "client")
    assert client["client"] == "unknown[127.0.0.1]" and client["helo"] == CLIENT_HELO, client
    envelope = next(e for e in mine if e["msg"] == "envelope")
    assert envelope["from"] == "alice@example.test" and envelope["nrcpt"] == "2", envelope
    assert sorted(e["to"] for e in mine if e["msg"] == "recipient") == rcpts, mine
    for r in rcpts:
        sent = [e for e in mine if e["msg"] == "delivery" and e["to"] == r]
        assert len(sent) == 1, mine
        d = sent[0]
        assert d["relay"] == f"127.0.0.1[127.0.0.1]:{hop.port}" and d["status"] == "sent", d
        assert d["dsn"] == "2.0.0" and d["reply"].startswith("250") and re.fullmatch(r"\d+\.\d\d", d["delay"]), d
        assert "to=" not in d["msg"] and "status" not in d["msg"], d
    queued = next(e for e in mine if e["msg"] == "queued")
    assert queued["nrcpt"] == "2" and int(queued["size"]) > 0, queued
    # The order of a message's life.
    first = {key: msgs.index(key) for key in ("client", "envelope", "queued", "removed")}
    assert first["client"] < first["envelope"] < first["queued"] < first["removed"], msgs

    # The session id ties the message to its connection's connect, helo and disconnect lines.
    session = client["session"]
    assert all(e["session"] == session for e in mine if e["msg"] not in ("delivery", "removed")), mine
    of_session = [e for e in entries if e.get("session") == session]
    assert of_session[0]["msg"] == "connect" and of_session[0]["client"] == "unknown[127.0.0.1]", of_session
    assert any(e["msg"] == "helo" and e["helo"] == CLIENT_HELO for e in of_session), of_session
    assert of_session[-1]["msg"] == "disconnect" and of_session[-1]["queued"] == "1", of_session
    assert all("qid" not in e for e in of_session if e["msg"] == "connect")


def test_plain_lines_one_grep_shows_the_whole_life(start_tern, hop):
    tern = relay_through(start_tern, hop)
    qid = send_message(tern.port, "alice@example.test", ["bob@example.test"], make_message(subject="plain"))
    hop.wait_for(1)
    wait_until(lambda: f"{qid}: removed" in tern.stderr(), 30, f"{qid} to leave the queue")
    lines = [l for l in tern.stderr().splitlines() if qid in l]
    text = "\n".join(lines)
    for fragment in (f"{qid}: client=unknown[127.0.0.1], helo=<{CLIENT_HELO}>", f"{qid}: from=<alice@example.test>",
                     f"{qid}: to=<bob@example.test>", f"{qid}: queued as {qid}, size=",
                     f"{qid}: to=<bob@example.test>, relay=", "status=sent", f"{qid}: removed"):
        assert fragment in text, text
    for line in lines:
        ts, level, rest = line.split(" ", 2)
        assert ts.endswith("Z") and level == "info" and rest.startswith(f"{qid}: "), line
    with pytest.raises(ValueError):
        json.loads(lines[0])


def test_log_format_flag_overrides_the_config(tmp_path):
    t = Tern(tmp_path / "t")  # [log] not set: plain by default
    p = subprocess.Popen([str(TERN_BIN), "serve", "--config", str(t.config_path), "--log-format", "json"],
                         cwd=t.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(t.stderr_path, "wb"), start_new_session=True)
    try:
        wait_until(lambda: "listening on" in t.stderr(), 20, "tern to listen")
        qid = send_message(t.port, "alice@example.test", ["bob@example.test"], make_message())
        wait_until(lambda: f'"qid":"{qid}","msg":"queued"' in t.stderr(), 20, "the queued line")
    finally:
        p.terminate()
        p.wait(timeout=30)
    entries = json_lines(t.stderr())
    assert any(e["msg"].startswith("listening on 127.0.0.1:") for e in entries)
    assert any(e.get("qid") == qid and e["msg"] == "queued" for e in entries)


def test_bad_log_format_is_a_config_error(tmp_path):
    t = Tern(tmp_path / "t", extra_tables={"log": {"format": "xml"}})
    p = subprocess.run([str(TERN_BIN), "serve", "--config", str(t.config_path)], cwd=t.dir,
                       capture_output=True, timeout=30)
    assert p.returncode == 78
    assert "log.format" in p.stderr.decode() and "line" in p.stderr.decode()


# --------------------------------------------------------------------------------------------
# The reject log (issue 13): one line for every refusal that ends a transaction or a session, with
# the client, the reply and the envelope so far, as Postfix writes it; with log.format = "json" the
# same line with each of those as a member.

from conftest import assert_reply  # noqa: E402

QID = r"[0-9A-F]{14}"


def test_an_address_cannot_imitate_a_field(start_tern):
    """A quoted local part may hold '>' and spaces: the envelope lines write it with '<' and '>'
    escaped, so 'from=<x> to=<victim@…>' in a sender stays one from= field."""
    tern = start_tern()
    sender = '"x> to=<victim@example.test"@example.test'
    with tern.connect() as c:
        c.greeting()
        c.ehlo(CLIENT_HELO)
        assert_reply(c.cmd(f"MAIL FROM:<{sender}>"), 250)
        assert_reply(c.cmd('RCPT TO:<"y> relay=none"@example.test>'), 250)
        reply = c.data(make_message(subject="quoted"))
    assert_reply(reply, 250)
    qid = re.search(r"queued as ([0-9A-F]{14})", reply.text).group(1)
    wait_until(lambda: f"{qid}: queued as" in tern.stderr(), 10, "the queued line")
    text = tern.stderr()
    assert f'{qid}: from=<"x\\x3E to=\\x3Cvictim@example.test"@example.test>, nrcpt=1' in text, text
    assert f'{qid}: to=<"y\\x3E relay=none"@example.test>' in text, text
    assert "to=<victim@example.test" not in text, text


def _relay_denied(t):
    with t.connect(source="127.0.0.2") as c:
        c.greeting()
        c.ehlo("printer.lan")
        assert_reply(c.cmd("MAIL FROM:<scan@printer.lan>"), 250)
        assert_reply(c.cmd("RCPT TO:<boss@elsewhere.test>"), 554, "5.7.1")


def _size_at_mail(t):
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test> SIZE=5000"), 552, "5.3.4")


def _size_at_end_of_data(t):
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 250)
        assert_reply(c.data(make_message(body="x" * 70 + "\r\n") * 30), 552, "5.3.4")


def _too_many_recipients(t):
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<c@x.test>"), 452, "4.5.3")
        assert_reply(c.cmd("RCPT TO:<d@x.test>"), 452, "4.5.3")  # counted, not logged twice


def _smuggling(t):
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 250)
        assert_reply(c.cmd("DATA"), 354)
        c.send(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<forged@x.test>\r\n.\r\n")
        assert_reply(c.read_reply(), 554, "5.6.0")


def _bare_lf_command(t):
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd(b"NOOP\nMAIL FROM:<a@client.test>"), 500, "5.5.2")


def _loop(t):
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 250)
        hops = [("Received", f"from h{i}.test by h{i + 1}.test; Thu, 1 Jan 2026 00:00:00 +0000") for i in range(3)]
        assert_reply(c.data(make_message(headers=hops)), 554, "5.4.6")


def _timeout(t):
    with t.connect(timeout=20) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<a@client.test>"), 250)
        assert_reply(c.read_reply(), 421, "4.4.2")


def _too_many_errors(t):
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("BOGUS"), 500)
        assert_reply(c.cmd("RCPT TO:<b@x.test>"), 503)
        assert_reply(c.read_reply(), 421, "4.7.0")


def _bad_helo(t):
    with t.connect() as c:
        c.greeting()
        assert_reply(c.cmd(b"EHLO a\x00b.test"), 501, "5.5.2")


def _hold_then_connect(t, held_from, new_from):
    with t.connect(source=held_from) as held:
        held.greeting()
        with t.connect(source=new_from) as c:
            assert_reply(c.read_reply(), 421, "4.7.0")


# kind -> (server config, client, plain-text pattern, JSON members expected)
REFUSALS = {
    "relay_denied": (
        {"relay_networks": ["127.0.0.1/32"]}, _relay_denied,
        r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.2\]: 554 5\.7\.1 Relay access denied; "
        r"from=<scan@printer\.lan> to=<boss@elsewhere\.test> proto=ESMTP helo=<printer\.lan>",
        {"command": "RCPT", "client": "unknown[127.0.0.2]", "dsn": "5.7.1", "from": "scan@printer.lan",
         "to": "boss@elsewhere.test", "helo": "printer.lan", "proto": "ESMTP"}),
    "message_too_big": (
        {"max_message_size": 1000}, _size_at_mail,
        r"NOQUEUE: reject: MAIL from unknown\[127\.0\.0\.1\]: 552 5\.3\.4 Error: message size exceeds fixed limit; "
        r"from=<a@client\.test> proto=ESMTP helo=<client\.test>",
        {"command": "MAIL", "dsn": "5.3.4", "from": "a@client.test"}),
    "message_too_big_at_end": (
        {"max_message_size": 1000}, _size_at_end_of_data,
        QID + r": reject: END-OF-MESSAGE from unknown\[127\.0\.0\.1\]: 552 5\.3\.4 .*; from=<a@client\.test> "
        r"to=<b@x\.test> proto=ESMTP helo=<client\.test>",
        {"command": "END-OF-MESSAGE", "dsn": "5.3.4", "to": "b@x.test", "reason": "message_too_big"}),
    "too_many_recipients": (
        {"max_recipients": 1}, _too_many_recipients,
        r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.1\]: 452 4\.5\.3 Error: too many recipients; "
        r"from=<a@client\.test> to=<c@x\.test> proto=ESMTP helo=<client\.test>",
        {"command": "RCPT", "dsn": "4.5.3", "to": "c@x.test"}),
    "bad_message_data": (
        {}, _smuggling,
        QID + r": reject: END-OF-MESSAGE from unknown\[127\.0\.0\.1\]: 554 5\.6\.0 Error: bare LF in message; "
        r"lines must end with CRLF; from=<a@client\.test> to=<b@x\.test> proto=ESMTP helo=<client\.test>",
        {"command": "END-OF-MESSAGE", "dsn": "5.6.0"}),
    "bare_line_end": (
        {}, _bare_lf_command,
        r"NOQUEUE: reject: NOOP from unknown\[127\.0\.0\.1\]: 500 5\.5\.2 Error: bare CR or LF in command",
        {"command": "NOOP", "dsn": "5.5.2"}),
    "too_many_hops": (
        {"max_hops": 2}, _loop,
        QID + r": reject: END-OF-MESSAGE from unknown\[127\.0\.0\.1\]: 554 5\.4\.6 Error: too many hops \(3 Received "
        r"headers\): mail loop\?; from=<a@client\.test> to=<b@x\.test>",
        {"command": "END-OF-MESSAGE", "dsn": "5.4.6"}),
    "timeout": (
        {"command_timeout": "2s"}, _timeout,
        r"NOQUEUE: timeout after MAIL from unknown\[127\.0\.0\.1\]: 421 4\.4\.2 relay\.test Error: timeout exceeded; "
        r"from=<a@client\.test> proto=ESMTP helo=<client\.test>",
        {"command": "MAIL", "dsn": "4.4.2"}),
    "too_many_errors": (
        {"max_errors": 2}, _too_many_errors,
        r"NOQUEUE: too many errors after RCPT from unknown\[127\.0\.0\.1\]: 421 4\.7\.0 relay\.test Error: too many "
        r"errors; proto=ESMTP helo=<client\.test>",
        {"command": "RCPT", "dsn": "4.7.0"}),
    "bad_helo": (
        {}, _bad_helo,
        r"NOQUEUE: reject: EHLO from unknown\[127\.0\.0\.1\]: 501 5\.5\.2 Error: EHLO name contains control "
        r"characters or invalid UTF-8; proto=SMTP",
        {"command": "EHLO", "dsn": "5.5.2"}),
    "too_many_connections_per_ip": (
        {"max_connections_per_ip": 1}, lambda t: _hold_then_connect(t, "127.0.0.1", "127.0.0.1"),
        r"NOQUEUE: reject: CONNECT from unknown\[127\.0\.0\.1\]: 421 4\.7\.0 relay\.test Error: too many connections "
        r"from your address, try again later; reason=too_many_connections_per_ip",
        {"command": "CONNECT", "client": "unknown[127.0.0.1]", "dsn": "4.7.0"}),
    "too_many_connections": (
        {"max_connections": 1}, lambda t: _hold_then_connect(t, "127.0.0.1", "127.0.0.2"),
        r"NOQUEUE: reject: CONNECT from unknown\[127\.0\.0\.2\]: 421 4\.7\.0 relay\.test Error: too many connections, "
        r"try again later; reason=too_many_connections",
        {"command": "CONNECT", "client": "unknown[127.0.0.2]", "dsn": "4.7.0"}),
}

REJECT_MSGS = ("reject", "timeout", "too many errors")


def reject_entries(text: str) -> list[dict]:
    return [e for e in json_lines(text) if e["msg"] in REJECT_MSGS]


@pytest.mark.parametrize("fmt", ["plain", "json"])
@pytest.mark.parametrize("kind", list(REFUSALS))
def test_every_refusal_is_logged(start_tern, kind, fmt):
    server, client, pattern, members = REFUSALS[kind]
    t = start_tern(server=server, extra_tables={"log": {"format": fmt}})
    client(t)
    if fmt == "plain":
        wait_until(lambda: re.search(pattern, t.stderr()), 10, f"the {kind} line")
        line = next(l for l in t.stderr().splitlines() if re.search(pattern, l))
        ts, level, _ = line.split(" ", 2)
        assert level == "info" and ts.endswith("Z"), line
        # Not the probe session's: the refusal's own session id (none for a refused connection).
        assert ("session=" in line) == (not kind.startswith("too_many_connections")), line
        return
    (first, *_) = wait_until(lambda: reject_entries(t.stderr()), 10, f"the {kind} entry")
    if "session" in first:
        # Its session's disconnect line comes after every line of that session.
        wait_until(lambda: any(e["msg"] == "disconnect" and e.get("session") == first["session"]
                               for e in json_lines(t.stderr())), 10, f"the {kind} session's disconnect line")
    entries = reject_entries(t.stderr())
    assert len(entries) == 1, entries  # one line per refusal (the second 452 is counted, not logged)
    e = entries[0]
    assert e["reason"] == (kind if kind != "message_too_big_at_end" else "message_too_big"), e
    assert e["reply"].startswith(e.get("dsn", "")[:1]) and re.match(r"^[45]\d\d ", e["reply"]), e
    for key, value in members.items():
        assert e.get(key) == value, (key, e)
    # The fields are members, not text in msg.
    assert "from=" not in e["msg"] and "reply" not in e["msg"], e
    if kind.endswith("_at_end") or kind in ("bad_message_data", "too_many_hops"):
        assert re.fullmatch(QID, e["qid"]), e
    else:
        assert "qid" not in e, e

