"""A second SIGTERM (or SIGINT) during the graceful stop: `timeout`, systemd and container runtimes may
send it twice, and it used to kill the process (exit 143) when it arrived after the loop was torn down,
since libuv puts SIGTERM's default action back when its last watcher closes. Now the signal stays
handled until exit: two at once are one request; a later one ends the grace period (the sessions get
421, a message in DATA is dropped unacknowledged); the exit is 0 and every message that got 250 is in
the spool."""

from __future__ import annotations

import os
import signal
import time

from conftest import assert_reply, dot_stuff, make_message, queue_id_of, send_message, signal_until_exit, wait_until

from test_sink import Sink

WAIT = 30.0


def open_data(tern):
    """A session in the middle of DATA: the 354 received, part of the message sent."""
    c = tern.connect()
    c.greeting()
    c.ehlo()
    assert_reply(c.cmd("MAIL FROM:<alice@example.test>"), 250)
    assert_reply(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
    assert_reply(c.cmd("DATA"), 354)
    msg = make_message(subject="in flight at the stop")
    data = dot_stuff(msg) + b".\r\n"
    c.send(data[:40])
    return c, msg, data[40:]


def test_signals_until_exit_never_kill(start_tern):
    """SIGTERM, then SIGTERM and SIGINT every 0.2 ms until the process has exited: one of them lands in
    the last moments of the stop (before the fix, exit -15 within a few tries)."""
    for attempt in range(5):
        tern = start_tern()
        qid = tern.send("alice@example.test", ["bob@example.test"], make_message(subject=f"stop {attempt}"))
        pid = tern.proc.pid
        os.kill(pid, signal.SIGTERM)
        sent = 1 + signal_until_exit(tern.proc, [signal.SIGTERM, signal.SIGINT], WAIT)
        assert tern.proc.returncode == 0, (
            f"attempt {attempt}: exit {tern.proc.returncode} after {sent} signals\n{tern.stderr()[-2000:]}")
        log = tern.stderr()
        # (The session that sent the message may not have seen its QUIT's close yet: 0 or 1 open.)
        assert "stopping: " in log and "stopped: 1 messages accepted" in log, log
        assert tern.queued() == [qid]


def test_two_sigterms_at_once_are_one_stop(start_tern):
    """`timeout` signals the process and then its group: two SIGTERMs in the same instant keep the
    grace period, so the session in DATA still finishes its message."""
    tern = start_tern()
    c, msg, rest = open_data(tern)
    tern.proc.send_signal(signal.SIGTERM)
    tern.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping: 1 sessions open" in tern.stderr(), WAIT, "tern to start stopping")
    c.send(rest)
    qid = queue_id_of(assert_reply(c.read_reply(), 250, "2.0.0"))
    assert_reply(c.read_reply(), 421, "4.3.2")
    assert c.wait_closed(10)
    c.close()
    tern.proc.wait(timeout=WAIT)
    assert tern.proc.returncode == 0, tern.stderr()[-2000:]
    assert "again" not in tern.stderr()
    assert tern.queued() == [qid]
    assert tern.msg(qid).endswith(msg)


def test_second_sigterm_during_grace_ends_it(start_tern):
    """A second SIGTERM a while after the first ends the 30 s grace period at once: the session in DATA
    gets 421 and its message (never acknowledged) is not queued; the one that got 250 before is."""
    tern = start_tern()
    earlier = tern.send("alice@example.test", ["carol@example.test"], make_message(subject="before the stop"))
    c, _, _ = open_data(tern)
    tern.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping: 1 sessions open" in tern.stderr(), WAIT, "tern to start stopping")
    time.sleep(1.5)
    assert tern.alive(), "tern ended the grace period on its own"
    began = time.monotonic()
    tern.proc.send_signal(signal.SIGTERM)
    assert_reply(c.read_reply(), 421, "4.3.2")
    assert c.wait_closed(10)
    c.close()
    tern.proc.wait(timeout=WAIT)
    assert time.monotonic() - began < 10, "the grace period was not cut short"
    assert tern.proc.returncode == 0, tern.stderr()[-2000:]
    log = tern.stderr()
    assert "SIGTERM again: grace period ended, 1 sessions told 421" in log, log
    assert "stopped: 1 messages accepted" in log, log
    assert tern.queued() == [earlier]


def test_second_sigint_ends_the_grace_too(start_tern):
    """Ctrl-C twice: the same as two SIGTERMs a while apart."""
    tern = start_tern()
    c, _, _ = open_data(tern)
    tern.proc.send_signal(signal.SIGINT)
    wait_until(lambda: "stopping: 1 sessions open" in tern.stderr(), WAIT, "tern to start stopping")
    time.sleep(1.5)
    tern.proc.send_signal(signal.SIGINT)
    assert_reply(c.read_reply(), 421, "4.3.2")
    c.close()
    tern.proc.wait(timeout=WAIT)
    assert tern.proc.returncode == 0, tern.stderr()[-2000:]
    assert "SIGINT again: grace period ended" in tern.stderr()
    assert tern.queued() == []


def test_sink_signals_until_exit_never_kill(tmp_path):
    """`tern sink` the same way: it prints its summary and exits 0 however many signals follow."""
    for attempt in range(5):
        sink = Sink(tmp_path / f"sink{attempt}").start()
        os.kill(sink.proc.pid, signal.SIGTERM)
        signal_until_exit(sink.proc, [signal.SIGTERM], WAIT)
        assert sink.proc.returncode == 0, f"attempt {attempt}: exit {sink.proc.returncode}\n{sink.stderr()}"
        assert sink.stdout_path.read_text().strip(), "no summary on stdout"
