"""SIGHUP applies a route's tls, auth_user and password (auth_password_file read again) to the next
connection: no connection opened under the old settings, idle in the cache or busy, is used again."""

from __future__ import annotations

import subprocess

from conftest import TERN_BIN, toml_document, wait_until

from test_delivery import DELIVERY_DEFAULTS, diagnostics, dns, hop_port, hops, relay, send, wait_log  # noqa: F401
from test_outbound_tls import TLSNextHop, certs  # noqa: F401

WAIT = 30.0


def rewrite_routes(tern, hop_port: int, dns_port: int, route: dict) -> None:
    """tern's config as the relay fixture wrote it, with `route` as "*"."""
    text = tern.config_path.read_text()
    head, _, _ = text.partition("\n[routes]")
    tern.config_path.write_text(head.rstrip("\n") + "\n\n" + toml_document({}, {"routes": {"*": route}}).lstrip())


def flush(tern) -> None:
    out = subprocess.run([str(TERN_BIN), "queue", "flush", "--config", str(tern.config_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_hup_applies_a_fixed_password_file(relay, hops, certs, tmp_path, hop_port, dns):
    pw = tmp_path / "upstream.pw"
    pw.write_text("not it\n")
    hop = hops("127.0.0.14", cls=TLSNextHop, cert=certs["selfsigned"], users={"relayuser": "upstream secret"})
    route = {"next_hop": f"[127.0.0.14]:{hop_port}", "tls": "require", "auth_user": "relayuser",
             "auth_password_file": str(pw)}
    # A long retry schedule and connection cache: only the flush brings the message back, and a cached
    # connection would be reused if the reload left it.
    tern = relay(routes={"*": route}, delivery={"retry_schedule": ["1h"], "connection_cache_time": "1m"})
    qid, _ = send(tern, ["someone@anywhere.test"], subject="wrong then right")
    (deferred,) = wait_log(tern, qid, "deferred", "someone@anywhere.test", hop)[-1:]
    assert "535" in (deferred["reply"] or ""), deferred
    assert hop.received() == []

    pw.write_text("upstream secret\n")
    rewrite_routes(tern, hop_port, dns.port, route)  # the same text: only the file changed
    tern.hup("changed routes")
    flush(tern)
    (t,) = hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert t.rcpts == ["someone@anywhere.test"]
    assert hop.auth_users == ["relayuser"]
    assert wait_log(tern, qid, "sent", "someone@anywhere.test", hop)
    assert "upstream secret" not in tern.stderr()


def test_hup_applies_a_route_tls_policy(relay, hops, certs, hop_port, dns):
    hop = hops("127.0.0.14", cls=TLSNextHop, cert=certs["selfsigned"])
    route = {"next_hop": f"[127.0.0.14]:{hop_port}", "tls": "none"}
    tern = relay(routes={"*": route}, delivery={"connection_cache_time": "1m"})
    send(tern, ["first@anywhere.test"], subject="in the clear")
    hop.wait_for(1, on_timeout=lambda: diagnostics(tern, hop))
    assert hop.tls_flags == [False]

    rewrite_routes(tern, hop_port, dns.port, dict(route, tls="require"))
    tern.hup("changed routes")
    qid, _ = send(tern, ["second@anywhere.test"], subject="under TLS")
    hop.wait_for(2, on_timeout=lambda: diagnostics(tern, hop))
    assert hop.tls_flags == [False, True], "the second message did not go out under the new tls policy"
    # The hop has the message before Tern reads its 250 and logs the delivery: wait for the line.
    (line,) = wait_until(lambda: [l for l in tern.stderr().splitlines() if qid in l and "status=sent" in l], 10,
                         f"{qid}'s status=sent line")
    assert "tls=TLS" in line, line


def test_a_busy_connection_opened_before_hup_takes_no_new_job(relay, hops, certs, hop_port, dns):
    """The connection carrying a message at SIGHUP finishes it, then QUITs: the next message to the
    same destination goes out on a new connection under the new route (here: tls none -> require)."""
    hop = hops("127.0.0.14", cls=TLSNextHop, cert=certs["selfsigned"], hold=True)
    route = {"next_hop": f"[127.0.0.14]:{hop_port}", "tls": "none"}
    tern = relay(routes={"*": route}, delivery={"connection_cache_time": "1m", "max_connections_per_destination": 1})
    send(tern, ["first@anywhere.test"], subject="busy at reload")
    wait_until(lambda: len(hop.tls_flags) >= 1, WAIT, "the first message's DATA at the hop",
               lambda: diagnostics(tern, hop))
    qid, _ = send(tern, ["second@anywhere.test"], subject="waits for the slot")  # one connection per destination
    rewrite_routes(tern, hop_port, dns.port, dict(route, tls="require"))
    tern.hup("changed routes")
    hop.release()
    hop.wait_for(2, on_timeout=lambda: diagnostics(tern, hop))
    assert hop.tls_flags == [False, True], "the busy connection took a job after the reload"
    assert len({t.connection for t in hop.received()}) == 2
