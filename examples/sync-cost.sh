#!/usr/bin/env bash
# What `sync_interval` costs (BENCHMARKS.md, issue 12): one bus node on one nats-server with
# JetStream's default sync interval or with `always`, and the CPU each process uses — whether
# the node can use a full core once the server's fsync per write is out of the way.
#   cargo build --release -p busbar --example loadgen --bin busbar
#   bash examples/sync-cost.sh [default|always]
# nats-server comes from PATH or BUSBAR_NATS_SERVER (tests/run.sh installs one).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}/release"
nats="${BUSBAR_NATS_SERVER:-$(command -v nats-server)}"
work="$(mktemp -d)"; pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export BUSBAR_ADMIN_KEY=scale-admin
sync="${1:-default}"
if [ "$sync" = always ]; then extra="sync_interval: always"; else extra=""; fi
cat > $work/n.conf <<CONF
listen: 127.0.0.1:18491
max_payload: 2MB
jetstream {
  store_dir: "$work/js"
  $extra
}
CONF
$nats -c $work/n.conf > $work/nats.log 2>&1 & pids+=($!); np=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18491) 2>/dev/null && break; sleep 0.1; done
$target/busbar serve --listen 127.0.0.1:18199 --data-dir $work/bus --store nats://127.0.0.1:18491 --egress-allow 127.0.0.1 > $work/bus.log 2>&1 & pids+=($!); bp=$!
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:18199/readyz >/dev/null 2>&1 && break; sleep 0.1; done
echo "== one nats-server (sync $sync), 1 node, load $(cut -d' ' -f1-3 /proc/loadavg)"
$target/examples/loadgen nodes --seconds 4 --nodes http://127.0.0.1:18199 --pids "node1=$bp,nats=$np"
