"""Several `tern serve` nodes sharing state through one Redis ([cluster], issue 20).

Each node keeps its own spool; through Redis they see each other's heartbeats (GET /cluster, `tern queue
destinations --cluster`), refuse the addresses any of them suppressed, and hold a destination any of them
suspended. With Redis gone each node says so once, goes on alone (mail still accepted, its suppression list
from its own spool) and rejoins by itself when Redis answers again, sending what changed meanwhile.

Run inside `unshare --net` (scripts/test.sh): Redis listens on 127.0.0.1, the providers on 127.0.0.30 and up.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (OTHER_IP, TERN_BIN, SMTPConn, assert_reply, free_port, make_message, send_message,
                      toml_document, wait_until)
from delivery_helpers import log_entries

REDIS_SERVER = "/usr/bin/redis-server"
SENDER = "sender@sender.test"
SHARE = 5.0     # a change made on one node is in force on the others within this (said: about a second)
FORMED = 8.0    # every node's heartbeat seen by every node
WAIT = 15.0     # a delivery that is due


# --------------------------------------------------------------------------------------------
# Redis: our own redis-server, and a minimal RESP client to look at what the nodes keep in it


def resp_encode(args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def resp_read(f):
    line = f.readline()
    if not line:
        raise EOFError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"Redis error: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise RuntimeError(f"bad RESP line {line!r}")


class Redis:
    """redis-server on 127.0.0.1:port (or a unix socket), no persistence; kill() and start() again on the
    same address, empty (as a Redis that lost its memory)."""

    def __init__(self, workdir: Path, unix: str | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.unix = unix
        self.port = 0 if unix else free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "redis.log"

    @property
    def address(self) -> str:
        return self.unix or f"127.0.0.1:{self.port}"

    def start(self) -> "Redis":
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self.workdir)]
        if self.unix:
            args += ["--unixsocket", self.unix, "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.call("PING") == "PONG"
            except (OSError, EOFError, RuntimeError):
                return False
        wait_until(answers, 10, f"redis-server answering at {self.address}", self.log)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def call(self, *args):
        if self.unix:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(self.unix)
        else:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        with s, s.makefile("rb") as f:
            s.sendall(resp_encode(args))
            return resp_read(f)


@pytest.fixture
def redis(tmp_path):
    """A running Redis for the test (requested before start_tern: stopped after the nodes)."""
    server = Redis(tmp_path / "redis")
    yield server.start()
    server.kill()


@pytest.fixture
def idle_redis(tmp_path):
    """A Redis address with nothing listening yet: start() it in the test; killed at teardown."""
    server = Redis(tmp_path / "idle-redis")
    yield server
    server.kill()


@pytest.fixture
def unix_redis():
    """A Redis on a unix socket only (a short path: sun_path holds 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="tr", dir="/tmp"))
    server = Redis(d, unix=str(d / "redis.sock"))
    yield server.start()
    server.kill()


def cluster_table(redis: Redis, node: str, timeout: str = "500ms") -> dict:
    return {"redis": redis.address, "node": node, "timeout": timeout}


# --------------------------------------------------------------------------------------------
# Talking to the nodes


def view(tern) -> dict:
    status, body = tern.admin_get("/cluster")
    assert status == 200, (status, body)
    return json.loads(body)


def node_names(tern) -> list[str]:
    return [n["node"] for n in view(tern)["nodes"]]


def wait_formed(nodes, names: list[str], timeout: float = FORMED) -> None:
    """Every node lists exactly `names` in its GET /cluster."""
    wait_until(lambda: all(node_names(t) == names for t in nodes), timeout, f"every node listing {names}",
               lambda: "\n".join(f"{t.admin_port}: {view(t)}" for t in nodes))


def admin_cli(tern, command: str, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    """`tern COMMAND ARGS --admin` against the node's admin endpoint; its exit status checked."""
    p = subprocess.run([str(TERN_BIN), command, *args, "--admin", f"127.0.0.1:{tern.admin_port}"],
                       capture_output=True, text=True, timeout=30)
    if expect is not None:
        assert p.returncode == expect, f"tern {command} {' '.join(args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def queue_cli(tern, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    return admin_cli(tern, "queue", *args, expect=expect)


def suppress(tern, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    return admin_cli(tern, "suppress", *args, expect=expect)


def rcpt_code(tern, rcpt: str, sender: str = "x@sender.test"):
    """The reply to RCPT TO:<rcpt> in a fresh session (RSET, QUIT)."""
    with SMTPConn(tern.port, timeout=10) as c:
        c.greeting()
        c.ehlo()
        assert_reply(c.cmd(f"MAIL FROM:<{sender}>"), 250, "2.1.0")
        reply = c.cmd(f"RCPT TO:<{rcpt}>")
        c.cmd("QUIT")
        return reply


def refused(tern, rcpt: str) -> bool:
    r = rcpt_code(tern, rcpt)
    assert r.code in (250, 550), f"RCPT {rcpt} on port {tern.port}: {r}"
    if r.code == 550:
        assert_reply(r, 550, "5.1.1", f"RCPT {rcpt} refused")
        return True
    return False


def wait_refused(tern, rcpt: str, what: str) -> None:
    wait_until(lambda: refused(tern, rcpt), SHARE, f"{what}: RCPT TO:<{rcpt}> refused with 550 5.1.1",
               lambda: tern.stderr()[-3000:])


def wait_accepted(tern, rcpt: str, what: str) -> None:
    wait_until(lambda: not refused(tern, rcpt), SHARE, f"{what}: RCPT TO:<{rcpt}> accepted with 250",
               lambda: tern.stderr()[-3000:])


def send(tern, rcpts: list[str], subject: str) -> str:
    msg = make_message(subject=subject, sender=SENDER, to=", ".join(rcpts))
    return send_message(tern.port, SENDER, rcpts, msg)


def destinations(tern) -> dict[str, dict]:
    data = json.loads(queue_cli(tern, "destinations", "--json").stdout)
    return {row["destination"]: row for row in data["destinations"]}


# --------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("table,error", [
    ({"redis": "127.0.0.1:6379", "node": "bad name"}, "cluster.node: \"bad name\" is not a node name"),
    ({"redis": "127.0.0.1:6379", "node": "n" * 65}, "cluster.node: "),
    ({"redis": "127.0.0.1:6379", "node": "n1", "timeout": "5ms"}, "cluster.timeout: must be 10ms to 60s"),
    ({"redis": "127.0.0.1:6379", "node": "n1", "timeout": "61s"}, "cluster.timeout: must be 10ms to 60s"),
    ({"redis": "nonsense", "node": "n1"}, "cluster.redis: "),
])
def test_a_bad_cluster_table_is_refused_naming_the_key(tmp_path, table, error):
    f = tmp_path / "tern.toml"
    f.write_text(toml_document({"hostname": "relay.test"}, {"cluster": table}))
    p = subprocess.run([str(TERN_BIN), "check-config", str(f)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 78 and error in p.stderr, p


def test_a_good_cluster_table_reads_back(tmp_path):
    f = tmp_path / "tern.toml"
    f.write_text(toml_document({"hostname": "relay.test"}, {"cluster": {
        "redis": "/run/tern/redis.sock", "node": "mta-1.eu_west", "timeout": "2s"}}))
    p = subprocess.run([str(TERN_BIN), "check-config", str(f)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert '[cluster]\nredis = "/run/tern/redis.sock"\nnode = "mta-1.eu_west"\ntimeout = "2s"\n' in p.stdout, p.stdout
    ok = tmp_path / "ok.toml"
    ok.write_text(toml_document({"hostname": "relay.test"}, {"cluster": {"redis": "127.0.0.1:6379", "node": "n" * 64}}))
    assert subprocess.run([str(TERN_BIN), "check-config", "--quiet", str(ok)], timeout=30).returncode == 0


# --------------------------------------------------------------------------------------------
# Heartbeats


def test_every_node_sees_the_others_heartbeats(redis, start_tern):
    nodes = [start_tern(extra_tables={"cluster": cluster_table(redis, name)}) for name in ("n1", "n2", "n3")]
    names = ["n1", "n2", "n3"]
    wait_formed(nodes, names)
    version = subprocess.run([str(TERN_BIN), "--version"], capture_output=True, text=True, timeout=30).stdout
    for t, name in zip(nodes, names):
        v = view(t)
        assert v["node"] == name and v["redis"] == redis.address and v["redis_up"] is True, v
        assert [n["node"] for n in v["nodes"]] == names, v
        for n in v["nodes"]:
            assert set(n) >= {"node", "time", "version", "queued", "held", "sessions"}, n
            assert abs(n["time"] - time.time()) < 5, n
            assert n["version"] and n["version"] in version, (n, version)
            # Delivery is off on these nodes: the queue is not in memory, so null, not a made-up 0.
            assert n["queued"] is None and n["held"] is None, n

    # What Redis holds: each node's heartbeat with a TTL of at most 3 s, and the set of nodes.
    assert sorted(x.decode() for x in redis.call("ZRANGE", "tern:nodes", "0", "-1")) == names
    for name in names:
        beat = json.loads(redis.call("GET", f"tern:node:{name}"))
        assert beat["node"] == name, beat
        assert 0 < redis.call("PTTL", f"tern:node:{name}") <= 3000

    # The heartbeat says what the node has: a session open on n2 is seen from n1.
    with SMTPConn(nodes[1].port) as c:
        c.greeting()
        wait_until(lambda: next(n for n in view(nodes[0])["nodes"] if n["node"] == "n2")["sessions"] == 1, FORMED,
                   "n1 seeing n2's open session", lambda: view(nodes[0]))

    # `tern queue destinations --cluster`: the cluster's line, a row per node, then the destinations.
    out = queue_cli(nodes[0], "destinations", "--cluster").stdout
    lines = out.splitlines()
    assert lines[0] == f"cluster: node n1, Redis at {redis.address} answering", out
    assert lines[1].split() == ["NODE", "QUEUED", "HELD", "SESSIONS", "HEARTBEAT", "VERSION"], out
    rows = [line.split() for line in lines[2:5]]
    assert [r[0] for r in rows] == names, out
    for r in rows:
        assert r[1:3] == ["-", "-"] and r[3].isdigit() and re.fullmatch(r"\d+s", r[4]) and r[5] == "ago", out
        assert int(r[4][:-1]) <= 3, out
    assert lines[5] == "", out
    assert "Delivery disabled" in "\n".join(lines[6:]), out  # the usual destinations answer follows
    as_json = json.loads(queue_cli(nodes[2], "destinations", "--cluster", "--json").stdout)
    assert as_json["node"] == "n3" and as_json["redis_up"] is True and as_json["redis"] == redis.address
    assert [n["node"] for n in as_json["nodes"]] == names, as_json

    # A node that stops leaves the list once its heartbeat expires (3 s).
    nodes[2].stop()
    wait_formed(nodes[:2], ["n1", "n2"], timeout=FORMED)
    assert redis.call("GET", "tern:node:n3") is None


def test_cluster_is_404_when_off_and_redis_may_be_a_unix_socket(unix_redis, start_tern):
    alone = start_tern()
    status, body = alone.admin_get("/cluster")
    assert status == 404, (status, body)
    assert "error" in json.loads(body), body

    t = start_tern(extra_tables={"cluster": cluster_table(unix_redis, "sock-node")})
    wait_until(lambda: node_names(t) == ["sock-node"], FORMED, "the node's own heartbeat over the socket",
               lambda: f"{view(t)}\n{t.stderr()[-2000:]}")
    v = view(t)
    assert v["redis"] == unix_redis.address and v["redis_up"] is True, v
    assert t.metric("tern_cluster_redis_up") == 1
    assert unix_redis.call("EXISTS", "tern:node:sock-node") == 1


def test_the_heartbeat_counts_the_messages_queued_on_the_node(redis, provider, provider_relay):
    """A node's heartbeat says how many messages its queue holds: two waiting for a suspended destination
    on n2 are seen as n2's "queued" from n1, as n2's own `tern queue destinations` and /metrics count them."""
    n1, n2 = [provider_relay(tables={"cluster": cluster_table(redis, name)}) for name in ("n1", "n2")]
    wait_formed([n1, n2], ["n1", "n2"])
    queue_cli(n2, "suspend", "a.test", "--for", "1h")
    for i in range(2):
        send(n2, [f"user{i}@a.test"], f"waits {i}")
    wait_until(lambda: destinations(n2).get("a.test", {}).get("queued") == 2, SHARE, "n2 with 2 queued for a.test",
               lambda: f"{destinations(n2)}")
    assert n2.metric("tern_queue_messages") == 2, n2.metric("tern_queue_messages")

    def n2_seen_from_n1() -> dict:
        return next(n for n in view(n1)["nodes"] if n["node"] == "n2")
    wait_until(lambda: n2_seen_from_n1()["queued"] == 2, FORMED, "n1 seeing n2's 2 queued messages in its heartbeat",
               lambda: f"n1's view: {view(n1)}\nn2's own view: {view(n2)}\nn2's tern_queue_messages: "
                       f"{n2.metric('tern_queue_messages')}")
    table = queue_cli(n1, "destinations", "--cluster").stdout
    row = next(line.split() for line in table.splitlines() if line.startswith("n2 "))
    assert row[1] == "2", table


# --------------------------------------------------------------------------------------------
# Shared suppression


def test_a_suppression_on_one_node_is_refused_by_every_node(redis, start_tern):
    n1, n2, n3 = [start_tern(extra_tables={"cluster": cluster_table(redis, name)}) for name in ("n1", "n2", "n3")]
    wait_formed([n1, n2, n3], ["n1", "n2", "n3"])
    for t in (n1, n2, n3):
        assert not refused(t, "gone@five.test") and not refused(t, "kept@five.test")

    out = suppress(n2, "add", "gone@five.test", "--reason", "asked to stop").stdout
    assert "gone@five.test suppressed" in out, out
    suppress(n2, "add", "kept@five.test")
    assert refused(n2, "gone@five.test")  # at once where it was added
    started = time.monotonic()
    wait_refused(n3, "gone@five.test", "n3 after n2's add")
    wait_refused(n1, "gone@five.test", "n1 after n2's add")
    assert time.monotonic() - started < SHARE
    assert refused(n3, "GONE@Five.TEST")  # the same entry, in any case
    assert not refused(n3, "other@five.test")
    for t in (n1, n3):
        t.wait_log("suppression: gone@five.test added by cluster node n2", timeout=SHARE)
        t.wait_log("suppression: kept@five.test added by cluster node n2", timeout=SHARE)
        # Applied here, so written to this node's own list too (the fallback when Redis is gone).
        wait_until(lambda: "gone@five.test" in (t.spool / "suppression.list").read_text(), SHARE,
                   "the shared entry in the node's suppression.list")
    # n2's own change is not applied to it again from the stream.
    assert "added by cluster node" not in n2.stderr(), n2.stderr()[-2000:]
    # The reason travels with the entry.
    shown = json.loads(suppress(n3, "list", "gone@five.test", "--json").stdout)
    assert shown["reason"] == "asked to stop", shown

    suppress(n3, "remove", "gone@five.test")
    assert not refused(n3, "gone@five.test")
    wait_accepted(n1, "gone@five.test", "n1 after n3's remove")
    wait_accepted(n2, "gone@five.test", "n2 after n3's remove")
    for t in (n1, n2):
        t.wait_log("suppression: gone@five.test removed by cluster node n3", timeout=SHARE)
    assert refused(n1, "kept@five.test") and refused(n2, "kept@five.test")

    # Redis gone and n1 restarted: its own spool still has the list as the cluster left it.
    redis.kill()
    n1.wait_log(f"cluster: Redis at {redis.address} unreachable", timeout=5)
    n1.stop()
    n1.start()
    assert refused(n1, "kept@five.test"), n1.stderr()[-2000:]
    assert not refused(n1, "gone@five.test"), n1.stderr()[-2000:]
    n1.wait_log(f"cluster: Redis at {redis.address} unreachable", count=2, timeout=3)
    assert view(n1)["redis_up"] is False


# --------------------------------------------------------------------------------------------
# Shared suspension


def test_a_suspension_on_one_node_holds_on_every_node(redis, provider, provider_relay):
    hop = provider()
    other = provider(OTHER_IP)
    n1, n2, n3 = [provider_relay(tables={"cluster": cluster_table(redis, name)}) for name in ("n1", "n2", "n3")]
    wait_formed([n1, n2, n3], ["n1", "n2", "n3"])

    out = queue_cli(n1, "suspend", "a.test", "--for", "1h", "--reason", "provider asked").stdout
    assert "a.test suspended for 1h: provider asked" in out, out
    until_n1 = destinations(n1)["a.test"]["until"]
    for t in (n2, n3):
        line = t.wait_log("(from cluster node n1)", timeout=SHARE)
        assert "destination=a.test" in line and "delivery temporarily suspended" in line, line
    assert "(from cluster node" not in n1.stderr()  # its own change does not come back to it

    # Mail for a.test on n3 waits, untried; mail for c.test goes meanwhile.
    waiting = send(n3, ["alice@a.test"], "waits on n3")
    queued_at = time.monotonic()
    passing = send(n3, ["carol@c.test"], "goes")
    wait_until(lambda: log_entries(n3.stderr(), passing, "sent"), WAIT, "c.test delivered from n3",
               lambda: n3.stderr()[-3000:])
    row = wait_until(lambda: (r := destinations(n3).get("a.test", {})).get("queued") == 1 and r, SHARE,
                     "a.test listed on n3 with its message", lambda: f"{destinations(n3)}")
    assert row["state"] == "suspended", row
    assert row["reason"] == "provider asked", row
    assert abs(row["until"] - until_n1) < 2, (row, until_n1)
    text = queue_cli(n3, "destinations").stdout
    assert re.search(r"(?m)^a\.test .*suspended until .*: provider asked$", text), text
    # A few seconds with the retry schedule at 1s: the provider sees nothing of it.
    time.sleep(max(0.0, 3.0 - (time.monotonic() - queued_at)))
    assert hop.sessions_seen() == [], hop
    assert not log_entries(n3.stderr(), waiting, "sent") and not log_entries(n3.stderr(), waiting, "deferred")
    assert other.delivered_rcpts() == ["carol@c.test"]

    out = queue_cli(n2, "resume", "a.test").stdout
    assert "a.test resumed" in out, out
    wait_until(lambda: log_entries(n3.stderr(), waiting, "sent"), WAIT, "a.test delivered from n3 after n2's resume",
               lambda: n3.stderr()[-3000:])
    assert hop.delivered_rcpts() == ["alice@a.test"]
    line = n3.wait_log("delivery resumed (postmaster) (from cluster node n2)", timeout=SHARE)
    assert "destination=a.test" in line, line
    n1.wait_log("delivery resumed (postmaster) (from cluster node n2)", timeout=SHARE)
    assert destinations(n1).get("a.test", {}).get("state", "active") == "active"


# --------------------------------------------------------------------------------------------
# Redis down and back


def test_with_redis_down_each_node_goes_on_alone_and_shares_again_once_it_is_back(redis, start_tern):
    n1, n2 = [start_tern(extra_tables={"cluster": cluster_table(redis, name)}) for name in ("n1", "n2")]
    wait_formed([n1, n2], ["n1", "n2"])
    # Something shared before, so each node has read the stream past its start.
    suppress(n2, "add", "before@five.test")
    wait_refused(n1, "before@five.test", "n1 after n2's add")
    assert n1.metric("tern_cluster_redis_up") == 1

    redis.kill()
    down = f"cluster: Redis at {redis.address} unreachable"
    for t in (n1, n2):
        t.wait_log(down, timeout=3)
    down_at = time.monotonic()
    for t in (n1, n2):
        v = view(t)
        assert v["redis_up"] is False, v
        assert t.metric("tern_cluster_redis_up") == 0
        assert t.metric("tern_cluster_redis_failures_total") == 1
    # Mail is accepted all the same.
    qid = send(n1, ["someone@five.test"], "while Redis is down")
    assert qid in n1.queued()
    # A suppression made meanwhile holds here at once...
    suppress(n1, "add", "late@five.test")
    assert refused(n1, "late@five.test")
    # ...while n2 cannot know of it yet.
    assert not refused(n2, "late@five.test")
    # Said once, not once per reconnection attempt (100 ms, 200 ms, ... apart).
    time.sleep(max(0.0, 3.5 - (time.monotonic() - down_at)))
    for t in (n1, n2):
        lines = [l for l in t.stderr().splitlines() if "unreachable" in l]
        assert len(lines) == 1, lines
        assert t.metric("tern_cluster_redis_failures_total") == 1
    assert not refused(n2, "late@five.test")

    redis.start()  # the same port, empty
    back = time.monotonic()
    for t in (n1, n2):
        # Reconnects back off up to 5 s: within that and a loaded machine's slack.
        line = t.wait_log(f"cluster: Redis at {redis.address} answers again after ", timeout=15)
        assert line.endswith("; shared state again"), line
        wait_until(lambda: view(t)["redis_up"] is True, 1, "redis_up true again", lambda: view(t))
        assert t.metric("tern_cluster_redis_up") == 1
    assert time.monotonic() - back < 10
    # n1's change, kept while Redis was down, reaches n2.
    wait_refused(n2, "late@five.test", "n2 once Redis is back")
    n2.wait_log("suppression: late@five.test added by cluster node n1", timeout=SHARE)
    # The heartbeats again too.
    wait_formed([n1, n2], ["n1", "n2"])
    for t in (n1, n2):
        lines = [l for l in t.stderr().splitlines() if "unreachable" in l]
        assert len(lines) == 1, lines
        # The line says why in readable words (a closed connection), not bytes of memory.
        assert re.search(rf"cluster: Redis at {re.escape(redis.address)} unreachable \([ -~]+\): going on alone "
                         r"with its share of the rules' limits \(1/2, 2 nodes last seen\) until it answers again$",
                         lines[0]), lines[0]


def test_a_node_started_while_redis_is_down_joins_when_it_answers_and_stops_without_a_false_alarm(
        idle_redis, start_tern):
    t = start_tern(extra_tables={"cluster": cluster_table(idle_redis, "early")})
    down = f"cluster: Redis at {idle_redis.address} unreachable"
    t.wait_log(down, timeout=3)  # refused, or no connection within the 500 ms timeout
    v = view(t)
    assert v["redis_up"] is False and v["nodes"] == [] and v["node"] == "early", v
    assert t.metric("tern_cluster_redis_up") == 0
    qid = send(t, ["someone@five.test"], "Redis not there yet")
    assert qid in t.queued()
    out = queue_cli(t, "destinations", "--cluster").stdout
    assert out.splitlines()[0] == f"cluster: node early, Redis at {idle_redis.address} NOT answering: this node goes on alone", out
    assert "(no heartbeat seen yet)" in out, out

    idle_redis.start()
    t.wait_log(f"cluster: Redis at {idle_redis.address} answers again after ", timeout=15)
    wait_until(lambda: node_names(t) == ["early"], 3, "the node's own heartbeat", lambda: view(t))
    assert view(t)["redis_up"] is True and t.metric("tern_cluster_redis_up") == 1
    assert len([l for l in t.stderr().splitlines() if "unreachable" in l]) == 1

    # A normal stop with Redis answering is no outage: no "unreachable" error line on the way out.
    t.stop()
    lines = [l for l in t.stderr().splitlines() if "unreachable" in l]
    assert len(lines) == 1, lines


# --------------------------------------------------------------------------------------------
# Where each node read the streams to (its spool's cluster.state); the list it had before it joined


def cluster_state(tern) -> dict:
    path = tern.spool / "cluster.state"
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_restarted_node_reads_only_the_changes_it_missed(redis, start_tern):
    n1, n2 = [start_tern(extra_tables={"cluster": cluster_table(redis, name)}) for name in ("n1", "n2")]
    wait_formed([n1, n2], ["n1", "n2"])
    suppress(n1, "add", "before@six.test")
    n2.wait_log("suppression: before@six.test added by cluster node n1", timeout=SHARE)
    wait_until(lambda: cluster_state(n2).get("suppression", "0-0") != "0-0", 5,
               "n2's position in tern:suppression kept in its spool", lambda: cluster_state(n2))
    state = cluster_state(n2)
    assert state["redis"] == redis.address and state["list_shared"] is True, state

    n2.stop()
    suppress(n1, "add", "during@six.test")
    n2.start()
    wait_refused(n2, "during@six.test", "n2 after its restart, for the change it missed")
    n2.wait_log("suppression: during@six.test added by cluster node n1", timeout=SHARE)
    time.sleep(1.0)  # a read from the stream's start would have come by now
    assert n2.stderr().count("before@six.test added by cluster node n1") == 1, n2.stderr()[-3000:]
    assert refused(n2, "before@six.test")

    # A new Redis (this one restarted empty): the streams end before the kept positions, so they are
    # read from their start, and each node's list goes to the new Redis: a node joining later finds it.
    redis.kill()
    redis.start()
    for t in (n1, n2):
        t.wait_log("is not the one this node read from before (its tern:epoch changed: a new or emptied Redis)", timeout=10)
    n3 = start_tern(extra_tables={"cluster": cluster_table(redis, "n3")})
    wait_refused(n3, "before@six.test", "n3, joined to the new Redis")
    wait_refused(n3, "during@six.test", "n3, joined to the new Redis")
    assert not refused(n3, "never@six.test")


def test_a_node_shares_the_list_it_had_before_it_joined(redis, start_tern):
    n1 = start_tern()  # alone at first
    suppress(n1, "add", "old@seven.test", "--reason", "from before the cluster")
    suppress(n1, "add", "older@seven.test")
    n1.stop()
    # And a list larger than one page of sharing (5,000 entries a poll), in the file's own format.
    bulk = 12_000
    with open(n1.spool / "suppression.list", "a") as f:
        for i in range(bulk):
            f.write(f"+\t\tbulk{i}@eight.test\t{int(time.time())}\tmanual\tbulk\n")
    n1.config_path.write_text(n1.config_path.read_text()
                              + f'\n[cluster]\nredis = "{redis.address}"\nnode = "n1"\n')
    n1.start()
    n1.wait_log(f"cluster: shared the {bulk + 2} suppression entries this node had before it joined", timeout=15)
    n2 = start_tern(extra_tables={"cluster": cluster_table(redis, "n2")})
    wait_formed([n1, n2], ["n1", "n2"])
    wait_refused(n2, "old@seven.test", "n2, for n1's entry from before it joined")
    wait_refused(n2, "older@seven.test", "n2, for n1's entry from before it joined")
    wait_refused(n2, f"bulk{bulk - 1}@eight.test", "n2, for the last entry of n1's large list")
    shown = json.loads(suppress(n2, "list", "old@seven.test", "--json").stdout)
    assert shown["reason"] == "from before the cluster", shown
    assert redis.call("XLEN", "tern:suppression") == bulk + 2

    # Shared once: a restart does not send the list again.
    n1.stop()
    n1.start()
    wait_formed([n1, n2], ["n1", "n2"])
    time.sleep(1.0)
    assert redis.call("XLEN", "tern:suppression") == bulk + 2
    assert n1.stderr().count("suppression entries this node had before it joined") == 1


def test_an_error_answer_to_the_epoch_is_asked_again(redis, start_tern):
    """A Redis still loading its data answers -LOADING, yet is connected: the epoch check (which must
    come before the streams are read) is asked again at each heartbeat, not only at the next connect.
    Here tern:epoch holds a hash until it is deleted."""
    n1 = start_tern(extra_tables={"cluster": cluster_table(redis, "n1")})
    wait_formed([n1], ["n1"])
    redis.call("DEL", "tern:epoch")
    redis.call("HSET", "tern:epoch", "not", "a string")
    n2 = start_tern(extra_tables={"cluster": cluster_table(redis, "n2")})
    wait_formed([n1, n2], ["n1", "n2"])
    suppress(n1, "add", "late@nine.test")
    time.sleep(2.0)
    assert not refused(n2, "late@nine.test"), "n2 read the streams before its epoch was checked"
    redis.call("DEL", "tern:epoch")
    wait_refused(n2, "late@nine.test", "n2 once tern:epoch can be read")
    wait_until(lambda: cluster_state(n2).get("epoch"), 5, "the epoch in n2's cluster.state", lambda: cluster_state(n2))


def test_a_joining_node_does_not_bring_back_an_entry_another_removed(redis, start_tern):
    """A node that joins (here: its cluster.state gone, as after an upgrade from a version without it)
    shares its list only after reading the streams: an entry another node removed while it was away
    is removed here first, and not sent back to the cluster."""
    n1, n2 = [start_tern(extra_tables={"cluster": cluster_table(redis, name)}) for name in ("n1", "n2")]
    wait_formed([n1, n2], ["n1", "n2"])
    suppress(n1, "add", "back@ten.test")
    suppress(n1, "add", "stays@ten.test")
    wait_refused(n2, "back@ten.test", "n2 after n1's add")
    n1.stop()
    suppress(n2, "remove", "back@ten.test")
    (n1.spool / "cluster.state").unlink()
    n1.start()
    n1.wait_log("cluster: shared the 1 suppression entries this node had before it joined", timeout=10)
    assert not refused(n1, "back@ten.test") and refused(n1, "stays@ten.test")
    time.sleep(1.0)
    assert not refused(n2, "back@ten.test"), "the removed entry came back"
    assert refused(n2, "stays@ten.test")
