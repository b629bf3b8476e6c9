"""The HTTP injection API (issue 19): POST /api/inject on [http] listen, in KumoMTA's /api/inject/v1 shape,
end to end: a bearer token made with `tern token`, the request answered 200 with the queue ids once the
messages are in the spool, and the messages delivered through dnsmasq to a next hop on 127.0.0.x.

- raw content arrives byte for byte after tern's Received header ("with HTTP"), with Date and Message-ID
  added in front when it has none; one message for every recipient;
- built content: one message per recipient, multipart/mixed (multipart/alternative text then HTML, and
  an attachment that decodes to the bytes sent), RFC 2047 Subject and display names, substitutions;
- 401 without a valid token (logged; a token made later works after SIGHUP), 400 naming the field,
  413 over http.max_body_size, 404 and 405, and nothing queued by any of them;
- a suppressed recipient is refused in the answer, the other one delivered;
- kill -9 right after the 200: the message is in the spool, and delivered after the restart;
- [http] listen without tokens_file is a config error naming http.tokens_file.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import http.client
import json
import os
import re
import subprocess
import time

import pytest

from conftest import HOSTNAME, TERN_BIN, free_port, split_received, wait_until
from test_delivery import (DELIVERY_DEFAULTS, DNS_RECORDS, HOP_ADDRESSES, SINK_IP, WAIT, diagnostics, dns,  # noqa: F401
                           hop_port, hops)

SENDER = "sender@sender.test"
HOP_IP = "127.0.0.11"  # five.test's MX (test_delivery's DNS_RECORDS)
TOKEN_NAME = "app-1"
QID_RE = re.compile(r"^[0-9A-F]{14}$")
INJECTED_RE = re.compile(
    r"^Received: from api \(unknown \[127\.0\.0\.1\]\) by (?P<host>\S+) \(Tern\) with HTTP id (?P<id>[0-9A-F]{14})"
    r"(?: for <(?P<rcpt>[^>]*)>)?; (?P<date>.+)$")


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


def make_token(path, name: str = TOKEN_NAME) -> str:
    p = subprocess.run([str(TERN_BIN), "token", "--file", str(path), name], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p
    secret = p.stdout.strip().splitlines()[-1]
    assert secret.startswith("tern_"), p.stdout
    return secret


class Injector:
    """A running tern with [http] on, delivering to next hops on hop_port; inject() posts a request."""

    def __init__(self, tern, http_port: int, token: str, tokens_file, events_file):
        self.tern = tern
        self.http_port = http_port
        self.token = token
        self.tokens_file = tokens_file
        self.events_file = events_file

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = "default",
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        """(status, headers with lower-cased names, body). token=None: no Authorization header."""
        h = {"Content-Type": "application/json"}
        if token == "default":
            token = self.token
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=20)
        try:
            try:
                conn.request(method, path, body=body, headers=h)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer (413) and close before it read all of a large body
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def inject(self, payload, path: str = "/api/inject", **kw) -> tuple[int, dict, object]:
        """POSTs payload (a dict as JSON, or bytes as they are); (status, headers, the JSON answer)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, headers, raw = self.request("POST", path, body, **kw)
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw
        return status, headers, answer

    def ok(self, payload, **kw) -> dict:
        status, headers, answer = self.inject(payload, **kw)
        assert status == 200, f"expected 200, got {status}: {answer!r}\n{self.tern.stderr()[-3000:]}"
        assert headers.get("content-type", "").startswith("application/json"), headers
        assert set(answer) == {"queue_ids", "rejected"}, answer
        assert all(QID_RE.match(q) for q in answer["queue_ids"]), answer
        return answer

    def events(self) -> list[dict]:
        if not self.events_file.exists():
            return []
        text = self.events_file.read_text()
        # Only whole lines: the last one may be half written.
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


@pytest.fixture
def injector(hops, start_tern, dns, hop_port, tmp_path):
    """injector(http={...}, delivery={...}) -> an Injector; tern stops before the hops (hops requested first)."""
    count = [0]

    def start(http: dict | None = None, delivery: dict | None = None, **kw) -> Injector:
        count[0] += 1
        tokens_file = tmp_path / f"tokens{count[0]}"
        token = make_token(tokens_file)
        events_file = tmp_path / f"events{count[0]}.jsonl"
        http_port = free_port()
        h = {"listen": f"127.0.0.1:{http_port}", "tokens_file": str(tokens_file)}
        h.update(http or {})
        dl = dict(DELIVERY_DEFAULTS, port=hop_port)
        dl.update(delivery or {})
        tables = {"dns": {"servers": [f"127.0.0.1:{dns.port}"]}, "events": {"file": str(events_file)}, "http": h}
        tables.update(kw.pop("extra_tables", {}))
        tern = start_tern(delivery=dl, extra_tables=tables, **kw)
        tern.wait_log(f"injection API (POST /api/inject) on 127.0.0.1:{http_port}", timeout=10)
        return Injector(tern, http_port, token, tokens_file, events_file)

    return start


def check_injected_received(header: bytes, queue_id: str, rcpt: str | None) -> None:
    assert header.endswith(b"\r\n")
    unfolded = re.sub(r"\s+", " ", header[:-2].decode("utf-8").replace("\r\n", ""))
    m = INJECTED_RE.match(unfolded)
    assert m, f"Received header is not tern's for HTTP: {unfolded!r}"
    assert m["host"] == HOSTNAME and m["id"] == queue_id and m["rcpt"] == rcpt, unfolded
    date = email.utils.parsedate_to_datetime(m["date"])
    assert abs(date.timestamp() - time.time()) < 300, unfolded


def raw_message(subject: str, to: str, body: str) -> str:
    """A raw RFC 5322 message without Date and Message-ID (tern adds them)."""
    return f"From: Sender <{SENDER}>\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}"


# --------------------------------------------------------------------------------------------
# 1. Raw content


def test_raw_content_is_delivered_as_sent_with_date_and_message_id_added(injector, hops):
    hop = hops(HOP_IP)
    sink = hops(SINK_IP)
    inj = injector()
    rcpts = ["ann@five.test", "bob@five.test"]
    body = ("Hello,\r\n"
            ".a line that starts with a dot (dot-stuffed on the wire, not in the message)\r\n"
            "..two dots\r\n"
            "  leading spaces and trailing spaces  \r\n"
            "\r\n"
            "UTF-8: gr\u00fc\u00dfe, \u65e5\u672c, \u2603\r\n"
            + "x" * 900 + "\r\n"
            "last line\r\n")
    raw = raw_message("raw injection", ", ".join(rcpts), body)
    before = time.time()
    answer = inj.ok({"envelope_sender": SENDER, "recipients": [{"email": r} for r in rcpts], "content": raw},
                    path="/api/inject/v1")
    assert answer["rejected"] == []
    (qid,) = answer["queue_ids"]  # raw content, no substitutions: one message for both recipients

    (t,) = hop.wait_for(1, WAIT, lambda: diagnostics(inj.tern, hop, sink))
    assert t.mail_from == SENDER and sorted(t.rcpts) == rcpts
    received, rest = split_received(t.content)
    check_injected_received(received, qid, None)
    # Date and Message-ID in front, then the message byte for byte.
    m = re.match(rb"^Date: ([^\r\n]+)\r\nMessage-ID: (<[^\r\n<>@]+@[^\r\n<>]+>)\r\n", rest)
    assert m, f"no Date and Message-ID added in front: {rest[:300]!r}"
    assert rest[m.end():] == raw.encode("utf-8"), "delivered message differs from the raw content sent"
    date = email.utils.parsedate_to_datetime(m.group(1).decode())
    assert before - 5 <= date.timestamp() <= time.time() + 5, m.group(1)
    message_id = m.group(2).decode()
    assert message_id.endswith(f"@{HOSTNAME}>"), message_id

    # Logged and evented as HTTP from the token's user.
    line = inj.tern.wait_log(f"{qid}: client=127.0.0.1, user={TOKEN_NAME}, protocol=HTTP")
    assert f"from=<{SENDER}>" in line and "nrcpt=2" in line, line
    wait_until(lambda: len([e for e in inj.events() if e["type"] == "reception"]) == 2, WAIT, "2 reception events")
    receptions = [e for e in inj.events() if e["type"] == "reception"]
    assert sorted(e["recipient"] for e in receptions) == rcpts
    for e in receptions:
        assert e["queue_id"] == qid and e["protocol"] == "HTTP" and e["user"] == TOKEN_NAME, e
        assert e["sender"] == SENDER and e["client"] == "127.0.0.1" and e["message_id"] == message_id, e


def test_raw_content_keeps_its_own_date_and_message_id_and_gets_crlf(injector, hops):
    hop = hops(HOP_IP)
    inj = injector()
    raw = ("From: s@sender.test\nTo: ann@five.test\nDate: Mon, 01 Dec 2025 10:00:00 +0000\n"
           "Message-ID: <own.1@client.test>\nSubject: own\n\nline one\nline two\n")
    (qid,) = inj.ok({"envelope_sender": SENDER, "recipients": [{"email": "ann@five.test"}],
                     "content": raw})["queue_ids"]
    (t,) = hop.wait_for(1, WAIT, lambda: diagnostics(inj.tern, hop))
    received, rest = split_received(t.content)
    check_injected_received(received, qid, "ann@five.test")
    assert rest == raw.replace("\n", "\r\n").encode(), rest

    # With substitutions: one message per recipient, each rendered with its values, else the request's.
    template = "Subject: for {{ name }}\r\nMessage-ID: <{{ name }}@client.test>\r\n\r\nHi {{name}}, {{ greeting }}!\r\n"
    answer = inj.ok({"envelope_sender": SENDER, "substitutions": {"greeting": "welcome", "name": "nobody"},
                     "recipients": [{"email": "ann@five.test", "substitutions": {"name": "Ann"}},
                                    {"email": "bob@five.test", "substitutions": {"greeting": 7}}],
                     "content": template})
    assert len(answer["queue_ids"]) == 2
    got = {t.rcpts[0]: split_received(t.content)[1] for t in hop.wait_for(3, WAIT)[1:]}
    assert sorted(got) == ["ann@five.test", "bob@five.test"]
    for rcpt, name, greeting in [("ann@five.test", "Ann", "welcome"), ("bob@five.test", "nobody", "7")]:
        m = re.match(rb"^Date: [^\r\n]+\r\n", got[rcpt])
        assert m, got[rcpt][:200]  # no Date: added; its own Message-ID kept
        assert got[rcpt][m.end():] == (f"Subject: for {name}\r\nMessage-ID: <{name}@client.test>\r\n\r\n"
                                       f"Hi {name}, {greeting}!\r\n").encode(), got[rcpt]


# --------------------------------------------------------------------------------------------
# 2. Built content


def test_built_content_is_mime_with_substitutions_per_recipient(injector, hops):
    hop = hops(HOP_IP)
    inj = injector()
    attachment = os.urandom(3000) + b"\x00\r\n.\r\n\xff"  # binary, with bytes that would break SMTP
    recipients = [
        {"email": "ann@five.test", "name": "Ann \u00c5ngstr\u00f6m", "substitutions": {"code": "A-1", "first": "Ann"}},
        {"email": "bob@five.test", "substitutions": {"code": 42, "first": "Bob"}},
    ]
    payload = {
        "envelope_sender": SENDER,
        "recipients": recipients,
        "substitutions": {"product": "Tern \u2603", "first": "nobody"},
        "content": {
            "from": {"email": "news@sender.test", "name": "Zo\u00eb \u00c6r\u00f8 News"},
            "reply_to": "help@sender.test",
            "subject": "Gr\u00fc\u00dfe {{ first }}, your code {{code}} \u2013 \u65e5\u672c",
            "text_body": "Hello {{ first }},\nyour code is {{ code }} for {{ product }}.\n{{ missing }}end\n",
            "html_body": "<p>Hello <b>{{ first }}</b>, code {{ code }} for {{ product }}</p>\n",
            "headers": {"X-Campaign": "spring-{{ code }}", "X-Product": "{{ product }}",
                        "X-Note": "one\r\nInjected: {{ first }}"},  # no field can be injected by a value
            "attachments": [{"file_name": "data.bin", "content_type": "application/octet-stream",
                             "data": base64.b64encode(attachment).decode(), "base64": True},
                            {"file_name": "note.txt", "content_type": "text/plain",
                             "data": "plain attachment {{ first }}\n", "base64": False}],
        },
    }
    answer = inj.ok(payload)
    assert answer["rejected"] == [] and len(answer["queue_ids"]) == 2  # one message per recipient
    transactions = hop.wait_for(2, WAIT, lambda: diagnostics(inj.tern, hop))
    assert len(transactions) == 2
    by_rcpt = {}
    for t in transactions:
        assert len(t.rcpts) == 1 and t.mail_from == SENDER, t
        by_rcpt[t.rcpts[0]] = t
    assert sorted(by_rcpt) == ["ann@five.test", "bob@five.test"]

    expected = {"ann@five.test": ("Ann", "A-1", "Ann \u00c5ngstr\u00f6m"), "bob@five.test": ("Bob", "42", "")}
    for rcpt, t in by_rcpt.items():
        first, code, name = expected[rcpt]
        qid = answer["queue_ids"][[r["email"] for r in recipients].index(rcpt)]
        received, rest = split_received(t.content)
        check_injected_received(received, qid, rcpt)
        for line in rest.split(b"\r\n"):
            assert len(line) <= 998, line[:100]
        assert all(b < 0x80 for b in rest.split(b"\r\n\r\n", 1)[0]), "8-bit header bytes: not RFC 2047 encoded"
        msg = email.message_from_bytes(t.content, policy=email.policy.default)
        assert str(msg["Subject"]) == f"Gr\u00fc\u00dfe {first}, your code {code} \u2013 \u65e5\u672c"
        (sender,) = msg["From"].addresses
        assert sender.display_name == "Zo\u00eb \u00c6r\u00f8 News" and sender.addr_spec == "news@sender.test"
        (to,) = msg["To"].addresses
        assert to.addr_spec == rcpt and to.display_name == name, str(msg["To"])
        assert msg["Reply-To"].addresses[0].addr_spec == "help@sender.test"
        assert str(msg["X-Campaign"]) == f"spring-{code}"
        assert str(msg["X-Product"]) == "Tern \u2603"
        assert msg["Injected"] is None and str(msg["X-Note"]) == f"one Injected: {first}", str(msg["X-Note"])
        assert msg["Date"] is not None and msg["Message-ID"] is not None
        assert msg["MIME-Version"] == "1.0"

        assert msg.get_content_type() == "multipart/mixed"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["multipart/alternative", "application/octet-stream",
                                                         "text/plain"], [p.get_content_type() for p in parts]
        text, html = list(parts[0].iter_parts())
        assert text.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
        # (The bodies' final line break: test_a_body_keeps_its_last_line_break_in_a_multipart.)
        assert text.get_content().replace("\r\n", "\n").rstrip("\n") == (
            f"Hello {first},\nyour code is {code} for Tern \u2603.\nend")
        assert html.get_content().replace("\r\n", "\n").rstrip("\n") == (
            f"<p>Hello <b>{first}</b>, code {code} for Tern \u2603</p>")
        binary = parts[1]
        assert binary.get_filename() == "data.bin" and binary.get_content_disposition() == "attachment"
        assert binary.get_content() == attachment, "attachment bytes differ from those sent"
        note = parts[2]
        assert note.get_filename() == "note.txt"
        # Attachments are not templates: the data goes as it is.
        assert note.get_content().replace("\r\n", "\n") == "plain attachment {{ first }}\n"


def test_a_body_keeps_its_last_line_break_in_a_multipart(injector, hops):
    """RFC 2046 5.1.1: the CRLF before a boundary delimiter belongs to the delimiter, so a body that ends
    in a line break needs one more CRLF before the next "--boundary" to keep it. The same body alone
    (no multipart) keeps it."""
    hop = hops(HOP_IP)
    inj = injector()
    recipients = [{"email": "ann@five.test"}]
    alone = {"from": SENDER, "subject": "alone", "text_body": "one\ntwo\n"}
    both = {"from": SENDER, "subject": "both", "text_body": "one\ntwo\n", "html_body": "<p>one</p>\n",
            "attachments": [{"file_name": "n.txt", "content_type": "text/plain", "data": "note\n"}]}
    inj.ok({"envelope_sender": SENDER, "recipients": recipients, "content": alone})
    inj.ok({"envelope_sender": SENDER, "recipients": recipients, "content": both})
    got = {t.subject: email.message_from_bytes(t.content, policy=email.policy.default)
           for t in hop.wait_for(2, WAIT, lambda: diagnostics(inj.tern, hop))}
    assert got["alone"].get_content().replace("\r\n", "\n") == "one\ntwo\n"
    mixed = got["both"]
    text, html = list(next(mixed.iter_parts()).iter_parts())
    note = list(mixed.iter_parts())[1]
    assert note.get_content().replace("\r\n", "\n") == "note\n"  # base64: exact
    assert text.get_content().replace("\r\n", "\n") == "one\ntwo\n", (
        f"text/plain part lost its last line break: {text.get_content()!r}\n{mixed.as_bytes()[-700:]!r}")
    assert html.get_content().replace("\r\n", "\n") == "<p>one</p>\n", repr(html.get_content())


# --------------------------------------------------------------------------------------------
# 3. Refusals: 401, 400, 413, 404, 405; nothing queued by any


VALID = {"envelope_sender": SENDER, "recipients": [{"email": "ann@five.test"}],
         "content": "Subject: x\r\n\r\nbody\r\n"}


def with_(**changes) -> dict:
    out = json.loads(json.dumps(VALID))
    for key, value in changes.items():
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    return out


BAD_REQUESTS = [
    # (what, body, the field named)
    ("not JSON", b'{"envelope_sender": "a@b.test", ', ""),
    ("a list, not an object", b"[1, 2]", ""),
    ("envelope_sender missing", with_(envelope_sender=None), "envelope_sender"),
    ("envelope_sender not an address", with_(envelope_sender="no-at-sign"), "envelope_sender"),
    ("envelope_sender a number", with_(envelope_sender=7), "envelope_sender"),
    ("recipients missing", with_(recipients=None), "recipients"),
    ("recipients empty", with_(recipients=[]), "recipients"),
    ("second recipient's email invalid",
     with_(recipients=[{"email": "ann@five.test"}, {"email": "bob at five.test"}]), "recipients[1].email"),
    ("recipient without email", with_(recipients=[{"name": "Ann"}]), "recipients[0].email"),
    ("content missing", with_(content=None), "content"),
    ("content empty", with_(content=""), "content"),
    ("content a number", with_(content=5), "content"),
    ("bad base64", with_(content={"from": "news@sender.test", "subject": "s", "text_body": "t",
                                  "attachments": [{"data": "!!!not base64!!!", "base64": True}]}),
     "content.attachments[0].data"),
    ("from missing in built content", with_(content={"subject": "s", "text_body": "t"}), "content.from"),
    ("unknown field in built content", with_(content={"from": "news@sender.test", "body": "t"}), "content.body"),
    ("a reserved header", with_(content={"from": "news@sender.test", "headers": {"To": "x@five.test"}}),
     "content.headers.To"),
    ("substitution value an object", with_(substitutions={"a": {"b": 1}}), "substitutions.a"),
]


def test_refusals_queue_nothing(injector, hops):
    hop = hops(HOP_IP)
    inj = injector(http={"max_body_size": 2048})
    tern = inj.tern

    # 401: no token, a wrong one, another scheme; each logged, with WWW-Authenticate: Bearer.
    wrong = "tern_" + "0" * 64
    for token, extra in [(None, None), (wrong, None), (inj.token[:-1], None),
                         (None, {"Authorization": f"Basic {inj.token}"})]:
        status, headers, answer = inj.inject(VALID, token=token, headers=extra)
        assert status == 401, (token, extra, status, answer)
        assert headers.get("www-authenticate", "").lower().startswith("bearer"), headers
        assert "error" in answer, answer
    tern.wait_log("http: injection refused from 127.0.0.1", count=4, timeout=10)

    # 400 naming the field, for every kind of bad input.
    for what, body, field in BAD_REQUESTS:
        status, headers, answer = inj.inject(body)
        assert status == 400, f"{what}: expected 400, got {status}: {answer!r}"
        assert isinstance(answer, dict) and answer.get("error"), f"{what}: {answer!r}"
        assert answer.get("field", "") == field, f"{what}: field {answer.get('field')!r}, expected {field!r}"
        if field:
            assert answer["error"].startswith(field + ":"), f"{what}: {answer!r}"
    status, _, answer = inj.inject(b"{oops")
    assert status == 400 and "JSON" in answer["error"], answer

    # 413: a body over max_body_size (2048), though the request is otherwise good.
    big = with_(content="Subject: big\r\n\r\n" + "y" * 3000 + "\r\n")
    status, _, answer = inj.inject(big)
    assert status == 413, (status, answer)

    # Several requests on one keep-alive connection, each answered.
    conn = http.client.HTTPConnection("127.0.0.1", inj.http_port, timeout=20)
    try:
        for path in ["/api/inject", "/nope", "/api/inject/v1"]:
            conn.request("POST", path, body=json.dumps(with_(envelope_sender=None)).encode(),
                         headers={"Authorization": f"Bearer {inj.token}", "Content-Type": "application/json"})
            r = conn.getresponse()
            assert (r.status, path) == (404 if path == "/nope" else 400, path)
            r.read()
    finally:
        conn.close()

    # 404 elsewhere, 405 for another method.
    assert inj.inject(VALID, path="/api/other")[0] == 404
    assert inj.inject(VALID, path="/")[0] == 404
    status, headers, _ = inj.request("GET", "/api/inject")
    assert status == 405 and headers.get("allow") == "POST", (status, headers)
    assert inj.request("PUT", "/api/inject/v1", json.dumps(VALID).encode())[0] == 405

    # Nothing was queued by any of them: no HTTP reception, nothing in the spool or the queue, no event.
    assert "protocol=HTTP" not in tern.stderr()
    assert tern.queued() == []
    status, listing = tern.admin_get("/queue")
    assert status == 200 and json.loads(listing)["messages"] == [], listing
    assert [e for e in inj.events() if e["type"] == "reception"] == []

    # A token made while tern runs is good once SIGHUP read the file again.
    later = make_token(inj.tokens_file, "app-2")
    assert inj.inject(VALID, token=later)[0] == 401
    line = tern.hup("reloaded")
    assert "2 API tokens" in line, line
    # The control: the same token as the refusals above injects, and only this message arrives.
    (qid,) = inj.ok(VALID, token=later)["queue_ids"]
    assert inj.ok(VALID)["queue_ids"]  # the first token still good
    tern.wait_log(f"{qid}: client=127.0.0.1, user=app-2, protocol=HTTP", timeout=10)
    transactions = hop.wait_for(2, WAIT, lambda: diagnostics(tern, hop))
    assert len(transactions) == 2 and all(t.rcpts == ["ann@five.test"] for t in transactions)
    tern.wait_log("protocol=HTTP", count=2, timeout=10)
    assert tern.stderr().count("protocol=HTTP") == 2, "a refused request was queued after all"


# --------------------------------------------------------------------------------------------
# 4. Suppression


def test_a_suppressed_recipient_is_rejected_and_the_other_delivered(injector, hops):
    hop = hops(HOP_IP)
    inj = injector()
    status, body = inj.tern.admin_get("/suppression/add?address=Gone%40five.test", method="POST")
    assert status == 200, body
    rcpts = [{"email": "ok@five.test"}, {"email": "gone@five.test"}]
    answer = inj.ok({"envelope_sender": SENDER, "recipients": rcpts,
                     "content": raw_message("suppressed", "undisclosed-recipients:;", "hello\r\n")})
    (qid,) = answer["queue_ids"]
    (rejected,) = answer["rejected"]
    assert rejected["email"] == "gone@five.test", answer
    assert re.match(r"^550 5\.1\.1 \S", rejected["reply"]) and "5.1.1 5.1.1" not in rejected["reply"], rejected
    (t,) = hop.wait_for(1, WAIT, lambda: diagnostics(inj.tern, hop))
    assert t.rcpts == ["ok@five.test"]
    inj.tern.wait_log("NOQUEUE: reject: HTTP from 127.0.0.1: 550 5.1.1", timeout=10)
    assert "to=<gone@five.test>" not in "".join(l for l in inj.tern.stderr().splitlines() if "status=" in l)

    # Built content for the suppressed recipient alone: 200, nothing queued, refused in the answer.
    answer = inj.ok({"envelope_sender": SENDER, "recipients": [{"email": "GONE@five.test"}],
                     "content": {"from": SENDER, "subject": "s", "text_body": "t"}})
    assert answer["queue_ids"] == [] and [r["email"] for r in answer["rejected"]] == ["GONE@five.test"], answer
    # The first request's rejection is already written: wait for the second one's.
    wait_until(lambda: sum(e["type"] == "rejection" for e in inj.events()) >= 2, WAIT, "the second rejection event")
    rejections = [e for e in inj.events() if e["type"] == "rejection"]
    assert len(rejections) == 2 and all(e["user"] == TOKEN_NAME and e["reason"] == "suppressed" for e in rejections)
    wait_until(lambda: inj.tern.queued() == [], WAIT, "the delivered message to leave the spool")
    assert len(hop.received()) == 1


# --------------------------------------------------------------------------------------------
# 5. Durability


def test_a_message_answered_200_survives_kill_9(injector, hops):
    # No next hop yet: the first tern cannot deliver it (connection refused, deferred). The [priority]
    # rules apply to injected mail as to SMTP mail.
    inj = injector(extra_tables={"priority": {"sender_domains": {"sender.test": 5}}})
    tern = inj.tern
    raw = raw_message("durable", "ann@five.test", "must survive kill -9\r\n")
    (qid,) = inj.ok({"envelope_sender": SENDER, "recipients": [{"email": "ann@five.test"}],
                     "content": raw})["queue_ids"]
    tern.kill()  # SIGKILL right after the 200
    assert qid in tern.queued(), f"{qid} answered 200 but not in the spool: {tern.queue_files()}"

    tern.start()
    tern.wait_recovered()
    status, listing = tern.admin_get("/queue")
    assert status == 200
    (listed,) = [m for m in json.loads(listing)["messages"] if m.get("id") == qid]
    assert listed["priority"] == 5, listed
    hop = hops(HOP_IP)
    (t,) = hop.wait_for(1, WAIT, lambda: diagnostics(tern, hop))
    received, rest = split_received(t.content)
    check_injected_received(received, qid, "ann@five.test")
    assert rest.endswith(raw.encode()) and t.rcpts == ["ann@five.test"]


# --------------------------------------------------------------------------------------------
# 6. Config


@pytest.mark.parametrize("http,key", [
    ('listen = "127.0.0.1:8080"\n', "http.tokens_file"),
    ('listen = "127.0.0.1:8080"\ntokens_file = "tokens"\nmax_body_size = 100\n', "http.max_body_size"),
])
def test_config_errors_name_the_key(tmp_path, http, key):
    f = tmp_path / "tern.toml"
    f.write_text(f'hostname = "relay.test"\n\n[http]\n{http}')
    p = subprocess.run([str(TERN_BIN), "check-config", str(f)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 78, (p.returncode, p.stderr)
    assert key in p.stderr and str(f) in p.stderr, p.stderr
    assert p.stdout == ""


def test_config_with_tokens_file_is_valid(tmp_path):
    make_token(tmp_path / "tokens")
    f = tmp_path / "tern.toml"
    f.write_text('hostname = "relay.test"\n[http]\nlisten = "127.0.0.1:8080"\ntokens_file = "tokens"\n'
                 'max_body_size = 2048\n')
    p = subprocess.run([str(TERN_BIN), "check-config", str(f)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert 'tokens_file = "' + str(tmp_path / "tokens") + '"' in p.stdout, p.stdout
    assert "max_body_size = 2048" in p.stdout
