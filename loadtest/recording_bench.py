"""Recording under load (see recording_bench.sh): the same proxy load as proxy_bench.py through
sluice with recording off, to the spool, and to the spool + a real Kafka broker; reports
requests/s, latency percentiles and the events per second recorded, then the p99 added by
recording at fixed rates (fractions of the recording-off peak).

The p99 of one short run varies by tens of percent on a shared machine, so each fixed rate is
run many times, the modes interleaved in a shuffled order per round, and the table gives the
median p99 of each mode with a bootstrap 90 % interval for its ratio to recording off."""

import argparse
import json
import os
import random
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


def stat_cpu(path):
    """(name, user + system CPU seconds) from a `/proc/…/stat` file: a process's covers all
    its threads, a task's its own."""
    with open(path) as f:
        raw = f.read()
    fields = raw.rsplit(")", 1)[1].split()
    return raw[raw.index("(") + 1:raw.rindex(")")], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU of a process and all its threads."""
    return stat_cpu(f"/proc/{pid}/stat")[1]


def recording_cpu_seconds(pid):
    """User + system CPU of the gateway's recording threads: the spool writer, the Kafka
    forwarder and librdkafka's threads (`rdk:…`), whichever exist."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name, secs = stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        except FileNotFoundError:  # the thread ended in between
            continue
        if name.startswith(("sluice-spool", "sluice-kafka", "rdk:")):
            total += secs
    return total


def sluice(args, tmp, name, up_port, recording, binary):
    port, admin = free_port(), free_port()
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "sluice.toml")
    with open(cfg, "w") as f:
        f.write(f"""[gateway]\nworkers = {args.workers}\n{args.gateway_keys}[[listener]]\naddress = "127.0.0.1:{port}"\n[admin]\naddress = "127.0.0.1:{admin}"
[[upstream]]\nname = "up"\nurl = "http://127.0.0.1:{up_port}/mcp"\n[[route]]\nname = "mcp"\npath = "/mcp"\nupstream = "up"\n{recording.format(dir=d)}""")
    p = subprocess.Popen([*args.gateway_prefix, binary, "run", "--config", cfg], stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "w"),
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
    ap.add_argument("--load", default="0.5",
                    help="fixed rates as fractions of the recording-off peak, comma-separated (e.g. 0.125,0.25,0.5)")
    ap.add_argument("--variant", action="append", default=[],
                    help='extra Kafka mode: [recording.kafka] settings, e.g. \'compression = "zstd", linger = "20ms"\'')
    ap.add_argument("--compare", metavar="SLUICE",
                    help="another sluice build (e.g. before a change): its spool and spool + Kafka modes join the same "
                         "interleaved runs, so the two builds are compared under the same drift of the machine")
    ap.add_argument("--broker-pid", type=int, help="the broker's pid: its CPU per 1k requests is reported per mode")
    ap.add_argument("--isolate", action="store_true",
                    help="the gateway (1 worker, and every thread of it) on CPU 0; load generator, upstream and the "
                         "Kafka broker (started by recording_bench.sh) on CPU 1")
    ap.add_argument("--background-cpu", action="store_true",
                    help="as --isolate, but with gateway.background_cpus = [1]: the worker alone on CPU 0; the "
                         "gateway's other threads (recording, Kafka client, logging) on CPU 1 with the load")
    args = ap.parse_args()
    args.gateway_prefix, args.load_prefix, args.gateway_keys = (), (), ""
    if args.isolate or args.background_cpu:
        args.workers = 1
        args.gateway_prefix, args.load_prefix = ("taskset", "-c", "0"), ("taskset", "-c", "1")
    if args.background_cpu:
        args.gateway_prefix, args.gateway_keys = ("taskset", "-c", "0,1"), "background_cpus = [1]\n"
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
    binaries = {name: args.sluice for name, _ in modes}
    if args.compare:
        for name, rec in modes[1:3]:
            modes.append((f"{name} (compared build)", rec))
            binaries[modes[-1][0]] = args.compare
    gateways, rows = [], []
    try:
        wait_port(up_port)
        for name, rec in modes:
            gateways.append((name, *sluice(args, tmp, "".join(c if c.isalnum() else "_" for c in name), up_port, rec, binaries[name])))
        peaks = {}
        for name, _, port, admin in gateways:
            url = f"http://127.0.0.1:{port}/mcp"
            e0, t0 = metric(admin, "sluice_events_emitted_total"), time.time()
            peaks[name] = (oha(args, url, args.seconds), (metric(admin, "sluice_events_emitted_total") - e0) / (time.time() - t0))
        rates = [max(1, int(peaks[modes[0][0]][0]["rps"] * float(f))) for f in args.load.split(",")]
        # Fixed-rate runs, repeated, the modes in a new random order each round (a drift of the
        # machine lands on every mode alike): the median p99 of each mode.
        fixed = {(rate, name): [] for rate in rates for name, _ in modes}
        cpu = {(rate, name): [0.0, 0, 0.0] for rate in rates for name, _ in modes}  # CPU seconds, requests answered, recording threads' CPU seconds
        broker = {(rate, name): 0.0 for rate in rates for name, _ in modes}  # the broker's CPU seconds
        shuffle = random.Random(1)
        for rate in rates:
            for _ in range(args.repeat):
                for name, p, port, _ in shuffle.sample(gateways, len(gateways)):
                    c0, b0 = cpu_seconds(p.pid), cpu_seconds(args.broker_pid) if args.broker_pid else 0.0
                    rc0 = recording_cpu_seconds(p.pid)
                    r = oha(args, f"http://127.0.0.1:{port}/mcp", args.seconds, rate=rate)
                    cpu[rate, name][0] += cpu_seconds(p.pid) - c0
                    cpu[rate, name][2] += recording_cpu_seconds(p.pid) - rc0
                    broker[rate, name] += (cpu_seconds(args.broker_pid) - b0) if args.broker_pid else 0.0
                    cpu[rate, name][1] += r["ok"]
                    fixed[rate, name].append(r["p99"])
        for name, _, _, admin in gateways:
            for _ in range(300):  # let the sinks catch up, then check nothing was lost
                done = metric(admin, "sluice_events_spooled_total") >= metric(admin, "sluice_events_emitted_total")
                if "Kafka" in name:
                    done = done and metric(admin, "sluice_events_sent_total") >= metric(admin, "sluice_events_spooled_total")
                if done:
                    break
                time.sleep(0.1)
            rows.append((name, peaks[name][0], peaks[name][1], metric(admin, "sluice_events_lost_total")))
    finally:
        for _, p, _, _ in gateways:
            p.terminate()
            p.wait()
        upstream.terminate()
        upstream.wait()
        shutil.rmtree(tmp, ignore_errors=True)  # the spools: hundreds of MiB per run
    where = ("sluice's worker on CPU 0; its other threads (background_cpus), load generator, upstream and the Kafka broker on CPU 1"
             if args.background_cpu else
             "sluice (every thread) on CPU 0; load generator, upstream and the Kafka broker on CPU 1" if args.isolate else
             f"load generator, upstream, sluice and the Kafka broker share {os.cpu_count()} cores")
    print(f"\n{args.workers} workers, 64 keep-alive connections, {args.seconds}s per run; {where}. "
          f"Each request is 2 events (request + response).\n")
    print("| recording | peak req/s | events/s at peak | p99 µs at peak | lost |")
    print("|---|---|---|---|---|")
    for name, peak, eps, lost in rows:
        print(f"| {name} | {peak['rps']:.0f} | {eps:.0f} | {peak['p99']:.0f} | {lost:.0f} |")
    off = modes[0][0]
    print(f"\nFixed rates, {args.repeat} runs of {args.seconds}s per mode and rate, interleaved in shuffled order:\n")
    print("| req/s | recording | median p99 µs | p99 vs off (90 % interval) | paired: median of per-round ratios (90 % interval) "
          "| runs (µs, sorted) | gateway CPU ms per 1k requests | of which recording threads | broker CPU ms per 1k requests |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rate in rates:
        for name, _ in modes:
            runs = sorted(fixed[rate, name])
            lo, hi = ratio_interval(fixed[rate, name], fixed[rate, off])
            # Each round ran every mode once, close together in time: the ratio within a round
            # is not moved by the machine's drift between rounds.
            paired = [a / b for a, b in zip(fixed[rate, name], fixed[rate, off])]
            plo, phi = median_interval(paired)
            per_k = 1000 * 1000 * cpu[rate, name][0] / max(1, cpu[rate, name][1])
            rec_k = 1000 * 1000 * cpu[rate, name][2] / max(1, cpu[rate, name][1])
            broker_k = f"{1000 * 1000 * broker[rate, name] / max(1, cpu[rate, name][1]):.1f}" if args.broker_pid else "-"
            print(f"| {rate} | {name} | {median(runs):.0f} | {median(runs) / median(fixed[rate, off]):.2f}× ({lo:.2f}–{hi:.2f}) "
                  f"| {median(paired):.2f}× ({plo:.2f}–{phi:.2f}) | {'/'.join(f'{x:.0f}' for x in runs)} | {per_k:.1f} | {rec_k:.1f} | {broker_k} |")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def ratio_interval(a, b, rounds=4000):
    """Bootstrap 90 % interval of median(a) / median(b): resample each list with replacement."""
    rng = random.Random(7)
    rs = sorted(median(rng.choices(a, k=len(a))) / median(rng.choices(b, k=len(b))) for _ in range(rounds))
    return rs[int(0.05 * rounds)], rs[int(0.95 * rounds) - 1]


def median_interval(xs, rounds=4000):
    """Bootstrap 90 % interval of median(xs)."""
    rng = random.Random(11)
    ms = sorted(median(rng.choices(xs, k=len(xs))) for _ in range(rounds))
    return ms[int(0.05 * rounds)], ms[int(0.95 * rounds) - 1]


if __name__ == "__main__":
    main()
