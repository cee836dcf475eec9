#!/usr/bin/env bash
# Scale figures for BENCHMARKS.md (issue 12): end-to-end delivered events/s and
# CPU per delivered event with SQLite (one node), then 1, 2 and 3 bus nodes on
# one 3-server NATS JetStream cluster (R3, sync_interval: always), all on this
# machine. Needs release builds of `busbar` and the load generator:
#   cargo build --release -p busbar --example loadgen --bin busbar
#   bash examples/scale.sh [seconds]
# nats-server comes from PATH or BUSBAR_NATS_SERVER (tests/run.sh installs one).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-8}"
target="${CARGO_TARGET_DIR:-target}/release"
busbar="$target/busbar"
loadgen="$target/examples/loadgen"
nats="${BUSBAR_NATS_SERVER:-$(command -v nats-server)}"
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
export BUSBAR_ADMIN_KEY=scale-admin

wait_ready() { # url
  for _ in $(seq 1 600); do
    curl -sf "$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 never became ready" >&2; tail -n 5 "$work"/*.log >&2; return 1
}

echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"

# SQLite: one node.
"$busbar" serve --listen 127.0.0.1:18180 --data-dir "$work/sqlite" --egress-allow 127.0.0.1 >"$work/sqlite.log" 2>&1 &
pids+=($!); sq=$!
wait_ready http://127.0.0.1:18180
echo "== SQLite, 1 node"
"$loadgen" nodes --seconds "$seconds" --nodes http://127.0.0.1:18180 --pids "busbar=$sq"
kill "$sq"; wait "$sq" 2>/dev/null || true

# A 3-server NATS cluster.
for i in 1 2 3; do
  cat >"$work/nats-$i.conf" <<CONF
server_name: s$i
listen: 127.0.0.1:1842$i
max_payload: 2MB
jetstream { store_dir: "$work/nats-$i", sync_interval: always }
cluster { name: scale, listen: 127.0.0.1:1852$i,
  routes: [nats-route://127.0.0.1:18521, nats-route://127.0.0.1:18522, nats-route://127.0.0.1:18523] }
CONF
  "$nats" -c "$work/nats-$i.conf" >"$work/nats-$i.log" 2>&1 &
  pids+=($!); natspid[$i]=$!
done
store="nats://127.0.0.1:18421,nats://127.0.0.1:18422,nats://127.0.0.1:18423"
# A node started before the servers listen exits at once (unreachable store).
for i in 1 2 3; do
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/1842$i) 2>/dev/null && break; sleep 0.1; done
done

for n in 1 2 3; do
  urls=(); watch=()
  for i in $(seq 1 "$n"); do
    "$busbar" serve --listen "127.0.0.1:1819$i" --data-dir "$work/bus-$n-$i" --store "$store" \
      --egress-allow 127.0.0.1 >"$work/bus-$n-$i.log" 2>&1 &
    pid=$!; pids+=($pid); node[$i]=$pid
    urls+=("http://127.0.0.1:1819$i"); watch+=("node$i=$pid")
  done
  for u in "${urls[@]}"; do wait_ready "$u"; done
  for i in 1 2 3; do watch+=("nats$i=${natspid[$i]}"); done
  echo "== NATS cluster (R3, sync always), $n node(s)"
  "$loadgen" nodes --seconds "$seconds" --nodes "$(IFS=,; echo "${urls[*]}")" --pids "$(IFS=,; echo "${watch[*]}")"
  for i in $(seq 1 "$n"); do kill "${node[$i]}"; wait "${node[$i]}" 2>/dev/null || true; done
done
