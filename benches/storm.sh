#!/usr/bin/env bash
# The reconnect storm (issue 18, item 7; not part of CI). SUBS SSE
# subscribers hold one channel while items are published at RATE per
# second; then every connection is reset at once (TCP RST) and each
# subscriber comes straight back with Last-Event-ID, as EventSource does.
# `corepin-load storm` measures items lost, duplicated and out of order
# per subscriber, the time until all are connected again and caught up,
# and the requests the storm cost the backend (`corepin-load
# storm-backend`, which keeps the channel's items as the application's
# store and counts what the proxy asks of it).
#
# The runs, one after another in this one invocation:
#   corepin-history   corepin with [history] on, in front of the backend
#                     in `hold` mode: the backend only says Grip-Hold;
#                     corepin replays what each client missed.
#   corepin-test      corepin with history, the built-in test target
#                     (/stream?channel=X): no backend at all.
#   corepin-nohistory corepin without history, the backend in `replay`
#                     mode: what a Pushpin user's backend does (the items
#                     after Last-Event-ID in the body, Grip-Channel
#                     prev-id, a next link corepin fetches on a gap).
#   pushpin           Pushpin 1.36 (Debian), the same `replay` backend,
#                     rate limits raised (PUSHPIN_LIMITS, default raised:
#                     as shipped, 2,500 deliveries/s drops items at 10k
#                     subscribers).
#
# usage: bash benches/storm.sh
# env:   SUBS=10000 RATE=10 BEFORE=5 AFTER=3 WORKERS=4 TIMEOUT=300 RUNS="corepin-history
#        corepin-test corepin-nohistory pushpin" NO_BUILD=1 LOAD_BIN=...
#        OUT=<dir> (storm.jsonl and storm.md there; default benches/results)
#        COREPIN_BIN=<corepin binary> (default target/release/corepin)
#        MONITOR=1: for corepin runs, sample 4 times a second each core's
#        accepted, open and subscribed counts (/metrics), the proxy port's
#        sockets with unread bytes (ss Recv-Q) and each core thread's
#        state and CPU time, into OUT/<run>.monitor.tsv: a core that
#        accepts connections and does not read them shows there.
# Ports are chosen at run time; only processes started here are stopped.
set -u
. "$(dirname "$0")/lib.sh"
SUBS=${SUBS:-10000}
RATE=${RATE:-10}
BEFORE=${BEFORE:-5}
AFTER=${AFTER:-3}
WORKERS=${WORKERS:-4}
TIMEOUT=${TIMEOUT:-300}
RUNS=${RUNS:-corepin-history corepin-test corepin-nohistory pushpin}
OUT=${OUT:-$ROOT/benches/results}
bench_init
COREPIN_BIN=${COREPIN_BIN:-$ROOT/target/release/corepin}
mkdir -p "$OUT"
JSONL=$OUT/storm.jsonl
: > "$JSONL.new"

# stop_these PID...: stops those processes and their children (only).
stop_these() {
  local all pid
  all=$(descendants "$@")
  for pid in $all; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in $all; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in $all; do kill -9 "$pid" 2>/dev/null || true; done
}

# start_storm_corepin ARGS...: lib.sh's start_corepin with COREPIN_BIN.
start_storm_corepin() {
  "$COREPIN_BIN" --listen "127.0.0.1:$COREPIN_PORT" \
    --control-http "127.0.0.1:$COREPIN_CONTROL_PORT" \
    --control-socket "$BENCH_DIR/corepin.sock" --log-level warn "$@" \
    > "$BENCH_DIR/corepin.out" 2>> "$BENCH_DIR/corepin.err" & PIDS+=($!)
  COREPIN_PID=$!
  wait_port "$COREPIN_PORT"
}

# monitor RUN: MONITOR=1's sampler (runs until killed): every 0.25 s,
# each core's accepted, open and subscribed counts (/metrics), the proxy
# port's established sockets holding unread bytes (ss Recv-Q > 0: in the
# accept queue or accepted and not read), and each corepin thread's
# state and CPU time.
monitor() {
  python3 - "$OUT/$1.monitor.tsv" "$COREPIN_CONTROL_PORT" "$COREPIN_PORT" "$COREPIN_PID" <<'PY'
import os, re, subprocess, sys, time, urllib.request
out, control, port, pid = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
tick = os.sysconf("SC_CLK_TCK")
f = open(out, "w", buffering=1)
f.write("t_s\tcore\taccepted\topen_http\tsubscriptions\tunread_sockets\tthreads (name state cpu_s)\n")
t0 = time.time()
metric = re.compile(r'^(corepin_accepted_total|corepin_connections|corepin_subscriptions)\{(?:kind="http",)?core="(\d+)"\} (\S+)', re.M)
while True:
    t = time.time() - t0
    try:
        m = urllib.request.urlopen(f"http://127.0.0.1:{control}/metrics", timeout=1).read().decode()
    except Exception:
        m = ""
    cores = {}
    for name, core, v in metric.findall(m):
        cores.setdefault(core, {})[name] = v
    ss = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                        capture_output=True, text=True).stdout
    unread = sum(1 for line in ss.splitlines() if line.split() and line.split()[0] != "0")
    threads = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task")):
            try:
                stat = open(f"/proc/{pid}/task/{tid}/stat").read()
                name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2:].split()
            if name.startswith("corepin-") and name[8:].isdigit():
                threads.append(f"{name} {rest[0]} {(int(rest[11]) + int(rest[12])) / tick:.2f}")
    except OSError:
        break
    for core in sorted(cores):
        c = cores[core]
        f.write(f"{t:.2f}\t{core}\t{c.get('corepin_accepted_total','')}\t{c.get('corepin_connections','')}\t"
                f"{c.get('corepin_subscriptions','')}\t{unread}\t{', '.join(threads)}\n")
    time.sleep(max(0.0, 0.25 - (time.time() - t0 - t)))
PY
}

# listen_drops: the kernel's count of handshakes a listening socket
# dropped (ListenDrops in /proc/net/netstat: mostly a full accept queue;
# the whole machine's, so read it as an upper bound).
listen_drops() {
  awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) n[$i] = i; h = 1 } else print $n["ListenDrops"] }' /proc/net/netstat
}

# start_storm_backend MODE: the counting backend; sets STORM_BACKEND_PORT.
start_storm_backend() {
  local f=$BENCH_DIR/backend.port
  : > "$f"
  "$LOAD" storm-backend --mode "$1" > "$f" 2> "$BENCH_DIR/backend.err" & PIDS+=($!)
  STORM_BACKEND_PID=$!
  for _ in $(seq 1 100); do [ -s "$f" ] && break; sleep 0.1; done
  STORM_BACKEND_PORT=$(head -n1 "$f")
  wait_port "$STORM_BACKEND_PORT"
}

for run in $RUNS; do
  echo "== $run: $SUBS subscribers, $RATE items/s" >&2
  backend_args=()
  path='/stream?channel={channel}'
  case $run in
    corepin-history)
      start_storm_backend hold
      start_storm_corepin --route "* 127.0.0.1:$STORM_BACKEND_PORT" --history-messages 10000
      proxy=$COREPIN_PID; to=$COREPIN_PORT; pub=$COREPIN_CONTROL_PORT
      backend_args=(--backend "127.0.0.1:$STORM_BACKEND_PORT") ;;
    corepin-test)
      STORM_BACKEND_PID=
      start_storm_corepin --route "* test" --history-messages 10000
      proxy=$COREPIN_PID; to=$COREPIN_PORT; pub=$COREPIN_CONTROL_PORT ;;
    corepin-nohistory)
      start_storm_backend replay
      start_storm_corepin --route "* 127.0.0.1:$STORM_BACKEND_PORT"
      proxy=$COREPIN_PID; to=$COREPIN_PORT; pub=$COREPIN_CONTROL_PORT
      backend_args=(--backend "127.0.0.1:$STORM_BACKEND_PORT") ;;
    pushpin)
      start_storm_backend replay
      PUSHPIN_LIMITS=${PUSHPIN_LIMITS:-raised} start_pushpin "* 127.0.0.1:$STORM_BACKEND_PORT"
      proxy="$PUSHPIN_PID $ZURL_PID"; to=$PUSHPIN_PORT; pub=$PUSHPIN_PUBLISH_PORT
      backend_args=(--backend "127.0.0.1:$STORM_BACKEND_PORT") ;;
    *) echo "unknown run '$run'" >&2; exit 2 ;;
  esac
  MONITOR_PID=
  if [ "${MONITOR:-}" = 1 ] && [ "$run" != pushpin ]; then
    monitor "$run" & MONITOR_PID=$!
  fi
  drops_before=$(listen_drops)
  # The warm-up request start_pushpin makes happens before the storm's
  # first item, so it is not in the storm's counts.
  "$LOAD" storm --label "$run" --to "127.0.0.1:$to" --path "$path" \
    --publish-to "127.0.0.1:$pub" "${backend_args[@]}" --subscribers "$SUBS" \
    --workers "$WORKERS" --rate "$RATE" --before-s "$BEFORE" --after-s "$AFTER" --timeout-s "$TIMEOUT" \
    > "$BENCH_DIR/$run.json"
  if [ -s "$BENCH_DIR/$run.json" ]; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["limits"]=sys.argv[2]; d["listen_drops"]=int(sys.argv[3]); print(json.dumps(d))' \
      "$BENCH_DIR/$run.json" "${PUSHPIN_LIMITS:-raised}" "$(( $(listen_drops) - drops_before ))" >> "$JSONL.new"
    cat "$BENCH_DIR/$run.json" >&2
  else
    echo "$run: no result" >&2
  fi
  [ -n "$MONITOR_PID" ] && stop_these "$MONITOR_PID"
  # shellcheck disable=SC2086
  stop_these $proxy $STORM_BACKEND_PID
done
mv "$JSONL.new" "$JSONL"

python3 - "$JSONL" > "$OUT/storm.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| run | subscribers held | lost (subs) | duplicated (subs) | out of order | all back | all caught up | caught up p50 / p99 | backend requests in storm (resumes / next links) | items sent by backend | listen drops |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
def s(v):
    return "-" if v is None else f"{v:.2f} s"
for r in rows:
    b = r.get("backend_storm") or {}
    c = r.get("caught_up_ms") or {}
    p = lambda k: "-" if c.get(k) is None else f"{c[k]:.0f}"
    req = "0 (no backend)" if not b else f"{b.get('requests', 0)} ({b.get('resumes', 0)} / {b.get('next_links', 0)})"
    print(f"| {r['label']} | {r['subscribed_before']}/{r['subscribers']} | {r['lost']} ({r['subscribers_with_loss']}) "
          f"| {r['duplicated']} ({r['subscribers_with_duplicates']}) | {r['out_of_order']} | {s(r.get('all_back_s'))} "
          f"| {s(r.get('all_caught_up_s'))} | {p('p50')} / {p('p99')} ms | {req} | {b.get('items_sent', 0) if b else 0} | {r.get('listen_drops', '-')} |")
PY
cat "$OUT/storm.md"
