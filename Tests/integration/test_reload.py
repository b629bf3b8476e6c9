"""Signals: SIGHUP reloads the config (routes, limits, relay networks, aliases) without dropping a
session or a message, and refuses a broken file, keeping the running config; SIGTERM during a 10 MB
DATA lets the transaction finish and keeps the queue."""

from __future__ import annotations

import signal
import socket

import pytest

from conftest import (SMTPConn, Tern, assert_reply, dot_stuff, free_port, make_message, queue_id_of, send_message,
                      split_received, toml_document)
from conftest import wait_until
from delivery_helpers import NextHop

WAIT = 30.0


@pytest.fixture
def hops():
    started = []

    def start() -> NextHop:
        h = NextHop("127.0.0.1", free_port()).start()
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def write_config(tern: Tern, *, route_port: int, server: dict | None = None, aliases: dict | None = None,
                 extra: str = "") -> None:
    """Rewrites tern's config file as Tern() writes it, with delivery on and every domain routed to route_port."""
    srv = {"listen": [f"127.0.0.1:{tern.port}"], "relay_networks": ["127.0.0.0/8", "::1/128"], "reverse_dns": False}
    srv.update(server or {})
    tables = {"server": srv, "spool": {"path": str(tern.spool)},
              "delivery": {"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
              "routes": {"*": f"[127.0.0.1]:{route_port}"}}
    if aliases:
        tables["aliases"] = aliases
    tern.config_path.write_text(toml_document({"hostname": "relay.test"}, tables) + extra)


def open_transaction(tern: Tern, rcpts: list[str]) -> SMTPConn:
    c = tern.connect()
    c.greeting()
    c.ehlo()
    assert_reply(c.cmd("MAIL FROM:<alice@example.test>"), 250)
    for r in rcpts:
        assert_reply(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
    return c


def test_sighup_changed_route_moves_new_deliveries(start_tern, hops):
    a, b = hops(), hops()
    tern = start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
                      extra_tables={"routes": {"*": f"[127.0.0.1]:{a.port}"}})
    send_message(tern.port, "alice@example.test", ["one@example.test"], make_message(subject="before"))
    a.wait_for(1)

    # A session in the middle of a transaction when the signal comes: it is not dropped.
    held = open_transaction(tern, ["two@example.test", "three@example.test", "four@example.test"])
    write_config(tern, route_port=b.port, server={"max_recipients": 2},
                 aliases={"team@example.test": ["x@example.test", "y@example.test"]})
    tern.hup("reloaded ")
    assert "changed server, aliases, routes" in tern.stderr(), tern.stderr()[-2000:]
    assert tern.alive()

    # The held session finishes under the rules it started with (three recipients, over the new limit).
    assert_reply(held.cmd("RCPT TO:<five@example.test>"), 250, "2.1.5")
    qid_held = queue_id_of(assert_reply(held.data(make_message(subject="held")), 250, "2.0.0"))
    held.cmd("QUIT")
    held.close()

    # New sessions: the new limit and the new alias.
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<alice@example.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<r1@example.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<r2@example.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<r3@example.test>"), 452, "4.5.3")
        c.cmd("QUIT")
    qid_team = send_message(tern.port, "alice@example.test", ["team@example.test"], make_message(subject="after"))

    # Both messages queued after the reload go to B; A got only the first one.
    got = b.wait_for(2)
    assert sorted(r for t in got for r in t.rcpts) == sorted(
        ["two@example.test", "three@example.test", "four@example.test", "five@example.test",
         "x@example.test", "y@example.test"])
    wait_until(lambda: not tern.queued(), WAIT, "the queue to empty")
    assert len(a.received()) == 1 and a.delivered_rcpts() == ["one@example.test"]
    # "removed" is logged once the files are gone, after the spool looks empty.
    tern.wait_log(f"{qid_held}: removed")
    tern.wait_log(f"{qid_team}: removed")


def test_sighup_relay_networks(start_tern, hops):
    a = hops()
    tern = start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
                      extra_tables={"routes": {"*": f"[127.0.0.1]:{a.port}"}})
    write_config(tern, route_port=a.port, server={"relay_networks": ["192.0.2.0/24"],
                                                   "accept_domains": ["local.test"]})
    tern.hup("reloaded ")
    with tern.connect() as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd("MAIL FROM:<alice@example.test>"), 250)
        assert_reply(c.cmd("RCPT TO:<bob@example.test>"), 554, "5.7.1")  # no longer trusted to relay
        assert_reply(c.cmd("RCPT TO:<bob@local.test>"), 250, "2.1.5")
        c.cmd("QUIT")


def test_broken_config_on_sighup_keeps_the_running_one(start_tern, hops):
    a, b = hops(), hops()
    tern = start_tern(delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s"},
                      extra_tables={"routes": {"*": f"[127.0.0.1]:{a.port}"}})
    # A new route, but also a key that does not exist: the whole file is refused.
    write_config(tern, route_port=b.port, server={"max_recipents": 5})
    tern.hup("reload refused")
    line = next(l for l in tern.stderr().splitlines() if "reload refused" in l)
    assert "server.max_recipents" in line and "line " in line and str(tern.config_path) in line, line
    assert tern.alive()
    # A syntax error too.
    tern.config_path.write_text("[server\n")
    tern.hup("reload refused")
    assert tern.alive()

    send_message(tern.port, "alice@example.test", ["one@example.test"], make_message(subject="still A"))
    a.wait_for(1)
    assert b.received() == []


def test_sigterm_during_10mb_data_finishes_and_keeps_the_queue(start_tern):
    tern = start_tern(server={"max_message_size": 20 * 1024 * 1024})  # delivery off: the message stays queued
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n"
    body = b"".join(b"%08d " % i + line for i in range(10 * 1024 * 1024 // (len(line) + 9)))
    msg = make_message(subject="ten megabytes at shutdown", body=body)
    data = dot_stuff(msg) + b".\r\n"
    assert len(msg) >= 10 * 1000 * 1000
    half = len(data) // 2

    c = open_transaction(tern, ["bob@example.test"])
    assert_reply(c.cmd("DATA"), 354)
    c.send(data[:half])
    tern.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping: 1 sessions open" in tern.stderr(), WAIT, "tern to start stopping")
    # No new connections while stopping.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", tern.port), timeout=5).close()
    c.send(data[half:])
    qid = queue_id_of(assert_reply(c.read_reply(), 250, "2.0.0"))
    # After the transaction, the session is told the service is closing.
    assert_reply(c.read_reply(), 421)
    assert c.wait_closed(10)
    c.close()
    tern.proc.wait(timeout=WAIT)
    assert tern.proc.returncode == 0, tern.stderr()[-2000:]

    assert tern.queued() == [qid]
    header, rest = split_received(tern.msg(qid))
    assert rest == msg
    assert tern.env(qid).recipients == ["bob@example.test"]
