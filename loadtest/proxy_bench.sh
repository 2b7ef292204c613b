#!/usr/bin/env bash
# Proxy load benchmark: small MCP tools/call round trips (keep-alive, many sessions)
#   (a) straight to a fast upstream, (b) through nginx as a plain reverse proxy,
#   (c) through sluice three times: JSON-RPC parsed only, + detection, + detection and recording
#       to its spool (the default),
# with 1 and 2 workers each; then direct, nginx and default sluice at half of its peak rate.
# Prints a Markdown table (requests/s, p50/p99/p99.9, sluice/nginx ratios).
#   usage: loadtest/proxy_bench.sh [seconds per run, default 10] [peak runs per target, default 3]
source "$(dirname "$0")/../scripts/lib.sh"
bench_tools
cd "$ROOT"
log "cargo build --release"
cargo build --locked --release --bin sluice
exec python3 "$ROOT/loadtest/proxy_bench.py" --sluice "$CARGO_TARGET_DIR/release/sluice" --oha "$OHA" --seconds "${1:-10}" --repeat "${2:-3}"
