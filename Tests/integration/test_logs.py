"""Logs: one line per event; plain text by default, JSON lines with `[log] format = "json"` or
`tern serve --log-format json`. The session lines (connect, helo, from, to, queued as) and the delivery
lines carry the same queue id, so one grep shows a message's whole life."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import CLIENT_HELO, TERN_BIN, Tern, free_port, make_message, send_message
from delivery_helpers import NextHop, wait_until


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
    client = next(e for e in mine if e["msg"].startswith("client="))
    assert client["msg"] == f"client=unknown[127.0.0.1], helo=<{CLIENT_HELO}>", client
    assert "from=<alice@example.test>, nrcpt=2" in msgs, msgs
    for r in rcpts:
        assert f"to=<{r}>" in msgs, msgs  # accepted at RCPT
        sent = [m for m in msgs if m.startswith(f"to=<{r}>, relay=127.0.0.1[127.0.0.1]:{hop.port}")]
        assert len(sent) == 1 and "status=sent" in sent[0], msgs
    assert any(m.startswith(f"queued as {qid}, size=") and m.endswith("nrcpt=2") for m in msgs), msgs
    # The order of a message's life.
    first = {key: next(i for i, m in enumerate(msgs) if m.startswith(key))
             for key in ("client=", "from=", f"queued as {qid}", "removed")}
    assert first["client="] < first["from="] < first[f"queued as {qid}"] < first["removed"], msgs

    # The session id ties the message to its connection's connect, helo and disconnect lines.
    session = client["session"]
    assert all(e["session"] == session for e in mine if not e["msg"].startswith(("to=<bob@example.test>, relay",
                                                                               "to=<carol@example.test>, relay",
                                                                               "removed"))), mine
    of_session = [e["msg"] for e in entries if e.get("session") == session]
    assert of_session[0] == "connect from unknown[127.0.0.1]", of_session
    assert f"helo=<{CLIENT_HELO}>" in of_session, of_session
    assert of_session[-1] == "disconnect from unknown[127.0.0.1], 1 queued", of_session
    assert all("qid" not in e for e in entries if e.get("session") == session and e["msg"].startswith("connect"))


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
        wait_until(lambda: f"queued as {qid}" in t.stderr(), 20, "the queued line")
    finally:
        p.terminate()
        p.wait(timeout=30)
    entries = json_lines(t.stderr())
    assert any(e["msg"].startswith("listening on 127.0.0.1:") for e in entries)
    assert any(e.get("qid") == qid and e["msg"].startswith(f"queued as {qid}") for e in entries)


def test_bad_log_format_is_a_config_error(tmp_path):
    t = Tern(tmp_path / "t", extra_tables={"log": {"format": "xml"}})
    p = subprocess.run([str(TERN_BIN), "serve", "--config", str(t.config_path)], cwd=t.dir,
                       capture_output=True, timeout=30)
    assert p.returncode == 78
    assert "log.format" in p.stderr.decode() and "line" in p.stderr.decode()
