#!/usr/bin/env python3
"""A loopback HTTP server for the remote-data benchmarks (scripts/bench_remote.sh).

Serves the files of DIR by name, and any path ending in `-N.tar` as shard N modulo the number
of .tar files in DIR (so 10^4 shard URLs can be declared over a few real shards). Honours
`Range: bytes=N-`. Binds 127.0.0.1 only; one thread per connection. With MBPS set, each
connection's body is paced to that many MB/s, as a distant server or an object store's
per-connection throughput would (loopback alone is far faster than either).

usage: [MBPS=N] shard_server.py DIR PORT
"""
import http.server
import os
import re
import shutil
import socketserver
import sys
import time

ROOT, PORT = sys.argv[1], int(sys.argv[2])
SHARDS = sorted(f for f in os.listdir(ROOT) if f.endswith(".tar"))
MBPS = float(os.environ.get("MBPS", "0"))


def send(src, dst):
    """Copies src to dst, paced to MBPS per connection when it is set."""
    if MBPS <= 0:
        shutil.copyfileobj(src, dst, 1 << 20)
        return
    chunk, start, sent = 1 << 16, time.monotonic(), 0
    while block := src.read(chunk):
        dst.write(block)
        sent += len(block)
        ahead = sent / (MBPS * 1e6) - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def resolve(self):
        name = self.path.split("?")[0].lstrip("/")
        if os.path.isfile(os.path.join(ROOT, name)):
            return os.path.join(ROOT, name)
        m = re.search(r"-(\d+)\.tar$", name)
        if m and SHARDS:
            return os.path.join(ROOT, SHARDS[int(m.group(1)) % len(SHARDS)])
        return None

    def do_GET(self):
        path = self.resolve()
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = os.path.getsize(path)
        start = 0
        m = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Connection", "close")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            try:
                send(f, self.wfile)
            except (BrokenPipeError, ConnectionResetError):
                pass
        self.close_connection = True


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


Server(("127.0.0.1", PORT), Handler).serve_forever()
