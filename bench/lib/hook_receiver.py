#!/usr/bin/python3
"""A webhook receiver for the benchmarks: answers every POST with 204 and counts the events (the
elements of the JSON array) into COUNT_FILE, rewritten at most every 0.5 s. HTTP/1.1 keep-alive.
Usage: hook_receiver.py ADDRESS PORT COUNT_FILE"""
import http.server
import sys
import threading
import time

count = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global count
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        # Events are objects in one array: counting the top-level "{"type" keys is enough here.
        n = body.count(b'{"type":')
        with lock:
            count += n
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def writer(path):
    last = -1
    while True:
        time.sleep(0.5)
        if count != last:
            last = count
            with open(path + ".tmp", "w") as f:
                f.write(f"{last}\n")
            import os
            os.replace(path + ".tmp", path)


threading.Thread(target=writer, args=(sys.argv[3],), daemon=True).start()
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
