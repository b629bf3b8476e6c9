"""Cluster-wide limits of the [[shaping]] rules (issue 20): with [cluster] redis set, a rule's
max_message_rate and max_connections hold for the whole cluster, not per node.

Three `tern serve` nodes (n1, n2, n3), each with its own spool, listening on 127.0.0.11, 127.0.0.12 and
127.0.0.13 (and on 127.0.0.1, the same port, where the fixtures probe and the tests inject directly),
share one redis-server on 127.0.0.1. Every node routes example.net to one next hop on SINK_IP
(delivery_helpers.NextHop: it stamps each accepted message and counts the connections open at once) and
has one rule for example.net. Mail comes in through HAProxy (TCP mode, roundrobin over the three nodes,
send-proxy-v2 from PROXY_IP, which is each node's proxy_protocol_from), from `tern blast`, or straight to
the nodes from a Python load whose messages carry their own Message-ID, so that each message that got a
250 is looked for at the sink. The sink tells the nodes apart by the first Received field ("by n1.relay.test").

Windows are by arrival second at the sink (wall clock). Bounds: a second never holds more than the rate
+ 2 (GCRA lets a permit through early, and the sink stamps a message after its SMTP round trips, which
vary on a busy machine); a run with a backlog averages at least 80 % of the rate over its full seconds.

Run inside `unshare --net` (scripts/test.sh): everything listens on loopback addresses.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (TERN_BIN, SMTPConn, assert_reply, free_port, make_message, port_free_on, queue_id_of, stop_process,
                      wait_until)
from delivery_helpers import NextHop
from test_cluster import Redis, cluster_table, node_names, queue_cli, redis, view  # noqa: F401 (redis: the fixture)

DOMAIN = "example.net"
RULE = "wide"
RATE = 50                      # messages per second, for the whole cluster
CONNS = 6                      # connections at once, for the whole cluster
NODE_IPS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
NAMES = ["n1", "n2", "n3"]
SINK_IP = "127.0.0.40"
PROXY_IP = "127.0.0.2"
SENDER = "load@sender.test"
LEASE_KEY = f"tern:lease:{RULE}:"      # no egress source: the lane's source is ""
RATE_KEY = f"tern:rate-m:{RULE}:"
LEASE_EXPIRY = 10.0
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
RECEIVED_BY = re.compile(rb"^Received: from .*?\r\n\tby (\S+) \(Tern\) with \S+ id ([0-9A-F]{14})", re.S)


# --------------------------------------------------------------------------------------------
# Fixtures: Redis, the sink, HAProxy, the nodes. Requested in this order, they stop in the reverse one:
# the nodes first (start_tern), then HAProxy, the sink, Redis.


@pytest.fixture
def sink():
    """sink(delay=...) -> a running NextHop on SINK_IP; stopped at teardown."""
    hops: list[NextHop] = []

    def start(**kw) -> NextHop:
        port = free_port()
        assert port_free_on(port, SINK_IP)
        hop = NextHop(SINK_IP, port, **kw).start()
        hops.append(hop)
        return hop

    yield start
    for hop in hops:
        hop.stop()


@pytest.fixture
def haproxy(tmp_path):
    """haproxy(nodes) -> the port of an HAProxy in TCP mode balancing roundrobin over the nodes' addresses,
    with send-proxy-v2 from PROXY_IP."""
    procs: list[subprocess.Popen] = []

    def start(nodes) -> int:
        port = free_port()
        servers = "\n".join(f"    server {name} {ip}:{t.port} send-proxy-v2 source {PROXY_IP}"
                            for name, ip, t in zip(NAMES, NODE_IPS, nodes))
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend smtp
    bind 127.0.0.1:{port}
    default_backend tern
backend tern
    balance roundrobin
{servers}
""")
        log = open(tmp_path / "haproxy.log", "wb")
        p = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        procs.append(p)

        def listening():
            assert p.poll() is None, (tmp_path / "haproxy.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(listening, 10, "haproxy listening")
        return port

    yield start
    for p in procs:
        stop_process(p, timeout=10)


def rule(**limits) -> dict:
    return {"name": RULE, "domains": [DOMAIN], **limits}


def start_nodes(start_tern, redis: Redis, hop: NextHop, shaping: dict) -> list:
    """Three nodes of one cluster, each with its own spool; returns them once each lists all three."""
    nodes = []
    for name, ip in zip(NAMES, NODE_IPS):
        port = free_port()
        assert port_free_on(port, ip), f"port {port} taken on {ip}"
        nodes.append(start_tern(
            port=port,
            top={"hostname": f"{name}.relay.test"},
            server={"listen": [f"{ip}:{port}", f"127.0.0.1:{port}"], "proxy_protocol_from": [f"{PROXY_IP}/32"]},
            delivery={"enabled": True, "retry_schedule": ["1s"], "connect_timeout": "2s",
                      "max_connections_per_destination": 20},
            extra_tables={"dns": {"servers": ["127.0.0.1:9"]},
                          "routes": {DOMAIN: f"[{SINK_IP}]:{hop.port}"},
                          "shaping": [shaping],
                          "cluster": cluster_table(redis, name)}))
    wait_until(lambda: all(node_names(t) == NAMES for t in nodes), 10, "every node listing n1, n2, n3",
               lambda: "\n".join(t.stderr()[-1500:] for t in nodes))
    return nodes


# --------------------------------------------------------------------------------------------
# What the sink received


class Arrivals:
    """The sink's transactions, each as (wall-clock time, node, queue id, Message-ID or None, recipients)."""

    def __init__(self, hop: NextHop):
        self.hop = hop
        self.offset = time.time() - time.monotonic()

    def all(self) -> list[tuple[float, str, str, str | None, list[str]]]:
        out = []
        for t in self.hop.received():
            m = RECEIVED_BY.match(t.content)
            assert m, f"no Received field of a node in {t.content[:300]!r}"
            out.append((t.at + self.offset, m.group(1).decode().split(".")[0], m.group(2).decode(),
                        t.header("Message-Id"), list(t.rcpts)))
        return sorted(out, key=lambda a: a[0])

    def count(self) -> int:
        return len(self.hop.received())

    def times(self, node: str | None = None, start: float = float("-inf"), end: float = float("inf")) -> list[float]:
        return [a[0] for a in self.all() if (node is None or a[1] == node) and start <= a[0] < end]

    def max_open_between(self, start: float, end: float) -> int:
        """The most sink sessions open at once during [start, end) (wall clock)."""
        events = []
        now = time.monotonic()
        for s in self.hop.sessions_seen():
            begin = s.started + self.offset
            stop = (s.ended if s.ended is not None else now) + self.offset
            if stop <= start or begin >= end:
                continue
            events.append((max(begin, start), 1))
            events.append((min(stop, end), -1))
        most = level = 0
        for _, d in sorted(events, key=lambda e: (e[0], e[1])):
            level += d
            most = max(most, level)
        return most


def per_second(times: list[float]) -> dict[int, int]:
    """Messages per arrival second, every second from the first to the last (empty ones as 0)."""
    if not times:
        return {}
    c = collections.Counter(int(t) for t in times)
    return {s: c.get(s, 0) for s in range(min(c), max(c) + 1)}


def full_seconds(counts: dict[int, int]) -> dict[int, int]:
    """Without the first and last second (partly in the run)."""
    keys = sorted(counts)
    return {s: counts[s] for s in keys[1:-1]}


def show(counts: dict[int, int]) -> str:
    return " ".join(str(counts[s]) for s in sorted(counts))


def lease_members(redis: Redis) -> list[str]:
    return [m.decode() for m in redis.call("ZRANGE", LEASE_KEY, "0", "-1")]


# --------------------------------------------------------------------------------------------
# Mail in


def blast(port: int, messages: int, concurrency: int, prefix: str, per_connection: int = 5) -> dict:
    """`tern blast` to 127.0.0.1:port: one recipient PREFIX{n}@example.net per message; its JSON report."""
    r = subprocess.run([str(TERN_BIN), "blast", "--server", f"127.0.0.1:{port}", "--messages", str(messages),
                        "--concurrency", str(concurrency), "--messages-per-connection", str(per_connection),
                        "--size", "2k", "--from", SENDER, "--to", f"{prefix}{{n}}@{DOMAIN}", "--timeout", "30s",
                        "--json", "--quiet"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"tern blast exited {r.returncode}:\n{r.stderr}\n{r.stdout}"
    return json.loads(r.stdout)


class Load:
    """Sessions straight to each node (127.0.0.1:port), `threads` per node, each sending `per_thread`
    messages, `per_connection` per session. Each message has its own Message-ID <TAG@load.test> and
    recipient TAG@example.net; `acked` maps TAG -> (node, queue id) once it got 250. A session that fails
    ends its thread, with the error kept in `errors[node]`."""

    def __init__(self, nodes, threads: int, per_thread: int, per_connection: int = 25):
        self.nodes = nodes
        self.per_thread = per_thread
        self.per_connection = per_connection
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[str, str]] = {}
        self.errors: dict[str, list[str]] = collections.defaultdict(list)
        self.threads = [threading.Thread(target=self._run, args=(name, t, k), daemon=True)
                        for name, t in zip(NAMES, nodes) for k in range(threads)]

    def _run(self, name: str, tern, k: int) -> None:
        sent = 0
        try:
            while sent < self.per_thread:
                count = min(self.per_connection, self.per_thread - sent)
                self._session(name, tern, [f"{name}-{k}-{sent + i}" for i in range(count)])
                sent += count
        except (OSError, EOFError, AssertionError) as e:
            with self.lock:
                self.errors[name].append(f"thread {k} after {sent}: {e!r}")

    def _session(self, name: str, tern, tags: list[str]) -> None:
        """One session to `tern` sending a message per tag (recipient TAG@DOMAIN, Message-ID
        <TAG@load.test>), each recorded in `acked` once it got 250."""
        with SMTPConn(tern.port, timeout=30) as c:
            c.greeting()
            c.ehlo("load.test")
            for tag in tags:
                rcpt = f"{tag}@{DOMAIN}"
                msg = make_message(subject=tag, msgid=f"<{tag}@load.test>", sender=SENDER, to=rcpt)
                assert_reply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250, "2.1.0")
                assert_reply(c.cmd(f"RCPT TO:<{rcpt}>"), 250, "2.1.5")
                qid = queue_id_of(assert_reply(c.data(msg), 250, "2.0.0"))
                with self.lock:
                    self.acked[tag] = (name, qid)
            c.cmd("QUIT")

    def top_up(self, name: str, tern, backlog, stop: threading.Event, low: int = 150, batch: int = 25,
               cap: int = 1000) -> threading.Thread:
        """A thread that keeps `name`'s backlog (backlog(): its messages accepted and not yet at the sink) at
        `low` or more, `batch` messages a session, until `stop` is set or it sent `cap` messages."""
        def run() -> None:
            sent = 0
            try:
                while not stop.is_set() and sent < cap:
                    if backlog() >= low:
                        time.sleep(0.05)
                        continue
                    self._session(name, tern, [f"{name}-f-{sent + i}" for i in range(batch)])
                    sent += batch
            except (OSError, EOFError, AssertionError) as e:
                with self.lock:
                    self.errors[name].append(f"top-up after {sent}: {e!r}")
        th = threading.Thread(target=run, daemon=True)
        self.threads.append(th)
        th.start()
        return th

    def start(self) -> "Load":
        for th in self.threads:
            th.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for th in self.threads:
            th.join(timeout=max(0.1, deadline - time.monotonic()))
        assert not any(th.is_alive() for th in self.threads), f"load sessions still running after {timeout:g}s"

    def acked_now(self) -> dict[str, tuple[str, str]]:
        with self.lock:
            return dict(self.acked)


def message_ids(arrivals: Arrivals) -> collections.Counter:
    """Message-ID tag -> how many times the sink received it."""
    c = collections.Counter()
    for _, _, _, mid, _ in arrivals.all():
        m = re.fullmatch(r"<(.+)@load\.test>", mid or "")
        if m:
            c[m.group(1)] += 1
    return c


def sessions_by_node(hop: NextHop) -> dict[str, tuple[int, int]]:
    """Node (by its EHLO name) -> (sessions at the sink, messages they carried)."""
    out: dict[str, list[int]] = {}
    for s in hop.sessions_seen():
        name = (s.ehlo or "?").split(".")[0]
        row = out.setdefault(name, [0, 0])
        row[0] += 1
        row[1] += len(s.messages)
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def diagnostics(nodes, hop=None) -> str:
    out = [repr(hop)] if hop is not None else []
    for name, t in zip(NAMES, nodes):
        out.append(f"----- {name} (stderr tail)\n{t.stderr()[-2500:]}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# 1. The message rate holds for the cluster


def test_the_message_rate_holds_for_the_whole_cluster_behind_haproxy(redis, sink, haproxy, start_tern):
    hop = sink()
    nodes = start_nodes(start_tern, redis, hop, rule(max_message_rate=f"{RATE}/s", max_connections=CONNS))
    port = haproxy(nodes)
    arrivals = Arrivals(hop)

    total = 600
    report = blast(port, total, 30, "r")
    assert report["messages"]["accepted"] == total, report["messages"]
    # The permits come from Redis: its GCRA key for the rule (it expires a second after its last use).
    wait_until(lambda: redis.call("EXISTS", RATE_KEY) == 1, 5, f"{RATE_KEY} in Redis",
               lambda: redis.call("KEYS", "tern:*"))
    # Each node took its share of the load through the proxy, and saw the real client.
    for t in nodes:
        t.wait_log(f"via proxy {PROXY_IP}", timeout=5)

    wait_until(lambda: arrivals.count() >= total, 40, f"{total} messages at the sink",
               lambda: f"{arrivals.count()} so far\n" + diagnostics(nodes, hop))
    time.sleep(1.0)  # anything more (a duplicate) would come now
    got = arrivals.all()
    rcpts = collections.Counter(r for a in got for r in a[4])
    duplicates = {r: n for r, n in rcpts.items() if n > 1}
    print(f"\nrate test: {len(got)} transactions at the sink, {len(rcpts)} recipients, duplicates: {duplicates}")
    assert all(re.fullmatch(rf"r\d+@{re.escape(DOMAIN)}", r) for r in rcpts), sorted(rcpts)[:10]
    assert len(rcpts) == total, f"{total} accepted, {len(rcpts)} distinct recipients delivered"
    assert not duplicates, f"delivered more than once: {duplicates}"
    by_node = collections.Counter(a[1] for a in got)
    assert set(by_node) == set(NAMES), by_node  # every node delivered its share

    counts = per_second([a[0] for a in got])
    full = full_seconds(counts)
    print(f"per second: {show(counts)}; by node {dict(by_node)}; most in a sliding second {hop.most_in_window(1.0)}; "
          f"(sessions, messages) by node {sessions_by_node(hop)}")
    assert max(counts.values()) <= RATE + 2, f"more than {RATE}+2 in one second: {show(counts)}"
    assert full, f"the delivery took less than three seconds: {show(counts)}"
    average = sum(full.values()) / len(full)
    assert average >= 0.8 * RATE, f"{average:.1f}/s over the full seconds, less than 80 % of {RATE}/s: {show(counts)}"

    # Permits and leases asked of Redis by every node. A node refused a permit asks again when the next
    # one is due, so three nodes contending take several round trips a message; a node asking in a loop
    # without waiting would take hundreds.
    requests = [t.metric("tern_cluster_limit_requests_total") or 0 for t in nodes]
    print(f"tern_cluster_limit_requests_total: {requests} ({sum(requests) / total:.1f} a message)")
    assert all(r > 0 for r in requests), requests
    assert sum(requests) <= 15 * total, requests
    for t in nodes:
        assert t.metric("tern_cluster_redis_up") == 1


# --------------------------------------------------------------------------------------------
# 2. max_connections holds for the cluster


def test_max_connections_holds_for_the_whole_cluster(redis, sink, haproxy, start_tern):
    hop = sink(delay=0.2)  # each message holds its connection a while: connections overlap
    nodes = start_nodes(start_tern, redis, hop, rule(max_connections=CONNS))
    port = haproxy(nodes)
    arrivals = Arrivals(hop)

    leases_seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                leases_seen.append(redis.call("ZCARD", LEASE_KEY))
            except (OSError, EOFError, RuntimeError):
                pass
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # All three nodes at once, through HAProxy.
        total = 180
        report = blast(port, total, 30, "c")
        assert report["messages"]["accepted"] == total, report["messages"]
        wait_until(lambda: arrivals.count() >= total, 40, f"{total} messages at the sink",
                   lambda: f"{arrivals.count()} so far, {hop.max_open} open at most\n" + diagnostics(nodes, hop))
        got = arrivals.all()
        rcpts = collections.Counter(r for a in got for r in a[4])
        duplicates = {r: n for r, n in rcpts.items() if n > 1}
        by_node = collections.Counter(a[1] for a in got)
        print(f"\nconnections test: most open at once at the sink {hop.max_open}, sessions {len(hop.sessions_seen())}, "
              f"most leases in Redis {max(leases_seen, default=None)}, by node {dict(by_node)}, duplicates {duplicates}")
        assert hop.max_open <= CONNS, f"{hop.max_open} connections open at once at the sink, the cluster's limit is {CONNS}"
        assert hop.max_open > CONNS // 3, (
            f"only {hop.max_open} connections at once: no more than one node's share ({CONNS // 3})")
        assert max(leases_seen, default=0) <= CONNS, f"{max(leases_seen)} leases in {LEASE_KEY}"
        assert len(rcpts) == total and not duplicates, (len(rcpts), duplicates)
        assert set(by_node) == set(NAMES), by_node

        # Every connection closed (idle ones after connection_cache_time, 2 s): their leases went back.
        def leases_back() -> bool:
            return hop.open_now == 0 and redis.call("ZCARD", LEASE_KEY) == 0
        try:
            wait_until(leases_back, 8, "every connection closed and its lease removed")
            leftover = []
        except AssertionError:
            leftover = redis.call("ZRANGE", LEASE_KEY, "0", "-1", "WITHSCORES")
        open_then, redis_now = hop.open_now, redis.call("TIME")
        print(f"after the load: sink sessions open {open_then}, leases left {leftover} (Redis TIME {redis_now})")

        # Then mail for n1 alone: nothing else is using the rule's connections, so it may open all six.
        burst_from = time.time()
        report = blast(nodes[0].port, 120, 30, "alone")
        assert report["messages"]["accepted"] == 120, report["messages"]
        wait_until(lambda: arrivals.count() >= total + 120, 40, f"{total + 120} messages at the sink",
                   lambda: f"{arrivals.count()} so far\n" + diagnostics(nodes, hop))
        alone_open = arrivals.max_open_between(burst_from, time.time())
        print(f"n1 alone: most connections at once {alone_open}; leases now {lease_members(redis)}")
    finally:
        stop.set()
        sampler.join(timeout=5)

    assert hop.max_open <= CONNS, f"{hop.max_open} connections open at once at the sink, the cluster's limit is {CONNS}"
    assert max(leases_seen, default=0) <= CONNS, f"{max(leases_seen)} leases in {LEASE_KEY}"
    if leftover:
        now_ms = int(redis_now[0]) * 1000 + int(redis_now[1]) // 1000
        held = {leftover[i].decode(): (int(leftover[i + 1]) - now_ms) / 1000 for i in range(0, len(leftover), 2)}
        pytest.fail(f"{len(held)} lease(s) left in {LEASE_KEY} with {open_then} connection(s) open at the sink, 8 s "
                    f"after the last message, still renewed (expiry in seconds from Redis's clock): {held}; "
                    f"then n1 alone could open {alone_open} connections of {CONNS}")
    assert alone_open == CONNS, f"n1 alone opened at most {alone_open} connections, the cluster's limit is {CONNS}"


# --------------------------------------------------------------------------------------------
# 3. Redis killed in the middle: each node its share, then shared again


def test_with_redis_killed_each_node_uses_its_share_and_shares_again_once_it_is_back(redis, sink, start_tern):
    hop = sink()
    nodes = start_nodes(start_tern, redis, hop, rule(max_message_rate=f"{RATE}/s", max_connections=CONNS))
    arrivals = Arrivals(hop)

    load = Load(nodes, threads=3, per_thread=100).start()  # 900 messages, 300 a node: a backlog throughout
    wait_until(lambda: arrivals.count() >= 100, 30, "100 messages at the sink", lambda: diagnostics(nodes, hop))

    redis.kill()
    down = f"cluster: Redis at {redis.address} unreachable"
    for t in nodes:
        line = t.wait_log(down, timeout=5)
        assert "(1/3, 3 nodes last seen)" in line, line
    down_from = time.time()
    for t in nodes:
        assert t.metric("tern_cluster_redis_up") == 0
    time.sleep(8.0)  # the down period measured
    down_to = time.time()
    load.join(timeout=60)  # injection done (it is not paced by delivery)

    # Delivery went on at each node's share (50/s / 3 nodes), so the cluster's rate stayed within the rule's.
    # The first half second is left out: permits fetched just before may still be spent then.
    start, end = down_from + 0.5, down_to
    span = end - start
    during = arrivals.times(start=start, end=end)
    per_node = {n: len(arrivals.times(node=n, start=start, end=end)) for n in NAMES}
    print(f"\nRedis down {span:.1f}s: {len(during)} delivered ({len(during) / span:.1f}/s), by node {per_node}; "
          f"per second {show(per_second(during))}")
    assert len(during) <= RATE * span * 1.05 + 6, (
        f"{len(during)} messages in {span:.1f}s with Redis down: more than {RATE}/s for the cluster")
    for n, c in per_node.items():
        assert c <= RATE / 3 * span * 1.05 + 2, f"{n} sent {c} in {span:.1f}s: more than its share ({RATE}/3 per second)"
        assert c >= 0.5 * RATE / 3 * span, f"{n} sent {c} in {span:.1f}s with Redis down: delivery did not go on"
    for t in nodes:
        assert len([l for l in t.stderr().splitlines() if "unreachable" in l]) == 1  # said once

    requests_before = [t.metric("tern_cluster_limit_requests_total") or 0 for t in nodes]
    redis.start()  # the same port, empty
    back_from = time.time()
    for t in nodes:
        line = t.wait_log(f"cluster: Redis at {redis.address} answers again after ", timeout=10)
        assert line.endswith("; shared state again"), line
    back = time.time()
    down_open = arrivals.max_open_between(start, end)
    # Shared again: permits asked of Redis, its GCRA key written.
    wait_until(lambda: all((t.metric("tern_cluster_limit_requests_total") or 0) > b
                           for t, b in zip(nodes, requests_before)), 5, "every node asking Redis for permits again",
               lambda: [t.metric("tern_cluster_limit_requests_total") for t in nodes])
    wait_until(lambda: redis.call("EXISTS", RATE_KEY) == 1, 5, f"{RATE_KEY} in the restarted Redis")
    for t in nodes:
        assert t.metric("tern_cluster_redis_up") == 1

    acked = load.acked_now()
    assert not any(load.errors.values()), dict(load.errors)
    assert len(acked) == 900
    wait_until(lambda: len(message_ids(arrivals)) >= len(acked), 90,
               f"all {len(acked)} accepted messages at the sink",
               lambda: f"{len(message_ids(arrivals))} so far\n" + diagnostics(nodes, hop))
    ids = message_ids(arrivals)
    missing = sorted(set(acked) - set(ids))
    duplicates = {k: v for k, v in ids.items() if v > 1}
    after = arrivals.times(start=back + 1.0)
    counts_after = per_second(after)
    print(f"after Redis came back (at +{back - back_from:.1f}s): per second {show(counts_after)}; "
          f"duplicates {len(duplicates)}: {sorted(duplicates)[:20]}; most connections at once while down "
          f"{down_open}, after {arrivals.max_open_between(back, time.time())}")
    assert not missing, f"{len(missing)} accepted messages never delivered: {missing[:20]}"
    assert set(ids) <= set(acked)
    assert not duplicates, f"{len(duplicates)} delivered more than once: {sorted(duplicates)[:20]}"
    assert counts_after and max(counts_after.values()) <= RATE + 2, f"shared again, yet: {show(counts_after)}"
    full = full_seconds(counts_after)
    assert len(full) >= 3, f"too little left to send once Redis was back: {show(counts_after)}"
    assert sum(full.values()) / len(full) >= 0.8 * RATE, f"shared again, but slow: {show(counts_after)}"


# --------------------------------------------------------------------------------------------
# 4. A node killed with kill -9: its leases come back to the cluster, its mail after its restart


def test_a_node_killed_gives_its_leases_back_and_delivers_its_mail_after_its_restart(redis, sink, start_tern):
    # 80 ms per message at the sink: a connection carries about 8 a second with tern's round trips, so the
    # rate needs (nearly) all six connections; four would carry about 35 a second.
    hop = sink(delay=0.08)
    nodes = start_nodes(start_tern, redis, hop, rule(max_message_rate=f"{RATE}/s", max_connections=CONNS))
    n1, n2, n3 = nodes
    arrivals = Arrivals(hop)

    load = Load(nodes, threads=2, per_thread=100).start()  # 600 messages, 200 a node
    wait_until(lambda: arrivals.count() >= 60 and any(m.startswith("n1:") for m in lease_members(redis)), 30,
               "60 messages at the sink and n1 holding a lease", lambda: f"{lease_members(redis)}\n" + diagnostics(nodes, hop))
    held = [m for m in lease_members(redis) if m.startswith("n1:")]
    acked_before_kill = {k: v for k, v in load.acked_now().items() if v[0] == "n1"}
    n1.kill(signal.SIGKILL)
    killed = time.time()
    n1_sent_at_kill = len(arrivals.times(node="n1"))
    print(f"\nkill -9 of n1 with {len(held)} lease(s) {held}; n1 had {len(acked_before_kill)} accepted, "
          f"{n1_sent_at_kill} delivered")
    assert len(acked_before_kill) > n1_sent_at_kill, "n1 had nothing queued when it was killed: nothing to test"
    # The survivors keep a backlog until the end of the window measured below (neither runs dry: a node
    # with no mail left keeps its idle connections, and their leases, for connection_cache_time).
    feeding = threading.Event()

    def backlog(name: str):
        def count() -> int:
            delivered = sum(1 for a in arrivals.all() if a[1] == name)
            return sum(1 for v in load.acked_now().values() if v[0] == name) - delivered
        return count
    for name, t in (("n2", n2), ("n3", n3)):
        load.top_up(name, t, backlog(name), feeding)

    # Its leases stay until they expire (10 s after their last renewal), then the survivors take them.
    def n1_leases_gone() -> bool:
        return not any(m.startswith("n1:") for m in lease_members(redis))
    wait_until(n1_leases_gone, LEASE_EXPIRY + 3, "n1's leases expired", lambda: lease_members(redis))
    expired = time.time()
    print(f"n1's leases gone {expired - killed:.1f}s after the kill; survivors' leases now {lease_members(redis)}; "
          f"most connections at once until then {arrivals.max_open_between(killed + 0.5, expired)}")
    assert n2.alive() and n3.alive()

    # A window after the expiry: the survivors have the whole cluster's connections and rate.
    time.sleep(5.0)
    start, end = expired + 1.0, time.time()
    feeding.set()
    window = arrivals.times(start=start, end=end)
    most_open = arrivals.max_open_between(start, end)
    counts = per_second(window)
    rate = len(window) / (end - start)
    print(f"after the expiry ({end - start:.1f}s): {rate:.1f}/s, per second {show(counts)}, "
          f"most connections at once {most_open}, per second by node "
          f"{ {n: show(per_second(arrivals.times(node=n, start=start, end=end))) for n in NAMES} }, "
          f"backlogs at the end {backlog('n2')()} and {backlog('n3')()}")
    assert all(a[1] != "n1" for a in arrivals.all() if a[0] >= start), "n1 delivered after its kill -9"
    assert rate >= 0.8 * RATE, f"the survivors reach {rate:.1f}/s after n1's leases expired, less than 80 % of {RATE}/s"
    assert max(counts.values()) <= RATE + 2, show(counts)
    assert most_open == CONNS, f"the survivors had at most {most_open} connections at once after n1's leases expired"

    # n1 back on its own spool: every message any node answered 250 reaches the sink.
    n1.start()
    load.join(timeout=60)
    assert not load.errors["n2"] and not load.errors["n3"], dict(load.errors)
    acked = load.acked_now()
    print(f"accepted: {collections.Counter(v[0] for v in acked.values())}; n1's sessions cut by the kill: "
          f"{len(load.errors['n1'])}; (sessions, messages) at the sink by node {sessions_by_node(hop)}")
    wait_until(lambda: set(acked) <= set(message_ids(arrivals)), 90, f"all {len(acked)} accepted messages at the sink",
               lambda: f"missing {len(set(acked) - set(message_ids(arrivals)))}\n" + diagnostics(nodes, hop))
    time.sleep(1.0)
    ids = message_ids(arrivals)
    duplicates = {k: v for k, v in ids.items() if v > 1}
    print(f"delivered {len(ids)} distinct, {sum(ids.values())} transactions; duplicates {len(duplicates)}: "
          f"{sorted(duplicates)[:20]}")
    # Duplicates may come only from n1 (messages in flight when it was killed, sent again after its restart).
    assert all(k.startswith("n1-") for k in duplicates), f"a survivor delivered twice: {duplicates}"
    assert set(ids) <= set(acked) | {k for k in ids if k.startswith("n1-")}, "the sink got a message nobody sent"
    # Overall, the cluster's rate held throughout, the kill and the restart included.
    counts = per_second(arrivals.times())
    assert max(counts.values()) <= RATE + 2, show(counts)
    assert hop.max_open <= CONNS, hop.max_open


# --------------------------------------------------------------------------------------------
# 5. Fairness: a node that comes late with mail gets its share of the connections


def test_a_node_that_comes_late_gets_its_share_of_the_connections(redis, sink, start_tern):
    """n1 and n2 hold all 6 connections with their backlogs (busy connections are reused, so without
    fairness a lease would rarely come free); then n3 gets mail. Within a few seconds n1 and n2 close
    the connections above their share (6/3) after their current message, the lease queue gives the
    freed ones to n3, and each node delivers about a third."""
    hop = sink(delay=0.08)  # ~12 messages a second a connection: the 6 connections bind, with the rate
    nodes = start_nodes(start_tern, redis, hop, rule(max_message_rate=f"{RATE}/s", max_connections=CONNS))
    arrivals = Arrivals(hop)
    load = Load(nodes, threads=0, per_thread=0)
    stop = threading.Event()

    def backlog(name: str):
        def count() -> int:
            at_sink = message_ids(arrivals)
            return sum(1 for tag, (node, _) in load.acked_now().items() if node == name and tag not in at_sink)
        return count

    def held() -> collections.Counter:
        return collections.Counter(m.rsplit(":", 1)[0] for m in lease_members(redis))

    try:
        for name, t in zip(NAMES[:2], nodes[:2]):
            load.top_up(name, t, backlog(name), stop, low=100, cap=900)
        wait_until(lambda: sum(held().values()) == CONNS and arrivals.count() >= 100, 20,
                   "n1 and n2 holding every connection and delivering",
                   lambda: f"leases {held()}, {arrivals.count()} at the sink\n" + diagnostics(nodes, hop))
        before = held()
        assert set(before) <= {"n1", "n2"}, before
        late = time.time()
        load.top_up("n3", nodes[2], backlog("n3"), stop, low=100, cap=900)
        most_n3 = 0
        while time.time() < late + 10:
            most_n3 = max(most_n3, held()["n3"])
            time.sleep(0.1)
        # The cluster view (every node's heartbeat, a second old at most): each node's leases, whether it
        # waits, the permits it took; never more leases than the limit in total.
        uses = {n["node"]: n["limits"] for n in view(nodes[0])["nodes"]}
        assert set(uses) == set(NAMES), uses
        for name, limits in uses.items():
            assert [(u["rule"], u["source"], u["max_connections"], u["max_message_rate"]) for u in limits] == \
                [(RULE, "", CONNS, "50/s")], (name, limits)
            assert limits[0]["permits_last_minute"] > 0, (name, limits)
        assert 0 < sum(u[0]["leases"] for u in uses.values()) <= CONNS, uses
        table = queue_cli(nodes[1], "destinations", "--cluster").stdout
        assert "shared limits:" in table, table
        total = [line.split() for line in table.splitlines() if "(cluster)" in line]
        assert len(total) == 1 and total[0][:2] == [RULE, "-"] and total[0][3].endswith(f"/{CONNS}"), table
    finally:
        stop.set()
    load.join(30)
    assert not load.errors, dict(load.errors)

    window = [a for a in arrivals.all() if late + 4 <= a[0] < late + 10]
    by_node = collections.Counter(a[1] for a in window)
    shed = [t.metric("tern_cluster_connections_shed_total") or 0 for t in nodes]
    print(f"\nfairness: leases before n3 {dict(before)}; most leases n3 held {most_n3}; deliveries "
          f"{late + 4:.0f}..{late + 10:.0f}: {dict(by_node)}; connections shed {shed}; per second "
          f"{show(per_second([a[0] for a in arrivals.all()]))}")
    assert most_n3 >= CONNS // 3, f"n3 never held its share of the connections (at most {most_n3})"
    for name in NAMES:
        assert by_node[name] >= 0.2 * len(window), f"{name} delivered {by_node[name]} of {len(window)}: {dict(by_node)}"
    assert shed[0] + shed[1] > 0, f"n1 and n2 closed no connection for n3: {shed}"
    assert arrivals.max_open_between(late - 5, late + 10) <= CONNS, "more connections than the rule's limit"

    # Everything accepted is delivered, once.
    acked = load.acked_now()
    wait_until(lambda: set(acked) <= set(message_ids(arrivals)), 60, "every accepted message at the sink",
               lambda: f"{len(set(acked) - set(message_ids(arrivals)))} missing\n" + diagnostics(nodes, hop))
    duplicates = {m: n for m, n in message_ids(arrivals).items() if n > 1}
    assert not duplicates, duplicates


# --------------------------------------------------------------------------------------------
# 6. Redis answers with an error (connected all the same): the lease is asked again, no stall


def test_an_error_answer_from_redis_is_asked_again_and_mail_goes_once_it_answers(redis, sink, start_tern):
    """A Redis that answers -LOADING (reloading its data), -BUSY or -OOM is still connected: limits stay
    shared, so a request answered with an error must be asked again. Here the lease key holds a string,
    so the lease script fails with WRONGTYPE until the key is deleted."""
    hop = sink()
    nodes = start_nodes(start_tern, redis, hop, rule(max_connections=CONNS))
    arrivals = Arrivals(hop)
    redis.call("SET", LEASE_KEY, "not a sorted set")
    load = Load(nodes[:1], threads=1, per_thread=3, per_connection=3).start()
    load.join(30)
    assert not load.errors and len(load.acked_now()) == 3, (dict(load.errors), load.acked_now())
    nodes[0].wait_log(f"cluster: Redis answered a lease request for {RULE} with", timeout=10)
    time.sleep(1.0)
    assert arrivals.count() == 0, "delivered without a lease"
    assert nodes[0].stderr().count("cluster: Redis answered a lease request") == 1, "logged once, not per retry"
    redis.call("DEL", LEASE_KEY)
    wait_until(lambda: arrivals.count() >= 3, 10, "the three messages at the sink once Redis answers",
               lambda: diagnostics(nodes, hop))
