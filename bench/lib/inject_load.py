#!/usr/bin/python3
"""Load for the injection API (bench/inject.sh): N POST /api/inject requests over CONC keep-alive
connections, each carrying one 4 KiB message to RCPTS recipients (raw content; with --personal a
substitution, so one message per recipient). Prints one line: requests ok, seconds, requests/s.

  inject_load.py load HOST PORT TOKEN N CONC RCPTS [--personal]
  inject_load.py serve HOST PORT      # a null server answering 200 at once: the generator's ceiling
"""
import asyncio
import json
import sys
import time


def request_bytes(host, port, token, rcpts, personal):
    body_text = "".join(f"line {i:04d} " + "x" * 60 + "\r\n" for i in range(56))  # ~4 KiB
    content = ("From: bench@example.com\r\nTo: list@example.net\r\nSubject: bench\r\n\r\n" + body_text
               + ("{{ n }}\r\n" if personal else ""))
    recipients = [{"email": f"user{i}@example.net", **({"substitutions": {"n": str(i)}} if personal else {})}
                  for i in range(rcpts)]
    body = json.dumps({"envelope_sender": "bench@example.com", "recipients": recipients,
                       "content": content}).encode()
    head = (f"POST /api/inject HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def load(host, port, token, n, conc, rcpts, personal):
    request = request_bytes(host, port, token, rcpts, personal)
    left = n
    ok = 0
    bad = 0

    async def worker():
        nonlocal left, ok, bad
        reader, writer = await asyncio.open_connection(host, port)
        while left > 0:
            left -= 1
            writer.write(request)
            status = await read_response(reader)
            if status == 200:
                ok += 1
            else:
                bad += 1
        writer.close()

    start = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(conc)]), timeout=600)
    seconds = time.monotonic() - start
    print(f"ok={ok} failed={bad} seconds={seconds:.3f} requests_per_s={ok / seconds:.1f}")


async def serve(host, port):
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                body = b'{"queue_ids":[],"rejected":[]}\n'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await asyncio.sleep(900)  # bounded: the bench kills it long before


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(sys.argv[2], int(sys.argv[3])))
    else:
        host, port, token, n, conc, rcpts = sys.argv[2:8]
        asyncio.run(load(host, int(port), token, int(n), int(conc), int(rcpts), "--personal" in sys.argv))
