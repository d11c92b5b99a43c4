#!/usr/bin/env bash
# The soak run (issue 11, item 15; not part of CI): corepin in front of a
# GRIP backend (`corepin-load grip-backend`) for DURATION seconds (default
# 600) while `corepin-load soak` churns thousands of subscribers of every
# kind (HTTP stream/SSE, long-poll, WebSocket with the GRIP extension,
# WebSocket-over-HTTP) in several worker processes over 127.0.0.2-254,
# some of them slow or never reading, and publishes at a steady rate plus
# bursts. Meanwhile this script kills the backend (SIGKILL) and starts it
# again on the same port every RESTART_EVERY s, rewrites the routes file
# and sends corepin SIGHUP every RELOAD_EVERY s (every third time with a
# broken routes file, which corepin must refuse while keeping the old
# routes), and samples corepin's RSS every second.
#
# The load tool's JSON (lost/duplicated/out-of-order for healthy
# subscribers, what slow ones received, errors by kind, publish
# refusals, /metrics counters such as drops by reason) and this script's
# own figures (RSS, restarts, reloads, corepin's exit) are written to
# $OUT/soak.json and summarised on stdout and in $OUT/summary.txt.
#
# usage: bash benches/soak.sh [DURATION]
# env:   SLOTS=6000 WORKERS=4 CHANNELS=300 HOT=4 RATE=100 RESTART_EVERY=90
#        RELOAD_EVERY=40 CLIENT_WRITE=60 OUT=<dir> SOAK_ARGS="<more flags>"
# Ports are chosen at run time (port 0); only processes started here are
# stopped, by PID.
set -u
DURATION=${1:-600}
cd "$(dirname "$0")/.."
ROOT=$PWD
D=$(mktemp -d)
OUT=${OUT:-$D}
mkdir -p "$OUT"
SLOTS=${SLOTS:-6000}
WORKERS=${WORKERS:-4}
CHANNELS=${CHANNELS:-300}
HOT=${HOT:-4}
RATE=${RATE:-100}
RESTART_EVERY=${RESTART_EVERY:-90}
RELOAD_EVERY=${RELOAD_EVERY:-40}
CLIENT_WRITE=${CLIENT_WRITE:-60}

cargo build --release -q -p corepin -p corepin-load || { echo "build failed"; exit 1; }
COREPIN=$ROOT/target/release/corepin
LOAD=$ROOT/target/release/corepin-load

STARTED=""
cleanup() {
  for p in $STARTED; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT

# The backend, on a port it picks; later restarts come back on that port.
"$LOAD" grip-backend 127.0.0.1:0 --hold-log "$D/holds.log" >"$D/backend.port" 2>"$D/backend.err" &
echo $! >"$D/backend.pid"
STARTED="$STARTED $!"
disown $!   # killed and restarted by the chaos loop below
for _ in $(seq 100); do [ -s "$D/backend.port" ] && break; sleep 0.1; done
BP=$(head -1 "$D/backend.port")
[ -n "$BP" ] || { echo "backend did not start"; exit 1; }

routes_good() { # variant
  {
    echo "# soak routes, variant $1"
    echo "*,path_beg=/wsoh 127.0.0.1:$BP,over_http"
    [ "$1" = b ] && echo "*,path_beg=/nothing-here test"
    echo "* 127.0.0.1:$BP"
  } >"$D/routes.tmp" && mv "$D/routes.tmp" "$D/routes"
}
routes_bad() {
  printf '* 127.0.0.1:%s,no_such_property\n' "$BP" >"$D/routes.tmp" && mv "$D/routes.tmp" "$D/routes"
}
routes_good a
cat >"$D/corepin.toml" <<EOF
listen = ["127.0.0.1:0"]
control_http = "127.0.0.1:0"
control_socket = "$D/corepin.sock"
routes_file = "$D/routes"
[log]
level = "info"
access_log = false
[timeouts]
client_write = $CLIENT_WRITE
EOF
"$COREPIN" run --config "$D/corepin.toml" >"$D/corepin.out" 2>"$D/corepin.err" &
CPID=$!
STARTED="$STARTED $CPID"
for _ in $(seq 200); do grep -q "running on" "$D/corepin.err" 2>/dev/null && break; sleep 0.1; done
CP=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\) (clients).*/\1/p' "$D/corepin.err" | head -1)
CTL=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\) (control http).*/\1/p' "$D/corepin.err" | head -1)
[ -n "$CP" ] && [ -n "$CTL" ] || { echo "corepin did not start:"; cat "$D/corepin.err"; exit 1; }
echo "# soak: $(date -Is), $DURATION s, corepin pid $CPID on :$CP (control :$CTL), backend :$BP; files in $D"
UPTIME_START=$(uptime)
echo "# uptime at start: $UPTIME_START"

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$CPID/status" 2>/dev/null; }
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$CPID/status" 2>/dev/null; }
RSS_START=$(rss)

# RSS every second, with the time.
(
  while kill -0 "$CPID" 2>/dev/null; do
    echo "$(date +%s) $(rss)"
    sleep 1
  done
) >"$D/rss.txt" &
SAMPLER=$!
STARTED="$STARTED $SAMPLER"

# Backend restarts and reloads, on their own clocks.
(
  t=0 restarts=0 reloads=0 bad=0 variant=a
  while [ "$t" -lt "$DURATION" ]; do
    sleep 1
    t=$((t + 1))
    if [ $((t % RESTART_EVERY)) = 0 ]; then
      kill -9 "$(cat "$D/backend.pid")" 2>/dev/null
      sleep 2
      "$LOAD" grip-backend "127.0.0.1:$BP" --hold-log "$D/holds.log" >>"$D/backend.port" 2>>"$D/backend.err" &
      echo $! >"$D/backend.pid"
      disown $!
      restarts=$((restarts + 1))
      echo "$(date +%s) restart $restarts (pid $!)"
    fi
    if [ $((t % RELOAD_EVERY)) = 0 ]; then
      reloads=$((reloads + 1))
      if [ $((reloads % 3)) = 0 ]; then
        routes_bad
        bad=$((bad + 1))
        kill -HUP "$CPID"
        sleep 1
        # Put a good file back (the bad one must have been refused).
        routes_good "$variant"
        kill -HUP "$CPID"
      else
        [ "$variant" = a ] && variant=b || variant=a
        routes_good "$variant"
        kill -HUP "$CPID"
      fi
      echo "$(date +%s) reload $reloads (bad files so far: $bad)"
    fi
  done
) >"$D/chaos.txt" 2>&1 &
CHAOS=$!
STARTED="$STARTED $CHAOS"

"$LOAD" soak --to "127.0.0.1:$CP" --publish-to "127.0.0.1:$CTL" --seconds "$DURATION" \
  --slots "$SLOTS" --workers "$WORKERS" --channels "$CHANNELS" --hot-channels "$HOT" \
  --rate "$RATE" --dir "$D/records" --hold-log "$D/holds.log" ${SOAK_ARGS:-} >"$D/load.json" 2>"$D/load.err"
LOAD_RC=$?
wait "$CHAOS" 2>/dev/null
RSS_END_LOAD=$(rss)
PEAK=$(hwm)
# Memory after the peak goes back within about 10 s (README, Memory).
sleep 15
RSS_FINAL=$(rss)
CPU_S=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) / hz}' "/proc/$CPID/stat")
UPTIME_END=$(uptime)
METRICS_FINAL=$(curl -s -m 5 "http://127.0.0.1:$CTL/metrics" | grep -E '^corepin_(connections|subscriptions)\{' | awk '{s += $2} END {print s + 0}')
kill -TERM "$CPID"
for _ in $(seq 100); do kill -0 "$CPID" 2>/dev/null || break; sleep 0.1; done
wait "$CPID"
CP_RC=$?
kill "$SAMPLER" 2>/dev/null
kill "$(cat "$D/backend.pid")" 2>/dev/null
PANICS=$(grep -ci panic "$D/corepin.err")

python3 - "$D" "$OUT" "$LOAD_RC" "$CP_RC" "$RSS_START" "$PEAK" "$RSS_END_LOAD" "$RSS_FINAL" "$PANICS" "$METRICS_FINAL" "$DURATION" "$CPU_S" "$UPTIME_START" "$UPTIME_END" <<'PY'
import json, sys
d, out, load_rc, cp_rc, rss0, peak, rss_end, rss_final, panics, open_final, duration, cpu_s, uptime_start, uptime_end = sys.argv[1:]
try:
    r = json.load(open(f"{d}/load.json"))
except Exception as e:
    r = {"error": f"no result from the load tool: {e}"}
samples = [l.split() for l in open(f"{d}/rss.txt") if len(l.split()) == 2]
peak_sampled = max((int(s[1]) for s in samples), default=0)
chaos = open(f"{d}/chaos.txt").read().splitlines()
r["script"] = {
    "duration_s": int(duration),
    "load_exit": int(load_rc),
    "corepin_exit_on_sigterm": int(cp_rc),
    "corepin_panic_lines": int(panics),
    "rss_kib": {"start": int(rss0 or 0), "peak_vmhwm": int(peak or 0), "peak_sampled": peak_sampled,
                "after_load": int(rss_end or 0), "final_15s_later": int(rss_final or 0)},
    "connections_open_at_end": int(open_final or 0),
    "corepin_cpu_seconds": int(cpu_s or 0),
    "uptime_at_start": uptime_start.strip(),
    "uptime_at_end": uptime_end.strip(),
    "backend_restarts": sum(1 for l in chaos if " restart " in l),
    "reloads": sum(1 for l in chaos if " reload " in l),
}
json.dump(r, open(f"{out}/soak.json", "w"), indent=1, sort_keys=True)
h = r.get("healthy", {})
lines = [
    f"healthy subscribers: {h.get('sessions')} sessions, {h.get('expected')} messages due, "
    f"lost {h.get('lost')}, duplicated {h.get('duplicated')}, out of order {h.get('out_of_order')}",
    "by class/kind (for slow and never-reading subscribers 'lost' means not received:",
    "  behind, or dropped by corepin; 'gaps' must be 0 except for long-polls, which",
    "  miss what is published between their requests by design):",
]
for k, t in sorted(r.get("groups", {}).items()):
    lines.append(f"  {k}: " + ", ".join(f"{a} {b}" for a, b in t.items() if b))
m = r.get("metrics_during_run", {})
pick = lambda word: {k.replace("corepin_", ""): v for k, v in m.items() if word in k and v}
lines.append(f"drops (corepin /metrics): {pick('subscriber_drops')}")
lines.append(f"publish refusals (corepin /metrics): {pick('publishes_refused')}")
lines.append(f"corepin /metrics, other: upstream errors {m.get('corepin_upstream_errors_total')}, "
             f"connection panics {m.get('corepin_connection_panics_total')}, refused connections {pick('connections_refused')}, "
             f"requests {pick('requests_total')}")
p = r.get("publish", {})
lines.append(f"publisher: {p.get('publishes')} publishes, {p.get('items')} items, {p.get('bursts')} bursts, "
             f"refused {p.get('refused')}, errors {p.get('errors')}, uncertain items {p.get('uncertain_items')}, "
             f"request latency ms {p.get('request_latency_ms')}")
lines.append(f"healthy delivery latency ms: {r.get('healthy_latency_ms')}")
ws = r.get("workers_summary", {})
lines.append(f"subscriber errors by kind: {ws.get('errors')}")
lines.append(f"sessions ended by the server (by kind and class): {ws.get('server_ends')}")
lines.append(f"RSS KiB: {r['script']['rss_kib']}")
lines.append(f"script: {r['script']}")
lines.append(f"loss examples: {r.get('loss_examples')}")
text = "\n".join(lines)
print(text)
open(f"{out}/summary.txt", "w").write(text + "\n")
PY
echo "files: $D (soak.json and summary.txt in $OUT)"
