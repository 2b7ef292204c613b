"""Orchestrates the proxy benchmark (see proxy_bench.sh): starts the upstream, nginx and sluice
on loopback, drives them with oha, and prints the results as a Markdown table."""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BODY = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                   "params": {"name": "get_weather", "arguments": {"city": "Lisbon", "units": "metric"}}})
# nginx fills in `$request_id` (32 random hex digits), so no two answers are alike, as on real
# traffic: the gateway remembers short leaves it found clean, which one fixed answer would
# turn into a lookup.
RESULT = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "18C, light wind (reading $request_id)"}], "isError": False}})
CONNECTIONS = 64


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    raise RuntimeError(f"port {port} never opened")


def nginx(tmp, name, workers, server_block, prefix=()):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d};
  proxy_temp_path {d};
  keepalive_requests 1000000;
  {server_block}
}}
""")
    return subprocess.Popen([*prefix, "nginx", "-c", conf, "-p", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# No Mcp-Session-Id: every call of the load reuses JSON-RPC id 7 (oha sends one body), and in
# a session the gateway refuses a request whose id another of the session's requests still
# uses (400); sessionless calls, as MCP 2026-07-28 servers take them, have no such rule.
def oha(args, url, seconds, rate=None, allow_errors=False):
    """Drive `url` with tools/call requests; every answer must be 200 (a benchmark of error
    answers measures nothing) unless `allow_errors`."""
    cmd = [*getattr(args, "load_prefix", ()), args.oha, "-z", f"{seconds}s", "-c", str(CONNECTIONS), "--no-tui", "--output-format", "json", "-m", "POST",
           "-H", "content-type: application/json", "-H", "accept: application/json, text/event-stream", "-d", BODY]
    if rate:
        cmd += ["-q", str(rate), "--latency-correction"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    lat = j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    bad = sum(v for k, v in codes.items() if k != "200")
    if (bad or not ok) and not allow_errors:
        raise RuntimeError(f"{url}: {ok} answers 200, others {codes}, errors {j.get('errorDistribution')}: the benchmark would measure failures")
    return {"rps": j["summary"]["requestsPerSec"], "p50": lat["p50"] * 1e6, "p99": lat["p99"] * 1e6,
            "p999": lat["p99.9"] * 1e6, "ok": ok, "bad": bad}


# What sluice does to each call, cheapest first; the last is the default configuration.
VARIANTS = [
    ("sluice: JSON-RPC parsed", "detect = false, recording = false", False, False),
    ("sluice: + detection", "recording = false", True, False),
    ("sluice: + detection + recording (default)", "", True, True),
]


def start_sluice(args, tmp, name, workers, up_port, detect, record):
    """sluice with one MCP route to the upstream, configured as `detect`/`record` say (the spool
    in the run's temporary directory); returns (process, port)."""
    port, admin = free_port(), free_port()
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f"""[gateway]
workers = {workers}
[[listener]]
name = "agents"
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[[upstream]]
name = "up"
url = "http://127.0.0.1:{up_port}/mcp"
[[route]]
path = "/mcp"
upstream = "up"
[detect]
enabled = {str(detect).lower()}
[recording]
enabled = {str(record).lower()}
[recording.spool]
dir = "{d}/spool"
""")
    log = open(os.path.join(d, "sluice.log"), "w")
    proc = subprocess.Popen([args.sluice, "run", "--config", conf], stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "RUST_LOG": "warn"})
    wait_port(port)
    return proc, port


def median_run(runs):
    """The run with the median throughput, and the range of all runs' throughputs."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["range"] = (ordered[0]["rps"], ordered[-1]["rps"])
    mid["bad"] = sum(r["bad"] for r in runs)
    return mid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3,
                    help="peak runs per target, interleaved (nginx, then each sluice, again); the median is reported")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    up_port = free_port()
    body = RESULT.replace("'", "\\'")
    upstream = nginx(tmp, "upstream", 1, f"""server {{ listen 127.0.0.1:{up_port} reuseport; keepalive_timeout 300s;
      location / {{ default_type application/json; return 200 '{body}'; }} }}""")
    procs = [upstream]
    rows = []
    finished = False
    try:
        wait_port(up_port)
        rows.append(("direct (fast upstream)", "-", oha(args, f"http://127.0.0.1:{up_port}/mcp", args.seconds)))
        for workers in (1, 2):
            ng_port = free_port()
            ng = nginx(tmp, f"proxy{workers}", workers, f"""upstream up {{ server 127.0.0.1:{up_port}; keepalive 256; }}
      server {{ listen 127.0.0.1:{ng_port} reuseport; keepalive_timeout 300s;
        location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }} }}""")
            procs.append(ng)
            wait_port(ng_port)
            # Every target up at once and driven in turn, round after round: this VM's speed
            # drifts by 10-20 % over minutes, which would otherwise land on one target.
            targets = [("nginx reverse proxy", ng_port)]
            for i, (name, _, detect, record) in enumerate(VARIANTS):
                sl, sl_port = start_sluice(args, tmp, f"sluice{workers}-{i}", workers, up_port, detect, record)
                procs.append(sl)
                targets.append((name, sl_port))
            runs = {name: [] for name, _ in targets}
            for _ in range(args.repeat):
                for name, port in targets:
                    runs[name].append(oha(args, f"http://127.0.0.1:{port}/mcp", args.seconds))
            n = median_run(runs[targets[0][0]])
            rows.append((targets[0][0], workers, n))
            for name, port in targets[1:]:
                s = median_run(runs[name])
                rows.append((name, workers, s))
                rows.append(("ratio to nginx", workers, {"rps": s["rps"] / n["rps"]}))
            # The last variant is the default configuration: its latency at half of its peak.
            default_port = targets[-1][1]
            half = max(1, int(s["rps"] / 2))
            d_half = oha(args, f"http://127.0.0.1:{up_port}/mcp", args.seconds, rate=half)
            n_half = oha(args, f"http://127.0.0.1:{ng_port}/mcp", args.seconds, rate=half)
            s_half = oha(args, f"http://127.0.0.1:{default_port}/mcp", args.seconds, rate=half)
            rows.append((f"direct @ {half}/s", "-", d_half))
            rows.append((f"nginx @ {half}/s", workers, n_half))
            rows.append((f"sluice (default) @ {half}/s", workers, s_half))
            rows.append(("added p99 at half of peak", workers,
                         {"added_sluice": s_half["p99"] - d_half["p99"], "added_nginx": n_half["p99"] - d_half["p99"]}))
            for p in procs[1:]:
                p.terminate()
                p.wait()
            del procs[1:]
        finished = True
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        if finished:
            shutil.rmtree(tmp, ignore_errors=True)  # the spools: ~1 GiB per run
        else:
            print(f"benchmark failed; configs and logs kept in {tmp}", file=sys.stderr)
    print(f"\n{CONNECTIONS} keep-alive connections, {args.seconds}s per run, {os.cpu_count()} cores shared by load generator, upstream and proxy;")
    print(f"peak rows: the median of {args.repeat} interleaved runs (range in the last column).\n")
    print("| target | workers | req/s | p50 µs | p99 µs | p99.9 µs | non-200 | req/s range |")
    print("|---|---|---|---|---|---|---|---|")
    for name, w, r in rows:
        if name.startswith("ratio"):
            print(f"| {name} | {w} | **{r['rps']:.2f}×** | | | | | |")
        elif name.startswith("added"):
            print(f"| {name} | {w} | | | sluice **{r['added_sluice']:.0f}**, nginx {r['added_nginx']:.0f} | | | |")
        else:
            rng = f"{r['range'][0]:.0f}–{r['range'][1]:.0f}" if "range" in r else ""
            print(f"| {name} | {w} | {r['rps']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p999']:.0f} | {r['bad']} | {rng} |")


if __name__ == "__main__":
    main()
