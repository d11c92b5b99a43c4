#!/usr/bin/env bash
# Where corepin's CPU goes per publish: runs one publish workload against a
# corepin binary, samples it with perf (cpu-clock, with kernel call
# stacks), and prints the CPU per publish (utime + stime / publishes) and
# its breakdown by category (benches/profile.py).
#
#   bash benches/profile.sh wrk8|closed|rooms [BIN]
#
#   wrk8    8 keep-alive publishers (wrk + benches/publish.lua), 2,000
#           channels, no subscribers, 10 s
#   closed  2,000 stream subscribers on 2,000 channels, one closed-loop
#           publisher (corepin-load publish), 10 s
#   rooms   200 channels x 10 stream subscribers, one closed-loop publisher
#
# BIN defaults to target/release/corepin (built if missing); pass an older
# build to compare before and after. Needs perf (Debian linux-perf) and wrk;
# corepin listens on port 0, so it runs beside anything else.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORKLOAD=${1:?wrk8, closed or rooms}
BIN=${2:-$ROOT/target/release/corepin}
SECONDS_RUN=${SECONDS_RUN:-10}
LOAD=$ROOT/target/release/corepin-load
[ -x "$BIN" ] && [ -x "$LOAD" ] || (cd "$ROOT" && cargo build --release -q -p corepin -p corepin-load)
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }

D=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT

"$BIN" --listen 127.0.0.1:0 --control-http 127.0.0.1:0 --control-socket "$D/sock" \
  --route "* test" --log-level info 2>"$D/err" >/dev/null &
CP=$!; PIDS+=($CP)
for _ in $(seq 100); do grep -q "running on" "$D/err" 2>/dev/null && break; sleep 0.1; done
port() { grep "($1)" "$D/err" | head -1 | sed -E "s/.*:([0-9]+) \\($1\\).*/\\1/"; }
SUB=127.0.0.1:$(port clients); CTL=127.0.0.1:$(port "control http")
published() { curl -s "http://$CTL/metrics" | awk '/^corepin_publishes_total/ {print $2}'; }
cpu() { awk '{print $14 + $15}' "/proc/$CP/stat"; }

subscribe() { # SUBSCRIBERS CHANNELS
  "$LOAD" subscribe --to "$SUB" --subscribers "$1" --channels "$2" --channel-prefix bench \
    --rate 4000 --hold-s $((SECONDS_RUN + 30)) --ready-file "$D/ready" >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do [ -f "$D/ready" ] && return; sleep 0.1; done
  echo "subscribers did not open" >&2; exit 1
}

case $WORKLOAD in
  closed) subscribe 2000 2000 ;;
  rooms) subscribe 2000 200 ;;
  wrk8) ;;
  *) echo "unknown workload $WORKLOAD" >&2; exit 2 ;;
esac
sleep 1
p0=$(published); c0=$(cpu)
perf record -F 2000 -g -p "$CP" -o "$D/perf.data" -- sleep "$SECONDS_RUN" >/dev/null 2>&1 &
PERF=$!
case $WORKLOAD in
  wrk8) wrk -t2 -c8 -d"${SECONDS_RUN}s" -s "$ROOT/benches/publish.lua" "http://$CTL/publish/" -- grip 2000 >/dev/null ;;
  closed) "$LOAD" publish --to "$CTL" --channels 2000 --channel-prefix bench --seconds "$SECONDS_RUN" >/dev/null 2>&1 ;;
  rooms) "$LOAD" publish --to "$CTL" --channels 200 --channel-prefix bench --seconds "$SECONDS_RUN" >/dev/null 2>&1 ;;
esac
wait "$PERF" || true
p1=$(published); c1=$(cpu)
hz=$(getconf CLK_TCK)
n=$((p1 - p0))
us=$(awk -v t=$((c1 - c0)) -v hz="$hz" -v n="$n" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
echo "$WORKLOAD on $BIN: $n publishes in ${SECONDS_RUN}s ($((n / SECONDS_RUN))/s), load $(cut -d' ' -f1 /proc/loadavg)"
perf script -i "$D/perf.data" 2>/dev/null | python3 "$ROOT/benches/profile.py" "$us" "$WORKLOAD"
