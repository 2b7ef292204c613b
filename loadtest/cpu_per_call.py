"""CPU per MCP call: sluice's own user+system time (from /proc) per small `tools/call` at a fixed
rate through one worker — steadier than peak throughput on a shared 2-core VM, where the load
generator, the upstream and the gateway compete for the cores. Builds are interleaved round by
round so that drift in the machine's speed hits each alike.

    python3 loadtest/cpu_per_call.py --oha ~/.cache/sluice/tools/bin/oha OLD_BIN NEW_BIN [--rounds 3]

`--variant 'TOML'` (repeatable) runs each binary once more per round from a config file whose
`[gateway]` table holds TOML (e.g. `access_log = true`), with RUST_LOG=info and stderr to a
file, beside the plain run (also from a config file, then, so that only the variant differs).
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile

import proxy_bench as pb

HEADERS = ["content-type: application/json", "accept: application/json, text/event-stream", "mcp-protocol-version: 2025-06-18"]


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def oha(binary, url, secs, rate=None):
    args = [binary, "-z", f"{secs}s", "-c", "16", "--no-tui", "--output-format", "json", "-m", "POST", "-d", pb.BODY]
    for h in HEADERS:
        args += ["-H", h]
    if rate:
        args += ["-q", str(rate)]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    codes = json.loads(out)["statusCodeDistribution"]
    if set(codes) != {"200"}:
        raise RuntimeError(f"{url}: answers {codes}: CPU per call would be measured on failures")
    return codes["200"]


def run(sluice, oha_bin, rate, secs, variant=None):
    tmp = tempfile.mkdtemp(prefix="sluice-cpu-")
    up = pb.free_port()
    body = pb.RESULT.replace("'", "\\'")
    ng = pb.nginx(tmp, "up", 1, f"""server {{ listen 127.0.0.1:{up} reuseport; keepalive_timeout 300s;
      location / {{ default_type application/json; return 200 '{body}'; }} }}""")
    sp, ap = pb.free_port(), pb.free_port()
    if variant is None:
        args, log, level = ["--listen", f"127.0.0.1:{sp}", "--admin", f"127.0.0.1:{ap}", "--upstream", f"http://127.0.0.1:{up}/mcp", "--workers", "1",
                             "--spool", os.path.join(tmp, "spool")], subprocess.DEVNULL, "warn"
    else:
        cfg = os.path.join(tmp, "sluice.toml")
        with open(cfg, "w") as f:
            f.write(f'[gateway]\nworkers = 1\n{variant}\n[[listener]]\naddress = "127.0.0.1:{sp}"\n[admin]\naddress = "127.0.0.1:{ap}"\n'
                    f'[recording.spool]\ndir = "{tmp}/spool"\n[[upstream]]\nname = "up"\nurl = "http://127.0.0.1:{up}/mcp"\n'
                    f'[[route]]\nname = "mcp"\npath = "/mcp"\nupstream = "up"\n')
        args, log, level = ["--config", cfg], open(os.path.join(tmp, "sluice.log"), "wb"), "info"
    sl = subprocess.Popen([sluice, "run", *args], stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": level})
    try:
        pb.wait_port(up)
        pb.wait_port(sp)
        url = f"http://127.0.0.1:{sp}/mcp"
        oha(oha_bin, url, 2)  # warm up: pools, caches, the clean-header table
        before = cpu_ticks(sl.pid)
        n = oha(oha_bin, url, secs, rate)
        spent = (cpu_ticks(sl.pid) - before) / os.sysconf("SC_CLK_TCK")
        return spent / n * 1e6, n
    finally:
        sl.terminate()
        ng.terminate()
        sl.wait()
        ng.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--oha", required=True)
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[], help="TOML for the [gateway] table of a config-file run")
    ap.add_argument("sluice", nargs="+", help="sluice binaries to compare")
    args = ap.parse_args()
    variants = [None] if not args.variant else ["", *args.variant]
    for r in range(args.rounds):
        for b in args.sluice:
            for v in variants:
                us, n = run(b, args.oha, args.rate, args.seconds, v)
                label = "" if v is None else f" [{v or 'config file'}]"
                print(f"{b}{label} round {r}: {us:.2f} µs CPU per call ({n} calls)", flush=True)


if __name__ == "__main__":
    main()
