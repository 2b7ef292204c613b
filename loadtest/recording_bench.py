"""Recording under load (see recording_bench.sh): the same proxy load as proxy_bench.py through
sluice with recording off, to the spool, and to the spool + a real Kafka broker; reports
requests/s, latency percentiles and the events per second recorded, then the p99 added by
recording at a fixed rate (half of the recording-off peak)."""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from proxy_bench import RESULT, free_port, nginx, oha, wait_port


def metric(admin, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def cpu_seconds(pid):
    """User + system CPU of a process and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sluice(args, tmp, name, up_port, recording):
    port, admin = free_port(), free_port()
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "sluice.toml")
    with open(cfg, "w") as f:
        f.write(f"""[gateway]\nworkers = {args.workers}\n[[listener]]\naddress = "127.0.0.1:{port}"\n[admin]\naddress = "127.0.0.1:{admin}"
[[upstream]]\nname = "up"\nurl = "http://127.0.0.1:{up_port}/mcp"\n[[route]]\nname = "mcp"\npath = "/mcp"\nupstream = "up"\n{recording.format(dir=d)}""")
    p = subprocess.Popen([*args.gateway_prefix, args.sluice, "run", "--config", cfg], stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "w"),
                         env={**os.environ, "RUST_LOG": "warn"})
    wait_port(port)
    return p, port, admin


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--kafka", required=True, help="bootstrap host:port of a running broker")
    ap.add_argument("--topic", default="bench.events")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[],
                    help='extra Kafka mode: [recording.kafka] settings, e.g. \'compression = "zstd", linger = "20ms"\'')
    ap.add_argument("--isolate", action="store_true",
                    help="the gateway (1 worker, and every thread of it) on CPU 0; load generator, upstream and the "
                         "Kafka broker (started by recording_bench.sh) on CPU 1")
    args = ap.parse_args()
    args.gateway_prefix, args.load_prefix = (), ()
    if args.isolate:
        args.workers = 1
        args.gateway_prefix, args.load_prefix = ("taskset", "-c", "0"), ("taskset", "-c", "1")
    tmp = tempfile.mkdtemp(prefix="sluice-recbench-")
    up_port = free_port()
    body = RESULT.replace("'", "\\'")
    upstream = nginx(tmp, "upstream", 1, f"""server {{ listen 127.0.0.1:{up_port} reuseport; keepalive_timeout 300s;
      location / {{ default_type application/json; return 200 '{body}'; }} }}""", args.load_prefix)
    kafka = ('[recording.spool]\ndir = "{dir}/spool"\n[recording.kafka]\nbrokers = "' + args.kafka
             + '"\nevents_topic = "' + args.topic + '"\napprovals_topic = "' + args.topic + '.ap"\n')
    modes = [
        ("recording off", "[recording]\nenabled = false\n"),
        ("spool", '[recording.spool]\ndir = "{dir}/spool"\n'),
        ("spool + Kafka", kafka),
    ] + [(f"spool + Kafka, {v}", kafka + v.replace(", ", "\n") + "\n") for v in args.variant]
    gateways, rows, half = [], [], None
    try:
        wait_port(up_port)
        for name, rec in modes:
            gateways.append((name, *sluice(args, tmp, "".join(c if c.isalnum() else "_" for c in name), up_port, rec)))
        peaks = {}
        for name, _, port, admin in gateways:
            url = f"http://127.0.0.1:{port}/mcp"
            e0, t0 = metric(admin, "sluice_events_emitted_total"), time.time()
            peaks[name] = (oha(args, url, args.seconds), (metric(admin, "sluice_events_emitted_total") - e0) / (time.time() - t0))
        half = max(1, int(peaks[modes[0][0]][0]["rps"] / 2))
        # Fixed-rate runs, interleaved and repeated: the median p99 of each mode.
        fixed = {name: [] for name, _ in modes}
        cpu = {name: [0.0, 0] for name, _ in modes}  # CPU seconds, requests answered
        for _ in range(args.repeat):
            for name, p, port, _ in gateways:
                c0 = cpu_seconds(p.pid)
                r = oha(args, f"http://127.0.0.1:{port}/mcp", args.seconds, rate=half)
                cpu[name][0] += cpu_seconds(p.pid) - c0
                cpu[name][1] += r["ok"]
                fixed[name].append(r["p99"])
        for name, _, _, admin in gateways:
            for _ in range(300):  # let the sinks catch up, then check nothing was lost
                done = metric(admin, "sluice_events_spooled_total") >= metric(admin, "sluice_events_emitted_total")
                if "Kafka" in name:
                    done = done and metric(admin, "sluice_events_sent_total") >= metric(admin, "sluice_events_spooled_total")
                if done:
                    break
                time.sleep(0.1)
            p99s = sorted(fixed[name])
            per_k = 1000 * 1000 * cpu[name][0] / max(1, cpu[name][1])  # CPU ms per 1,000 requests
            rows.append((name, peaks[name][0], p99s[len(p99s) // 2], p99s, peaks[name][1], metric(admin, "sluice_events_lost_total"), per_k))
    finally:
        for _, p, _, _ in gateways:
            p.terminate()
            p.wait()
        upstream.terminate()
        upstream.wait()
        shutil.rmtree(tmp, ignore_errors=True)  # the spools: hundreds of MiB per run
    base = rows[0][2]
    where = ("sluice (every thread) on CPU 0; load generator, upstream and the Kafka broker on CPU 1" if args.isolate else
             f"load generator, upstream, sluice and the Kafka broker share {os.cpu_count()} cores")
    print(f"\n{args.workers} workers, 64 keep-alive connections, {args.seconds}s per run; {where}. "
          f"Each request is 2 events (request + response).\n")
    print(f"| recording | peak req/s | events/s at peak | p99 µs at peak | median p99 µs at {half} req/s ({args.repeat} runs) | p99 vs off "
          f"| gateway CPU ms per 1k requests at {half} req/s | lost |")
    print("|---|---|---|---|---|---|---|---|")
    for name, peak, p99, runs, eps, lost, per_k in rows:
        spread = "/".join(f"{x:.0f}" for x in runs)
        print(f"| {name} | {peak['rps']:.0f} | {eps:.0f} | {peak['p99']:.0f} | {p99:.0f} ({spread}) | {p99 / base:.2f}× | {per_k:.1f} | {lost:.0f} |")


if __name__ == "__main__":
    main()
