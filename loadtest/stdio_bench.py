"""The stdio transport's cost: `tools/call` round trips to a minimal local MCP server, straight
over its pipes and through `sluice stdio` (detection, recording to a spool), in one run.

    python3 loadtest/stdio_bench.py SLUICE_BIN [--calls 20000] [--size 1024]

First, start-up: the time from launching the server (or sluice with the server) to reading
the answer to `initialize`, seven launches each — straight, through sluice with its compiled
rule databases cached (`SLUICE_DB_CACHE`, filled by a first launch), and with the cache off.
Then two measurements per path: latency (one call at a time: p50/p99/p99.9 of the round trip) and
throughput (every call written at once by one thread while another reads the answers). For
sluice, also its CPU time (user + system, from /proc) per call. The server answers each call
with `--size` bytes of log-like text, the client and the server are Python, so the direct
figures are the floor the machine and the two processes set.
"""

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import threading
import time

SERVER = r'''
import json, sys
size = int(sys.argv[1])
line = "2026-11-23T10:00:00Z INFO request served path=/api/items/42 status=200 bytes=512\n"
text = (line * (size // len(line) + 1))[:size]
out = sys.stdout
for raw in sys.stdin:
    m = json.loads(raw)
    if "id" not in m:
        continue
    if m.get("method") == "initialize":
        r = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "bench", "version": "1"}}
    else:
        r = {"content": [{"type": "text", "text": text}]}
    out.write(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}) + "\n")
    out.flush()
'''


def call(i):
    return (json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "logs", "arguments": {"q": "status=200"}}}) + "\n").encode()


def start(cmd):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}
    p.stdin.write((json.dumps(init) + "\n").encode())
    p.stdin.flush()
    assert json.loads(p.stdout.readline())["id"] == 0
    p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    p.stdin.flush()
    return p


def first_answer(cmd, env):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    p.stdin.write(b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}\n')
    p.stdin.flush()
    assert b'"result"' in p.stdout.readline()
    took = time.perf_counter() - t
    p.stdin.close()
    p.wait(30)
    return took


def startup(server, through, cache):
    first_answer(through, {"SLUICE_DB_CACHE": cache})  # fills the cache
    print("| start-up (launch → answer to initialize) | median ms | min | max |\n|---|---|---|---|")
    for name, cmd, env in [("direct", server, {}), ("sluice stdio, databases cached", through, {"SLUICE_DB_CACHE": cache}),
                           ("sluice stdio, cache off", through, {"SLUICE_DB_CACHE": "off"})]:
        t = sorted(first_answer(cmd, env) * 1e3 for _ in range(7))
        print(f"| {name} | {statistics.median(t):.0f} | {t[0]:.0f} | {t[-1]:.0f} |")
    print()


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(p, n):
    times = []
    for i in range(1, n + 1):
        t = time.perf_counter()
        p.stdin.write(call(i))
        p.stdin.flush()
        answer = p.stdout.readline()
        times.append(time.perf_counter() - t)
        assert b'"result"' in answer, answer[:200]
    times.sort()
    return [times[int(len(times) * q) - 1] * 1e6 for q in (0.5, 0.99, 0.999)]


def throughput(p, n, first):
    def write():
        for i in range(first, first + n):
            p.stdin.write(call(i))
        p.stdin.flush()
    t = time.perf_counter()
    w = threading.Thread(target=write)
    w.start()
    for _ in range(n):
        assert b'"result"' in p.stdout.readline()
    w.join()
    return n / (time.perf_counter() - t)


def measure(cmd, calls, watch):
    p = start(cmd)
    pid = watch(p)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    lat = latency(p, calls // 4)
    rate = throughput(p, calls, calls)
    cpu = (cpu_seconds(pid) - cpu0) / (calls // 4 + calls) if pid else None
    p.stdin.close()
    p.wait(30)
    return lat, rate, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sluice")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sluice-stdio-bench-")
    server_py = os.path.join(tmp, "server.py")
    open(server_py, "w").write(SERVER)
    server = [sys.executable, server_py, str(a.size)]
    cfg = os.path.join(tmp, "stdio.toml")
    open(cfg, "w").write(f'[recording.spool]\ndir = "{tmp}/spool"\n')
    startup(server, [a.sluice, "stdio", "--config", cfg, "--", *server], os.path.join(tmp, "hs"))
    rows = []
    for name, cmd, watch in [
        ("direct (pipes)", server, lambda p: None),
        ("sluice stdio (detect + record)", [a.sluice, "stdio", "--config", cfg, "--", *server], lambda p: p.pid),
    ]:
        lat, rate, cpu = measure(cmd, a.calls, watch)
        rows.append((name, lat, rate, cpu))
    print(f"{a.calls} calls pipelined + {a.calls // 4} one at a time, {a.size}-byte answers\n")
    print("| path | p50 µs | p99 µs | p99.9 µs | calls/s (pipelined) | sluice CPU µs/call |")
    print("|---|---|---|---|---|---|")
    for name, (p50, p99, p999), rate, cpu in rows:
        print(f"| {name} | {p50:.0f} | {p99:.0f} | {p999:.0f} | {rate:.0f} | {'-' if cpu is None else f'{cpu * 1e6:.1f}'} |")
    shutil.rmtree(tmp, ignore_errors=True)  # the spool: every call recorded


if __name__ == "__main__":
    main()
