#!/usr/bin/env bash
# Analyzer benchmarks on synthetic events (loadtest gen-events):
#   1. ingest rate from a spool into the Parquet archive (wall time and CPU time);
#   2. the built-in chain rules over the whole archive in DataFusion (`chains --timings`),
#      and the same SQL on the same files in DuckDB, in the same run; alert counts compared
#      with each other and with the planted chains.
#   usage: loadtest/analyzer_bench.sh [events, default 10000000] [work dir, default a temp dir]
source "$(dirname "$0")/../scripts/lib.sh"
python_deps
cd "$ROOT"
EVENTS=${1:-10000000}
DIR=${2:-$(mktemp -d /tmp/sluice-analyzer-bench.XXXX)}
log "cargo build --release (sluice-analyzer, gen-events)"
cargo build --locked --release -p sluice-analyzer -p sluice-loadtest
BIN=$CARGO_TARGET_DIR/release
mkdir -p "$DIR"
rm -rf "$DIR/spool" "$DIR/archive"
log "generating $EVENTS events into $DIR/spool"
"$BIN/gen-events" --out "$DIR/spool" --events "$EVENTS" | tee "$DIR/generated.json"
sync
log "ingest --spool (1 process; /usr/bin/time: wall user sys)"
/usr/bin/time -f "%e %U %S" -o "$DIR/ingest.time" "$BIN/sluice-analyzer" --archive "$DIR/archive" ingest --spool "$DIR/spool" | tee "$DIR/ingest.json"
cat "$DIR/ingest.time"
log "chain rules: DataFusion, then DuckDB on the same files"
"$BIN/sluice-analyzer" --archive "$DIR/archive" views > "$DIR/views.json"
"$BIN/sluice-analyzer" --archive "$DIR/archive" chains --timings > "$DIR/alerts.jsonl" 2> "$DIR/datafusion.timings"
"$VENV/bin/python" loadtest/analyzer_bench.py --dir "$DIR" --rules analyzer/chains
