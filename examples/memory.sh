#!/usr/bin/env bash
# The bus's own resident set (BENCHMARKS.md, issue 13's memory target): `busbar serve` on
# SQLite in a process of its own, loaded by `loadgen memory` (100 tenants, 10,000 rules,
# 20,000 events/s offered in batches of 10), whose figures are then that process's VmRSS —
# the load generator's client and sink excluded.
#   cargo build --release -p busbar --example loadgen --bin busbar
#   bash examples/memory.sh [seconds] [max_in_flight]
# The second argument sets `[delivery] max_in_flight` (default 4096): every call in flight to
# the sink holds a connection, its buffers and its task, which is what the resident set grows
# with under load.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"; pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export BUSBAR_ADMIN_KEY=memory-admin
if [ -n "${2:-}" ]; then
  printf '[delivery]\nmax_in_flight = %s\n' "$2" > "$work/busbar.toml"
  export BUSBAR_CONFIG="$work/busbar.toml"
fi
$target/busbar serve --listen 127.0.0.1:18299 --data-dir "$work/bus" --egress-allow 127.0.0.1 \
  > "$work/bus.log" 2>&1 & pids+=($!); bp=$!
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:18299/readyz >/dev/null 2>&1 && break; sleep 0.1; done
echo "== busbar serve (pid $bp, max_in_flight ${2:-4096}), load $(cut -d' ' -f1-3 /proc/loadavg)"
$target/examples/loadgen memory --seconds "${1:-10}" --nodes http://127.0.0.1:18299 --pids "bus=$bp"
