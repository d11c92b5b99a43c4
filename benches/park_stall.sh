#!/usr/bin/env bash
# Counts executor stalls with benches/park_stall.rs: RUNS runs of SECONDS
# each, with the program and BUSY busy loops (`yes > /dev/null`, started
# and killed here by PID) all pinned to one CPU at nice 19, so the
# executor threads are descheduled at random points, as on a loaded
# machine. Extra arguments go to park_stall (e.g. --latency-us 1000
# --timer-ms 100). Prints one line per run and the totals.
#
#   bash benches/park_stall.sh 10 20 2 --latency-us 1000
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10} seconds=${2:-20} busy=${3:-2}
shift 3 || shift $#
bin=$(nice -n 19 cargo test --workspace --bench park_stall --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="park_stall" and m.get("executable"): print(m["executable"])')
cpu=$(($(nproc) - 1))
pids=()
for _ in $(seq "$busy"); do taskset -c "$cpu" nice -n 19 yes >/dev/null & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
stalled=0
for i in $(seq "$runs"); do
  line=$(taskset -c "$cpu" nice -n 19 "$bin" --bench --seconds "$seconds" "$@")
  echo "run $i: $line"
  case $line in *"stalls(>"*")=0 "*) ;; *) stalled=$((stalled + 1)) ;; esac
done
echo "runs=$runs with_stalls=$stalled ($(uptime))"
