#!/usr/bin/env bash
# WebSocket benchmark: corepin and Pushpin side by side in one run.
#  - echo round trips/s, 50 connections, through passthrough and through
#    WebSocket-over-HTTP, to corepin-load's echo server (not the bottleneck:
#    it is measured directly too);
#  - one ws-message to 10,000 WebSocket subscribers (time to the last, p99);
#  - userspace memory per idle WebSocket (RSS delta over 10,000).
#   bash benches/ws.sh       # writes benches/results/ws.md and ws.jsonl
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
LOAD=$ROOT/target/release/corepin-load
OUT=$ROOT/benches/results/ws.md
RAW=$ROOT/benches/results/ws.jsonl
mkdir -p "$(dirname "$OUT")"
: > "$RAW"
bench_init
(cd "$ROOT" && cargo build --release -q -p corepin-load)

"$LOAD" echo-server 127.0.0.1:18130 > /dev/null & PIDS+=($!)
wait_port 18130
ROUTES="*,path_beg=/oh 127.0.0.1:18130,over_http\n* 127.0.0.1:18130"

record() { echo "{\"peer\":\"$1\",\"case\":\"$2\",\"result\":$3}" >> "$RAW"; echo "$1 $2: $3" >&2; }

echo_round() {
  local peer=$1 port=$2
  record "$peer" passthrough "$("$LOAD" ws-echo --to 127.0.0.1:"$port" --path /echo --conns 50 --seconds 5 || echo '{}')"
  record "$peer" over_http "$("$LOAD" ws-echo --to 127.0.0.1:"$port" --path /oh/echo --conns 50 --seconds 5 || echo '{}')"
}

for _ in $(seq 1 "$ROUNDS"); do
  record direct passthrough "$("$LOAD" ws-echo --to 127.0.0.1:18130 --path /echo --conns 50 --seconds 5)"
  start_corepin --route "*,path_beg=/oh 127.0.0.1:18130,over_http" --route "* 127.0.0.1:18130"
  echo_round corepin 18110
  kill "$COREPIN_PID"; sleep 1
  PUSHPIN_LIMITS=raised start_pushpin "$ROUTES"
  echo_round pushpin 18102
  pkill -f "$BENCH_DIR/pushpin" || true; sleep 2
done

# Fan-out to WebSocket subscribers and idle memory, on the test targets.
ws_fanout() {
  local peer=$1 sub=$2 pub=$3 channel=$4
  record "$peer" fanout-10k "$("$LOAD" fanout --ws --sub "$sub" --publish "$pub" --channel "$channel" --sub-path "/ws?channel=$channel" --subscribers 10000 --messages 1 --timeout-s 30 --settle-ms 2000 2>/dev/null || echo '{}')"
}
idle_kib() {
  local pids=$1 sub=$2 pub=$3
  local before after
  before=$(rss_kib $pids)
  "$LOAD" fanout --ws --sub "$sub" --publish "$pub" --channel idle --sub-path "/ws?channel=idle" --subscribers 10000 --messages 1 --timeout-s 30 --settle-ms 500 --hold-s 6 > /dev/null 2> "$BENCH_DIR/hold.err" &
  local lp=$!
  for _ in $(seq 1 300); do grep -q holding "$BENCH_DIR/hold.err" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  after=$(rss_kib $pids)
  wait "$lp" || true
  awk -v a="$after" -v b="$before" 'BEGIN {printf "%.2f", (a - b) / 10000}'
}
for r in $(seq 1 "$ROUNDS"); do
  start_corepin --route "* test"
  ws_fanout corepin 127.0.0.1:18110 127.0.0.1:18111 "w$r"
  kill "$COREPIN_PID"; sleep 1
  PUSHPIN_LIMITS=raised start_pushpin "* test"
  ws_fanout pushpin 127.0.0.1:18102 127.0.0.1:5601 "w$r"
  pkill -f "$BENCH_DIR/pushpin" || true; sleep 2
done
# Idle memory on freshly started peers: a peer that already held 10k
# connections keeps that memory in its allocator, which would hide the cost.
start_corepin --route "* test"
record corepin idle-kib "{\"kib\":$(idle_kib "$COREPIN_PID" 127.0.0.1:18110 127.0.0.1:18111)}"
kill "$COREPIN_PID"; sleep 1
PUSHPIN_LIMITS=raised start_pushpin "* test"
record pushpin idle-kib "{\"kib\":$(idle_kib "$(pids_of "$BENCH_DIR/pushpin")" 127.0.0.1:18102 127.0.0.1:5601)}"
pkill -f "$BENCH_DIR/pushpin" || true; sleep 2

python3 - "$RAW" "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(peer, case, f):
    v = [f(r["result"]) for r in rows if r["peer"] == peer and r["case"] == case and r["result"]]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
L = ["| case | corepin | Pushpin 1.36 | corepin ÷ Pushpin |", "|---|---:|---:|---:|"]
def row(name, case, f, fmt, higher_better=True):
    c, p = med("corepin", case, f), med("pushpin", case, f)
    ratio = "–" if not c or not p else "{:.1f}×".format(c / p if higher_better else p / c)
    L.append(f"| {name} | {'–' if c is None else fmt.format(c)} | {'–' if p is None else fmt.format(p)} | {ratio} |")
rt = lambda r: r.get("round_trips_per_sec")
row("echo round trips/s, passthrough (50 conns)", "passthrough", rt, "{:,.0f}")
row("echo round trips/s, WebSocket-over-HTTP (50 conns)", "over_http", rt, "{:,.0f}")
row("one ws-message to 10k WebSockets: time to last, ms", "fanout-10k", lambda r: r.get("first_publish_to_last_delivery_ms") if r.get("delivered") == r.get("expected") else None, "{:.1f}", False)
row("one ws-message to 10k WebSockets: delivered", "fanout-10k", lambda r: r.get("delivered"), "{:,.0f}")
row("one ws-message to 10k WebSockets: p99 ms", "fanout-10k", lambda r: r.get("latency_ms", {}).get("p99"), "{:.1f}", False)
row("KiB userspace per idle WebSocket (10k held)", "idle-kib", lambda r: r.get("kib"), "{:.2f}", False)
d = med("direct", "passthrough", rt)
L.append(f"\nThe echo server alone (no proxy): {d:,.0f} round trips/s." if d else "")
open(sys.argv[2], "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
