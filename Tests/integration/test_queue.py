"""Messages accepted into the spool: bytes, envelope records, DATA transparency and refusals."""

import os
import re
import smtplib
import subprocess
import time

import pytest

from conftest import (CLIENT_HELO, HOSTNAME, ID_RE, QUEUED_RE, assert_reply, check_received, dot_stuff,
                      env_seconds, make_message, queue_id_of, split_received)

ENV_ORDER = ["id", "arrival", "sender", "priority", "size", "body", "smtputf8", "client", "helo", "rdns",
             "protocol", "attempts", "next-attempt", "rcpt"]


def smtplib_send(tern, sender, rcpts, message, helo=CLIENT_HELO, **mail_opts):
    """Sends with smtplib (its own dot-stuffing and pipelining off) and returns the queue id."""
    s = smtplib.SMTP("127.0.0.1", tern.port, local_hostname=helo, timeout=30)
    try:
        s.ehlo()
        code, resp = s.mail(sender, **mail_opts)
        assert code == 250, resp
        for r in rcpts:
            code, resp = s.rcpt(r)
            assert code == 250, (r, resp)
        code, resp = s.data(message)
        assert code == 250, resp
        m = re.fullmatch(rb"2\.0\.0 Ok: queued as ([0-9A-F]{14})", resp)
        assert m, resp
        return m.group(1).decode()
    finally:
        s.quit()


def test_simple_message_smtplib(tern):
    msg = make_message(subject="simple", body="Line one.\r\n.Line starting with a dot.\r\n..two dots\r\n.\r\n")
    t0 = int(time.time())
    qid = smtplib_send(tern, "sender@client.test", ["rcpt@x.test"], msg)
    t1 = int(time.time())
    env = tern.assert_queued(qid, msg, sender="sender@client.test", rcpts=["rcpt@x.test"])
    # The envelope record, field by field.
    assert env.rcpts == [("pending", "rcpt@x.test")]
    assert t0 - 2 <= env_seconds(env.fields["arrival"]) <= t1 + 2
    assert env.fields["priority"] == "0"
    assert env.fields["smtputf8"] == "0"
    assert "body" not in env.fields
    assert "rdns" not in env.fields  # reverse_dns = false
    assert env.fields["attempts"] == "0"
    assert env_seconds(env.fields["next-attempt"]) >= env_seconds(env.fields["arrival"]) - 1
    size = int(env.fields["size"])
    assert size in (len(msg), len(tern.msg(qid))), f"size {size}: message {len(msg)}, file {len(tern.msg(qid))}"
    order = [k for k in env.keys if k in ENV_ORDER]
    assert order == sorted(order, key=ENV_ORDER.index), f"envelope fields out of order: {env.keys}"
    for k in ("id", "arrival", "sender", "priority", "size", "smtputf8", "client", "helo", "protocol",
              "attempts", "next-attempt"):
        assert k in env.fields, f"envelope lacks {k}: {env.raw!r}"


def test_helo_session_is_smtp(tern):
    msg = make_message(subject="helo")
    qid = tern.send("s@client.test", ["r@x.test"], msg, use_ehlo=False)
    tern.assert_queued(qid, msg, sender="s@client.test", rcpts=["r@x.test"], proto="SMTP")


def test_null_sender(tern):
    msg = make_message(subject="bounce", sender="MAILER-DAEMON@client.test")
    qid = tern.send("", ["rcpt@x.test"], msg)
    env = tern.assert_queued(qid, msg, sender="", rcpts=["rcpt@x.test"])
    assert "sender\t\n" in env.raw


def test_body_8bitmime_and_smtputf8(tern):
    msg = make_message(subject="8bit", body="Grüße aus Köln\r\n".encode("utf-8"))
    qid = tern.send("s@client.test", ["r@x.test"], msg, mail_params="BODY=8BITMIME")
    env = tern.assert_queued(qid, msg, sender="s@client.test", rcpts=["r@x.test"])
    assert env.fields.get("body") == "8BITMIME"
    assert env.fields["smtputf8"] == "0"

    qid = tern.send("jürgen@client.test", ["zoë@x.test"], msg, mail_params="SMTPUTF8 BODY=8BITMIME")
    # RFC 6531 3.7.3 names the protocol of an SMTPUTF8 transaction UTF8SMTP.
    env = tern.assert_queued(qid, msg, sender="jürgen@client.test", rcpts=["zoë@x.test"],
                             proto=("ESMTP", "UTF8SMTP"))
    assert env.fields["smtputf8"] == "1"


def test_100_recipients(tern):
    # RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted, so the default allows them.
    rcpts = [f"user{i:03d}@x{i % 7}.test" for i in range(100)]
    msg = make_message(subject="hundred", to="undisclosed-recipients:;")
    qid = tern.send("s@client.test", rcpts, msg)
    env = tern.assert_queued(qid, msg, sender="s@client.test", rcpts=rcpts)
    assert all(state == "pending" for state, _ in env.rcpts)


def test_10mb_message(start_tern):
    t = start_tern(server={"max_message_size": 20 * 1024 * 1024})
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n"
    body = b"".join(b"%08d " % i + line for i in range(10 * 1024 * 1024 // (len(line) + 9)))
    body += b".leading dot\r\n"
    msg = make_message(subject="ten megabytes", body=body)
    assert len(msg) >= 10 * 1000 * 1000
    qid = smtplib_send(t, "big@client.test", ["r@x.test"], msg)
    t.assert_queued(qid, msg, sender="big@client.test", rcpts=["r@x.test"])


def test_pipelined_transaction_raw(tern):
    with tern.connect() as c:
        c.greeting()
        assert "PIPELINING" in [l.upper() for l in c.ehlo().lines]
        c.send(b"MAIL FROM:<p@client.test>\r\nRCPT TO:<one@x.test>\r\nRCPT TO:<bad@x.test\r\n"
               b"RCPT TO:<two@x.test>\r\nDATA\r\n")
        assert str(c.read_reply()) == "250 2.1.0 Ok"
        assert str(c.read_reply()) == "250 2.1.5 Ok"
        assert_reply(c.read_reply(), 501, "5.5.4", "malformed RCPT in the pipeline")
        assert str(c.read_reply()) == "250 2.1.5 Ok"
        assert str(c.read_reply()) == "354 End data with <CR><LF>.<CR><LF>"
        msg = make_message(subject="pipelined")
        c.send(dot_stuff(msg) + b".\r\nNOOP\r\nQUIT\r\n")
        qid = queue_id_of(assert_reply(c.read_reply(), 250, "2.0.0"))
        assert str(c.read_reply()) == "250 2.0.0 Ok"
        assert str(c.read_reply()) == "221 2.0.0 Bye"
        assert c.wait_closed(5)
    tern.assert_queued(qid, msg, sender="p@client.test", rcpts=["one@x.test", "two@x.test"])


def test_two_transactions_one_session(tern):
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        ids = []
        msgs = []
        for i in range(2):
            msg = make_message(subject=f"number {i}")
            assert_reply(c.cmd("MAIL FROM:<s@client.test>"), 250, "2.1.0")
            assert_reply(c.cmd(f"RCPT TO:<r{i}@x.test>"), 250, "2.1.5")
            ids.append(queue_id_of(c.data(msg)))
            msgs.append(msg)
    assert ids[0] != ids[1]
    for i, (qid, msg) in enumerate(zip(ids, msgs)):
        tern.assert_queued(qid, msg, sender="s@client.test", rcpts=[f"r{i}@x.test"])


def run_swaks(tern, *extra):
    cmd = ["swaks", "--server", f"127.0.0.1:{tern.port}", "--from", "swaks@client.test",
           "--to", "rcpt@x.test", "--helo", CLIENT_HELO, "--timeout", "20", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"swaks exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    m = QUEUED_RE.search(p.stdout)
    assert m, f"no 'queued as' in swaks output:\n{p.stdout}"
    return m.group(1), p.stdout


def check_swaks_message(tern, qid):
    header, rest = split_received(tern.msg(qid))
    check_received(header, queue_id=qid, rcpt="rcpt@x.test")
    assert b"X-Mailer: swaks" in rest
    assert b"This is a test mailing" in rest
    env = tern.env(qid)
    assert env.fields["sender"] == "swaks@client.test"
    assert env.recipients == ["rcpt@x.test"]


def test_swaks_basic(tern):
    qid, out = run_swaks(tern)
    assert ID_RE.match(qid)
    check_swaks_message(tern, qid)


def test_swaks_pipeline(tern):
    qid, out = run_swaks(tern, "--pipeline")
    assert "PIPELINING" in out
    check_swaks_message(tern, qid)


def test_bcc_removed(tern):
    msg = make_message(subject="bcc", headers=[("Bcc", "hidden@x.test"), ("Cc", "seen@x.test")])
    qid = tern.send("s@client.test", ["r@x.test", "hidden@x.test"], msg)
    expected = msg.replace(b"Bcc: hidden@x.test\r\n", b"")
    assert expected != msg
    tern.assert_queued(qid, expected, sender="s@client.test", rcpts=["r@x.test", "hidden@x.test"])
    assert b"hidden@x.test" not in split_received(tern.msg(qid))[1]


def test_bcc_kept_with_keep_bcc(start_tern):
    t = start_tern(server={"keep_bcc": True})
    msg = make_message(subject="bcc kept", headers=[("Bcc", "hidden@x.test")])
    qid = t.send("s@client.test", ["r@x.test"], msg)
    t.assert_queued(qid, msg, sender="s@client.test", rcpts=["r@x.test"])


def test_alias_expansion(start_tern):
    t = start_tern(aliases={"list@relay.test": ["a@x.test", "b@x.test"], "alias@relay.test": "c@x.test"})
    msg = make_message(subject="aliases", to="list@relay.test")
    qid = t.send("s@client.test", ["list@relay.test", "alias@relay.test", "d@x.test"], msg)
    env = t.env(qid)
    assert sorted(env.recipients) == ["a@x.test", "b@x.test", "c@x.test", "d@x.test"], env.recipients
    assert all(state == "pending" for state, _ in env.rcpts)
    assert split_received(t.msg(qid))[1] == msg


def received_headers(n):
    return [("Received", f"from hop{i}.test by hop{i + 1}.test; Thu, 1 Jan 2026 00:00:{i % 60:02d} +0000")
            for i in range(n)]


def test_max_hops_loop_refused(start_tern):
    t = start_tern(server={"max_hops": 5})
    ok = make_message(subject="few hops", headers=received_headers(4))
    qid = t.send("s@client.test", ["r@x.test"], ok)
    t.assert_queued(qid, ok, sender="s@client.test", rcpts=["r@x.test"])

    loop = make_message(subject="looping", headers=received_headers(6))
    with t.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<r@x.test>"), 250)
        assert_reply(c.data(loop), 554, "5.4.6", "6 Received headers with max_hops 5")
        assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"
    assert t.queued() == [qid]


def test_default_max_hops_is_50(tern):
    loop = make_message(subject="looping", headers=received_headers(51))
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<r@x.test>"), 250)
        assert_reply(c.data(loop), 554, "5.4.6", "51 Received headers")
    assert tern.queue_files() == []


def refused_at_end_of_data(tern, raw_data: bytes, expect=(554, "5.6.0")):
    """Sends raw_data after DATA (not dot-stuffed, caller adds the end) and checks the refusal;
    then checks the session still works and nothing was queued."""
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<r@x.test>"), 250)
        assert_reply(c.cmd("DATA"), 354)
        c.send(raw_data)
        assert_reply(c.read_reply(), *expect, context="end of DATA")
        # Exactly one reply for the end of data: the next command's reply comes next.
        assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"
        # The transaction was reset.
        assert_reply(c.cmd("RCPT TO:<r@x.test>"), 503, "5.5.1")
        assert tern.queue_files() == [], f"refused message left files: {tern.queue_files()}"
        # And a good message still goes through on the same session.
        good = make_message(subject="after refusal")
        assert_reply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<r@x.test>"), 250)
        qid = queue_id_of(assert_reply(c.data(good), 250, "2.0.0"))
    tern.assert_queued(qid, good, sender="s@client.test", rcpts=["r@x.test"])


@pytest.mark.parametrize("bad", [b"line one\nline two\r\n", b"line one\rline two\r\n", b"nul \x00 byte\r\n",
                                 b"ends with bare LF\n"],
                         ids=["bare-LF", "bare-CR", "NUL", "trailing-bare-LF"])
def test_bad_data_refused_and_not_queued(tern, bad):
    head = make_message(subject="bad data", body=b"")
    refused_at_end_of_data(tern, head + b"ok line\r\n" + bad + b"last line\r\n.\r\n")


def test_long_data_line_refused(tern):
    head = make_message(subject="long line", body=b"")
    refused_at_end_of_data(tern, head + b"x" * 1500 + b"\r\nshort\r\n.\r\n")


def test_data_line_at_limit_accepted(start_tern):
    t = start_tern(server={"max_line_length": 1000})
    msg = make_message(subject="998", body=b"y" * 998 + b"\r\n")  # 1000 octets with CRLF
    qid = t.send("s@client.test", ["r@x.test"], msg)
    t.assert_queued(qid, msg, sender="s@client.test", rcpts=["r@x.test"])


SMUGGLE = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\n", b"\r\n.\n", b"\r\n.\r"]


@pytest.mark.parametrize("seq", SMUGGLE, ids=[s.decode().replace("\r", "CR").replace("\n", "LF") for s in SMUGGLE])
def test_smuggling_sequences_do_not_end_data(tern, seq):
    head = make_message(subject="smuggle", body=b"")
    smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@x.test>\r\nDATA\r\nsmuggled body\r\n"
    refused_at_end_of_data(tern, head + b"hello" + seq + smuggled + b".\r\n")
    # Nothing from evil@x.test anywhere.
    for qid in tern.queued():
        assert tern.env(qid).fields["sender"] != "evil@x.test"


def test_received_header_single_and_multi_recipient(tern):
    msg = make_message(subject="received")
    one = tern.send("s@client.test", ["only@x.test"], msg)
    two = tern.send("s@client.test", ["a@x.test", "b@x.test"], msg)
    h1 = split_received(tern.msg(one))[0]
    h2 = split_received(tern.msg(two))[0]
    assert check_received(h1, queue_id=one, rcpt="only@x.test")["host"] == HOSTNAME
    check_received(h2, queue_id=two, rcpt=None)


def test_ids_unique(tern):
    ids = {tern.send("s@client.test", ["r@x.test"], make_message(subject=f"m{i}")) for i in range(20)}
    assert len(ids) == 20
    assert sorted(ids) == tern.queued()


def test_spool_write_failure_is_temporary(start_tern, tmp_path):
    """A full disk: 451 4.3.0, nothing half-written left behind, and mail flows once there is room."""
    tiny = tmp_path / "tinyfs"
    tiny.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tiny)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {p.stderr.decode().strip()}")
    t = None
    try:
        t = start_tern(spool={"path": str(tiny / "spool")})
        big = make_message(subject="does not fit", body=(b"f" * 76 + b"\r\n") * 8000)  # ~620 KB
        with t.connect() as c:
            c.greeting()
            c.ehlo()
            assert_reply(c.cmd("MAIL FROM:<s@client.test>"), 250)
            assert_reply(c.cmd("RCPT TO:<r@x.test>"), 250)
            assert_reply(c.data(big), 451, "4.3.0", "message larger than the free space in the spool")
            assert t.queued() == [], t.queue_files()
            assert str(c.cmd("NOOP")) == "250 2.0.0 Ok"
            small = make_message(subject="fits")
            assert_reply(c.cmd("MAIL FROM:<s@client.test>"), 250)
            assert_reply(c.cmd("RCPT TO:<r@x.test>"), 250)
            qid = queue_id_of(assert_reply(c.data(small), 250, "2.0.0", "small message after the failed one"))
        t.assert_queued(qid, small, sender="s@client.test", rcpts=["r@x.test"])
        assert [n for n in t.queue_files() if not n.startswith(qid)] == [], t.queue_files()
    finally:
        if t is not None:
            t.stop()
        if subprocess.run(["umount", str(tiny)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(tiny)], capture_output=True)
