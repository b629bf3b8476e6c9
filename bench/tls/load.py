#!/usr/bin/env python3
"""TLS load for bench/tls/run.sh: STARTTLS handshakes, or messages relayed over STARTTLS.

  load.py handshake --port P --n N --procs K --pid PEERPID [--client blast --tern BIN]
  load.py relay --port P --n N --procs K --per-conn M --pid PEERPID --sink-metrics URL [--client blast --tern BIN]

The client is `tern blast` (--client blast: one libuv process, K connections; handshake mode is
`tern blast --handshakes N`) or Python (K processes running sessions one after another until N in
all are done or --max-seconds pass; every loop is bounded). Prints one JSON line: count, failures,
seconds, rate; the peer's CPU seconds over the run (its process tree: utime+stime of live processes
plus what reaped children used), so CPU per handshake or message can be compared between peers that
share the client's cores; the client's own CPU (to see whether the client is the ceiling: tern blast
is one thread, so a client near 1.0 core is the limit); and how busy the whole machine was.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import socket
import ssl
import time

CLK = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])       # without guest time, which is already in user
    return total - idle, total


def own_cpu() -> float:
    """CPU seconds of this process and of its reaped children (the Python workers, or tern blast)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def tree_cpu(root: int) -> float:
    """CPU seconds of root and its live descendants, plus what their reaped children used."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        pid = int(name)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        f = stats.get(pid)
        if f:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # utime stime cutime cstime
        todo.extend(children.get(pid, []))
    return total / CLK


class Conn:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buf = b""

    def reply(self) -> int:
        while True:
            while b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                if len(line) >= 4 and line[3:4] == b" ":
                    return int(line[:3])
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk

    def cmd(self, line: bytes, want: int) -> None:
        self.sock.sendall(line + b"\r\n")
        code = self.reply()
        if code != want:
            raise RuntimeError(f"{line[:20]!r}: {code}")

    def starttls(self, ctx: ssl.SSLContext) -> None:
        self.reply()  # 220 greeting
        self.cmd(b"EHLO load.test", 250)
        self.cmd(b"STARTTLS", 220)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="relay.test")
        self.cmd(b"EHLO load.test", 250)


def context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def worker(args, counter, deadline, failures) -> None:
    ctx = context()
    body = (b"Subject: tls bench\r\n\r\n" + b"x" * 76 + b"\r\n") * max(1, args.size // 80) + b".\r\n"
    errors = 0
    while time.monotonic() < deadline and errors < 20:
        with counter.get_lock():
            if counter.value >= args.n:
                return
            take = 1 if args.mode == "handshake" else min(args.per_conn, args.n - counter.value)
            counter.value += take
        try:
            c = Conn(args.host, args.port)
            c.starttls(ctx)
            if args.mode == "relay":
                for i in range(take):
                    c.cmd(b"MAIL FROM:<load@load.test>", 250)
                    c.cmd(b"RCPT TO:<sink@sink.test>", 250)
                    c.cmd(b"DATA", 354)
                    c.cmd(body[:-2], 250)
            c.sock.sendall(b"QUIT\r\n")
            c.sock.close()
        except Exception as e:  # noqa: BLE001 - counted as an error, the run goes on
            with counter.get_lock():
                counter.value -= take
            with failures.get_lock():
                failures.value += 1
            errors += 1
            print(json.dumps({"error": str(e)}), flush=True)
            time.sleep(0.05)


def sink_received(url: str) -> int:
    """Messages the sink (a tern serve) has queued: tern_messages_received_total of its /metrics.
    (Its spool is a journal now; counting queue files finds nothing until delivery would.)"""
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("tern_messages_received_total"):
                return int(float(line.split()[-1]))
    return 0


def count_queue(d: str) -> int:
    """Messages in a tern spool's queue: <queue>/<hex digit>/<ID>.env."""
    total = 0
    for sub in "0123456789ABCDEF":
        try:
            total += sum(1 for n in os.listdir(os.path.join(d, sub)) if n.endswith(".env"))
        except FileNotFoundError:
            pass
    return total


def run_blast(args) -> tuple[int, int, dict]:
    """`tern blast` as the client: --blast-procs libuv processes (each one thread) instead of Python
    workers, sharing N and the connections. Handshake mode: `--handshakes N` (greeting, EHLO,
    STARTTLS, TLS, EHLO, QUIT; no mail). Relay: `--starttls`. Returns (done, failed, extra figures
    from their reports)."""
    import subprocess
    k = max(1, min(args.blast_procs, args.n, args.procs))
    runs = []
    for i in range(k):
        n = args.n // k + (1 if i < args.n % k else 0)
        conc = args.procs // k + (1 if i < args.procs % k else 0)
        cmd = [args.tern, "blast", "--server", f"{args.host}:{args.port}", "--concurrency", str(conc),
               "--json", "--quiet", "--timeout", "30s"]
        if args.mode == "handshake":
            cmd += ["--handshakes", str(n)]
        else:
            cmd += ["--messages", str(n), "--messages-per-connection", str(args.per_conn), "--size", str(args.size),
                    "--from", "load@load.test", "--to", "sink@sink.test", "--starttls"]
        runs.append((n, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    done = failed = 0
    extra: dict = {"blast_procs": k, "blast_elapsed_s": [], "errors": [], "handshake_ms_p50": [], "handshake_ms_p99": []}
    for n, p in runs:
        try:
            out, err = p.communicate(timeout=args.max_seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        if p.returncode != 0:
            print(json.dumps({"error": err.strip()}), flush=True)
            failed += n
            continue
        report = json.loads(out)
        extra["blast_elapsed_s"].append(report["elapsed_s"])
        extra["errors"] += report["errors"][:3]
        if args.mode == "handshake":
            h = report["handshakes"]
            done += h["completed"]
            failed += h["failed"]
            extra["handshake_ms_p50"].append(report["latency_ms"]["handshake"]["p50"])
            extra["handshake_ms_p99"].append(report["latency_ms"]["handshake"]["p99"])
        else:
            m = report["messages"]
            done += m["accepted"]
            failed += m["attempted"] - m["accepted"]
    if args.mode != "handshake":
        del extra["handshake_ms_p50"], extra["handshake_ms_p99"]
    return done, failed, extra


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["handshake", "relay"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--per-conn", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--sink-queue", default=None, help="count .env files there (a tern spool without the journal)")
    ap.add_argument("--sink-metrics", default=None, help="the sink's /metrics URL: count tern_messages_received_total")
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--client", choices=["python", "blast"], default="python",
                    help="Python workers, or `tern blast` (--tern PATH): --handshakes N, or --starttls for relay")
    ap.add_argument("--tern", default="tern")
    ap.add_argument("--blast-procs", type=int, default=1,
                    help="tern blast processes sharing --n and --procs (each is one thread)")
    args = ap.parse_args()

    counter = mp.Value("i", 0)
    errors = mp.Value("i", 0)
    at_sink = None
    if args.mode == "relay" and args.sink_metrics:
        base = sink_received(args.sink_metrics)
        at_sink = lambda: sink_received(args.sink_metrics) - base  # noqa: E731
    elif args.mode == "relay" and args.sink_queue:
        at_sink = lambda: count_queue(args.sink_queue)  # noqa: E731
    cpu0 = tree_cpu(args.pid)
    client0 = own_cpu()
    busy0, total0 = machine_ticks()
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    extra: dict = {}
    if args.client == "blast":
        done, failed, extra = run_blast(args)
    else:
        procs = [mp.Process(target=worker, args=(args, counter, deadline, errors)) for _ in range(args.procs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        done, failed = counter.value, errors.value
    t1 = time.monotonic()
    client_cpu = own_cpu() - client0
    busy1, total1 = machine_ticks()
    result = {"mode": args.mode, "client": args.client, "count": done, "failed": failed,
              "client_seconds": round(t1 - t0, 3), "client_cpu_s": round(client_cpu, 3),
              "client_cores": round(client_cpu / max(t1 - t0, 1e-9), 2),
              "client_cpu_ms_per_item": round(1000 * client_cpu / max(done, 1), 3),
              # of all cores, while the client ran (the other engineers' work included)
              "machine_busy": round((busy1 - busy0) / max(total1 - total0, 1), 2), **extra}
    if at_sink is not None:
        # End to end: until the sink holds every message (bounded by the deadline).
        while at_sink() < done and time.monotonic() < deadline:
            time.sleep(0.05)
        t1 = time.monotonic()
        result["at_sink"] = at_sink()
    seconds = t1 - t0
    cpu = tree_cpu(args.pid) - cpu0
    result.update(seconds=round(seconds, 3), rate=round(done / seconds, 1), peer_cpu_s=round(cpu, 3),
                  peer_cpu_ms_per_item=round(1000 * cpu / max(done, 1), 3))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
