#!/usr/bin/env python3
"""TLS load for bench/tls/run.sh: STARTTLS handshakes, or messages relayed over STARTTLS.

  load.py handshake --port P --n N --procs K --pid PEERPID
  load.py relay --port P --n N --procs K --per-conn M --pid PEERPID --sink-queue DIR

Each of K processes runs sessions one after another until N in all are done or --max-seconds
pass (every loop is bounded). Prints one JSON line: count, seconds, rate, and the peer's CPU
seconds (its process tree: utime+stime of live processes plus what reaped children used) over the
run, so CPU per handshake or message can be compared between peers that share the client's cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import ssl
import time

CLK = os.sysconf("SC_CLK_TCK")


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


def worker(args, counter, deadline) -> None:
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
            errors += 1
            print(json.dumps({"error": str(e)}), flush=True)
            time.sleep(0.05)


def count_queue(d: str) -> int:
    """Messages in a tern spool's queue: <queue>/<hex digit>/<ID>.env."""
    total = 0
    for sub in "0123456789ABCDEF":
        try:
            total += sum(1 for n in os.listdir(os.path.join(d, sub)) if n.endswith(".env"))
        except FileNotFoundError:
            pass
    return total


def run_blast(args) -> int:
    """relay with `tern blast --starttls` as the client: one libuv process instead of Python workers."""
    import subprocess
    cmd = [args.tern, "blast", "--server", f"{args.host}:{args.port}", "--messages", str(args.n),
           "--concurrency", str(args.procs), "--messages-per-connection", str(args.per_conn),
           "--size", str(args.size), "--from", "load@load.test", "--to", "sink@sink.test",
           "--starttls", "--json", "--quiet", "--timeout", "30s"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.max_seconds + 30)
    if p.returncode != 0:
        print(json.dumps({"error": p.stderr.strip()}), flush=True)
        return 0
    return json.loads(p.stdout)["messages"]["accepted"]


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
    ap.add_argument("--sink-queue", default=None)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--client", choices=["python", "blast"], default="python",
                    help="relay mode: Python workers, or `tern blast --starttls` (--tern PATH)")
    ap.add_argument("--tern", default="tern")
    args = ap.parse_args()

    counter = mp.Value("i", 0)
    cpu0 = tree_cpu(args.pid)
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    if args.mode == "relay" and args.client == "blast":
        done = run_blast(args)
    else:
        procs = [mp.Process(target=worker, args=(args, counter, deadline)) for _ in range(args.procs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        done = counter.value
    t1 = time.monotonic()
    result = {"mode": args.mode, "client": args.client if args.mode == "relay" else "python", "count": done,
              "client_seconds": round(t1 - t0, 3)}
    if args.mode == "relay" and args.sink_queue:
        # End to end: until the sink holds every message (bounded by the deadline).
        while count_queue(args.sink_queue) < done and time.monotonic() < deadline:
            time.sleep(0.05)
        t1 = time.monotonic()
        result["at_sink"] = count_queue(args.sink_queue)
    seconds = t1 - t0
    cpu = tree_cpu(args.pid) - cpu0
    result.update(seconds=round(seconds, 3), rate=round(done / seconds, 1), peer_cpu_s=round(cpu, 3),
                  peer_cpu_ms_per_item=round(1000 * cpu / max(done, 1), 3))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
