"""Transient memory of reading a request body as JSON, which `limits.max_buffered_bytes` does not
count: sluice's peak RSS (VmHWM) after a small call, after an 8 MiB text argument, and after an
8 MiB array of zeros (the densest JSON: one value per two bytes) — one worker, quick mode.

    python3 loadtest/parse_memory.py SLUICE_BIN
"""

import http.server
import json
import os
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

LIMIT = 8 * 1024 * 1024  # the default limits.max_body_bytes


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def hwm_kib(pid):
    """Peak RSS so far, and RSS two seconds after the call (what the allocator kept)."""
    peak = status_kib(pid, "VmHWM")
    time.sleep(2)
    return peak, status_kib(pid, "VmRSS")


def call(port, arguments):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": arguments}}, separators=(",", ":")).encode()
    assert len(body) <= LIMIT, len(body)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/mcp", data=body, headers={"content-type": "application/json", "accept": "application/json, text/event-stream"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return len(body)


def main():
    up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    spool = tempfile.mkdtemp(prefix="sluice-parse-mem-")
    p = subprocess.Popen([sys.argv[1], "run", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--workers", "1",
                          "--spool", spool, "--upstream", f"http://127.0.0.1:{up.server_port}/mcp"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                call(port, {"x": 1})
                break
            except OSError:
                time.sleep(0.1)
        rows = [("small call", 0, hwm_kib(p.pid))]
        n = call(port, {"text": "lorem ipsum dolor sit amet " * ((LIMIT - 200) // 27)})
        rows.append(("8 MiB text argument", n, hwm_kib(p.pid)))
        n = call(port, {"a": [0] * ((LIMIT - 200) // 2)})
        rows.append(("8 MiB array of zeros", n, hwm_kib(p.pid)))
    finally:
        p.terminate()
        p.wait(30)
        up.shutdown()
        shutil.rmtree(spool, ignore_errors=True)
    print("| after | body bytes | peak RSS MiB | peak rise MiB | rise / body | RSS 2 s later MiB |\n|---|---|---|---|---|---|")
    prev = rows[0][2][0]
    for name, n, (kib, settled) in rows:
        rise = (kib - prev) / 1024
        print(f"| {name} | {n} | {kib / 1024:.0f} | {rise:.0f} | {rise * 1024 * 1024 / n if n else 0:.1f}x | {settled / 1024:.0f} |")
        prev = kib


if __name__ == "__main__":
    main()
