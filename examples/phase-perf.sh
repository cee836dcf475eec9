#!/bin/bash
# Profiles one phase of the `history` scenario: the batches-of-10 ingest
# phase of `loadgen history --history MODE`, 3 s of it, with DWARF call
# graphs. Compare an `on` and an `off` profile taken one after the other;
# µs per event of a part = its share of the samples × 2 cores × 1e6 / rate.
#
# usage: examples/phase-perf.sh on|off OUT [LOADGEN]
#   OUT.log  the run's output (the phase's rate is its "batch=10" line)
#   OUT.data the profile (perf report -i OUT.data --children --sort sym)
set -euo pipefail
mode=$1
out=$2
lg=${3:-target/release/examples/loadgen}
"$lg" history --seconds 5 --rounds 1 --history "$mode" > "$out.log" 2>&1 &
run=$!
deadline=$((SECONDS + 300))
until grep -q "batch= 1" "$out.log" 2>/dev/null; do
    if ((SECONDS > deadline)); then
        echo "the single-event phase did not end within 300 s" >&2
        kill "$run"
        exit 1
    fi
    sleep 0.1
done
# The batches-of-10 phase starts once the router has caught up (~1 s).
sleep 1.5
perf record -F 299 --call-graph dwarf,16384 -o "$out.data" -p "$run" -- sleep 3 > /dev/null 2>&1
wait "$run"
grep "batch=10" "$out.log"
