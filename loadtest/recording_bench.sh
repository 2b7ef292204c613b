#!/usr/bin/env bash
# Recording benchmarks against a real Apache Kafka broker (started here, on loopback):
#   1. pipeline capacity: recorder_throughput (1M events from 2 emitter threads) to the spool,
#      then to the spool + Kafka;
#   2. the proxy under load with recording off / spool / spool + Kafka (rate, p99 added).
#   usage: loadtest/recording_bench.sh [seconds per proxy run, default 10] [recording_bench.py options:
#          --repeat N, --load 0.125,0.25,0.5 (fixed rates as fractions of the peak), --variant '[recording.kafka] settings' for extra Kafka modes, --compare OTHER_SLUICE_BINARY (a second build in the same runs), --isolate: sluice
#          on CPU 0, everything else (load, upstream, this broker) on CPU 1; --background-cpu: as --isolate but
#          with gateway.background_cpus = [1], so only sluice's worker is on CPU 0]
source "$(dirname "$0")/../scripts/lib.sh"
bench_tools
cd "$ROOT"
log "cargo build --release"
cargo build --locked --release --bin sluice
cargo build --locked --release -p sluice-benches --example recorder_throughput
KDIR=$(mktemp -d /tmp/sluice-kafka-bench.XXXX)
PORT=29192
trap '"$ROOT/scripts/kafka/broker" stop "$KDIR"; rm -rf "$KDIR"' EXIT
PIN=()
for a in "$@"; do case "$a" in --isolate|--background-cpu) PIN=(taskset -c 1) ;; esac; done
"${PIN[@]}" "$ROOT/scripts/kafka/broker" start "$KDIR" "$PORT"
"$ROOT/scripts/kafka/broker" topics "$PORT" bench.events:8 bench.events.ap:2 bench.pipeline:8 bench.pipeline.ap:2
BIN=$CARGO_TARGET_DIR/release/examples/recorder_throughput
log "pipeline capacity: spool"
"$BIN" --events 1000000 --threads 2
log "pipeline capacity: spool + Kafka"
"$BIN" --events 1000000 --threads 2 --kafka "127.0.0.1:$PORT" --topic bench.pipeline
log "proxy under load"
cd "$ROOT/loadtest"
python3 recording_bench.py --sluice "$CARGO_TARGET_DIR/release/sluice" --oha "$OHA" --kafka "127.0.0.1:$PORT" --broker-pid "$(cat "$KDIR/pid")" --seconds "${1:-10}" "${@:2}"
