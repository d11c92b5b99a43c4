#!/usr/bin/env bash
# The cluster benchmark (issue 17, PERFORMANCE.md "A cluster of nodes"):
# N HTTP stream subscribers spread by HAProxy (TCP mode, round robin) over
# the nodes of each peer, everything on this one machine, measured with
# corepin-load only:
#
#   single         one corepin node (every core), subscribers straight to it
#   single-lb      the same node behind HAProxy (what the balancer costs)
#   cluster-nats   3 corepin nodes + nats-server (JetStream), behind HAProxy,
#                  publishing through node 1
#   cluster-redis  the same with redis-server (a Redis stream)
#   nchan-redis    2 nginx+nchan sharing redis-server (nchan_redis_pass),
#                  behind HAProxy, publishing to the first
#   pushpin        3 Pushpin instances (rate limits raised) behind HAProxy;
#                  no broker: the publisher sends each message to all three
#
# Workloads, each with fresh subscribers: one publish to N (ONE_ROUNDS
# times: the time from the publish to the last delivery, and latency
# percentiles), and a burst of BURST publishes to the same N (deliveries/s).
# Every run reports lost, duplicated and out-of-order deliveries, and the
# CPU time per delivery of each group of server processes (nodes, broker,
# balancer) from the first publish to the last delivery.
#
#   bash benches/cluster.sh
#     -> benches/results/cluster.md     (the table PERFORMANCE.md quotes)
#        benches/results/cluster.jsonl  (every run's full JSON result)
#
# Env: N (15000), BURST (20), ONE_ROUNDS (3), BURST_ROUNDS (1),
#      CASES ("single single-lb cluster-nats cluster-redis nchan-redis pushpin"),
#      OPEN_RATE (3000 subscribers/s; Pushpin 1000, see compare.sh),
#      TABLE_ONLY=1 (only remake cluster.md from cluster.jsonl).
#
# The machine is shared and has 2 cores: every process of every peer, the
# balancer and the load generator share them. Ports are picked free at
# run time; everything lives in a mktemp directory; only processes this
# script started are stopped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/nginx_confs.sh"
N=${N:-15000}
BURST=${BURST:-20}
ONE_ROUNDS=${ONE_ROUNDS:-3}
BURST_ROUNDS=${BURST_ROUNDS:-1}
CASES=${CASES:-"single single-lb cluster-nats cluster-redis nchan-redis pushpin"}
OPEN_RATE=${OPEN_RATE:-3000}
RES=${RES:-$ROOT/benches/results}
RAW=$RES/cluster.jsonl
OUT=$RES/cluster.md
D=$(mktemp -d /tmp/corepin-cluster-bench.XXXXXX)
PIDS=()
mkdir -p "$RES"

stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$D"' EXIT

table() {
python3 - "$RAW" "$OUT" "$N" "$BURST" <<'PY'
import json, statistics, sys
raw, out, n, burst = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(l) for l in open(raw) if l.strip()]
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
def runs(case, wl):
    return [r["result"] for r in rows if r["case"] == case and r["workload"] == wl and r["result"]]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def f(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"
def cpu(res, group=None):
    g = res.get("cpu_groups", {})
    if group:
        return g.get(group, {}).get("cpu_us_per_delivery")
    vals = [v.get("cpu_seconds", 0) for v in g.values()]
    d = res.get("delivered") or 0
    return sum(vals) * 1e6 / d if d and vals else None
lines = [
    f"# Cluster benchmark: {n:,} stream subscribers", "",
    "One machine (2 shared cores): every peer's processes, HAProxy and corepin-load share them.",
    f"`one`: one publish to all {n:,} (median of the runs; each run in brackets).",
    f"`burst`: {burst} publishes back to back to the same {n:,}.",
    "CPU: server-side CPU time from the first publish to the last delivery, per delivery (µs):",
    "all server processes, then nodes / broker / balancer.", "",
    "| case | one: last delivery, ms | one: p50 / p99, ms | burst: deliveries/s | burst: last delivery, ms | subscribers not opened | lost / dup / out of order | CPU µs/delivery (one) | CPU µs/delivery (burst): all = nodes + broker + balancer |",
    "|---|---|---|---|---|---|---|---|---|",
]
for c in cases:
    one, b = runs(c, "one"), runs(c, "burst")
    last = [r.get("first_publish_to_last_delivery_ms") for r in one]
    p50 = med([r.get("latency_ms", {}).get("p50") for r in one])
    p99 = med([r.get("latency_ms", {}).get("p99") for r in one])
    dps = med([r.get("deliveries_per_sec") for r in b])
    blast = med([r.get("first_publish_to_last_delivery_ms") for r in b])
    failed = sum(r.get("failed", 0) or 0 for r in one + b)
    # Lost: messages missing at subscribers that did open.
    lost = sum(max(0, (r.get("lost", 0) or 0) - (r.get("failed", 0) or 0) * (r.get("messages", 1) or 1)) for r in one + b)
    bad = [lost] + [sum(r.get(k, 0) or 0 for r in one + b) for k in ("duplicated", "out_of_order")]
    c1 = med([cpu(r) for r in one])
    cb = med([cpu(r) for r in b])
    parts = " + ".join(f(med([cpu(r, g) for r in b]), 2) for g in ("nodes", "broker", "balancer"))
    lines.append(
        f"| {c} | {f(med(last), 1)} ({', '.join(f(x, 1) for x in last)}) | {f(p50, 1)} / {f(p99, 1)} | "
        f"{f(dps)} | {f(blast, 1)} | {failed:,} of {n * (len(one) + len(b)):,} | {bad[0]:,} / {bad[1]} / {bad[2]} | {f(c1, 2)} | {f(cb, 2)} = {parts} |"
    )
loads = [float(r["load"].split()[0]) for r in rows if r.get("load")]
if loads:
    lines += ["", f"Load average (1 min) at the runs' ends: {min(loads):.1f} to {max(loads):.1f} (each run's in cluster.jsonl, `load`)."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
}
if [ "${TABLE_ONLY:-0}" = 1 ]; then table; exit 0; fi
: > "$RAW"

for bin in nats-server redis-server haproxy nginx pushpin; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || {
    echo "cluster.sh: needs $bin (apt-get install nats-server redis-server haproxy nginx libnginx-mod-nchan pushpin)" >&2
    exit 2
  }
done
export PATH=$PATH:/usr/sbin
(cd "$ROOT" && cargo build --release -q -p corepin -p corepin-load)
COREPIN=$ROOT/target/release/corepin
LOAD=$ROOT/target/release/corepin-load

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on port $1" >&2
  return 1
}
wait_log() { # wait_log FILE TEXT
  for _ in $(seq 1 200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no '$2' in $1" >&2
  return 1
}
# tree PID: the process and all its descendants.
tree() {
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p" || true); do tree "$c"; done
}
commas() { tr -s ' \n' ',' | sed 's/^,//; s/,$//'; }

start_nats() {
  NATS_PORT=$(free_port)
  mkdir -p "$D/nats"
  nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$D/nats" > "$D/nats.log" 2>&1 & PIDS+=($!)
  BROKER_PIDS=$!
  wait_log "$D/nats.log" "Server is ready"
}

start_redis() {
  REDIS_PORT=$(free_port)
  mkdir -p "$D/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes \
    --dir "$D/redis" > "$D/redis.log" 2>&1 & PIDS+=($!)
  BROKER_PIDS=$!
  wait_port "$REDIS_PORT"
}

# start_node NAME [ARGS...]: a corepin node on every core, test target;
# sets NODE_PORT, NODE_CONTROL, appends to NODE_PIDS.
start_node() {
  local name=$1; shift
  NODE_PORT=$(free_port); NODE_CONTROL=$(free_port)
  "$COREPIN" --listen "127.0.0.1:$NODE_PORT" --control-http "127.0.0.1:$NODE_CONTROL" \
    --control-socket "$D/$name.sock" --log-level warn --route "* test" "$@" \
    > "$D/$name.out" 2> "$D/$name.err" & PIDS+=($!)
  NODE_PIDS="$NODE_PIDS $!"
  wait_port "$NODE_PORT"
}

# start_lb HOST:PORT...: two HAProxy processes on one port (SO_REUSEPORT;
# one alone would pass the 20,000-file limit at 10,000 clients), round
# robin over the servers, no checks; sets SUB and LB_PIDS.
start_lb() {
  local port i s servers=""
  port=$(free_port)
  i=0
  for s in "$@"; do i=$((i + 1)); servers+="  server s$i $s"$'\n'; done
  cat > "$D/haproxy.cfg" <<CFG
global
  maxconn 9000
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 10m
  timeout server 10m
frontend subscribers
  bind 127.0.0.1:$port
  default_backend nodes
backend nodes
  balance roundrobin
$servers
CFG
  LB_PIDS=""
  for i in 1 2; do
    haproxy -db -f "$D/haproxy.cfg" > "$D/haproxy$i.log" 2>&1 & PIDS+=($!)
    LB_PIDS="$LB_PIDS $!"
  done
  wait_port "$port"
  SUB=127.0.0.1:$port
}

# start_nchan NAME: nginx+nchan sharing the Redis on REDIS_PORT; sets
# NCHAN_PORT, appends its workers to NCHAN_PIDS.
start_nchan() {
  local d=$D/$1
  NCHAN_PORT=$(free_port)
  nchan_conf "$d" "$NCHAN_PORT" "upstream nchan_redis { nchan_redis_server redis://127.0.0.1:$REDIS_PORT; }" "" \
    "nchan_redis_pass nchan_redis;"
  nginx -p "$d" -c "$d/nginx.conf" & PIDS+=($!)
  wait_port "$NCHAN_PORT"
  sleep 0.5
  NCHAN_PIDS="$NCHAN_PIDS $(pgrep -P "$(cat "$d/nginx.pid")" | tr '\n' ' ')"
}

# start_pushpin NAME: a Pushpin on the test route with its rate limits
# raised; sets PP_PORT and PP_PUBLISH, appends its runner to PP_RUNNERS.
start_pushpin() {
  local d=$D/$1 off
  mkdir -p "$d/run" "$d/log"
  # Pushpin's internal ports are 5560-5563 plus its port_offset: find an
  # offset where all four are free.
  off=$(python3 - <<'PY'
import random, socket
for _ in range(200):
    off = random.randrange(100, 3000) * 4
    try:
        socks = []
        for p in range(5560 + off, 5564 + off):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(off); break
    except OSError:
        pass
PY
)
  printf '* test\n' > "$d/routes"
  sed -e "s|^rundir=.*|rundir=$d/run|" \
      -e "s|^logdir=.*|logdir=$d/log|" \
      -e "s|^port_offset=.*|port_offset=$off|" \
      -e "s|^routesfile=.*|routesfile=$d/routes|" \
      -e "s|^client_maxconn=.*|client_maxconn=60000|" \
      -e "s|^message_rate=.*|message_rate=10000000|" \
      -e "s|^message_hwm=.*|message_hwm=10000000|" \
      -e "s|^log_level=.*|log_level=1|" \
      /etc/pushpin/pushpin.conf > "$d/pushpin.conf"
  sed -i "s|{libdir}|/usr/lib/pushpin|" "$d/pushpin.conf"
  PP_PORT=$(free_port)
  pushpin --config "$d/pushpin.conf" --port "127.0.0.1:$PP_PORT" > "$d/log/pushpin.out" 2>&1 & PIDS+=($!)
  PP_RUNNERS="$PP_RUNNERS $!"
  wait_port "$PP_PORT"
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -m 1 "http://127.0.0.1:$PP_PORT/stream?channel=warmup")" = 200 ] && break
    sleep 0.2
  done
  PP_PUBLISH=127.0.0.1:$((5561 + off))
}

# start CASE: the case's processes; sets SUB, PUBARGS, PATHARGS, CPUGROUPS, RATE.
start() {
  NODE_PIDS=""; BROKER_PIDS=""; LB_PIDS=""; NCHAN_PIDS=""; PP_RUNNERS=""
  PATHARGS=(); RATE=$OPEN_RATE
  case $1 in
    single|single-lb)
      start_node n1
      PUBARGS=(--publish-to "127.0.0.1:$NODE_CONTROL")
      if [ "$1" = single ]; then SUB=127.0.0.1:$NODE_PORT; else start_lb "127.0.0.1:$NODE_PORT"; fi ;;
    cluster-nats|cluster-redis)
      local url backends=()
      if [ "$1" = cluster-nats ]; then start_nats; url=nats://127.0.0.1:$NATS_PORT
      else start_redis; url=redis://127.0.0.1:$REDIS_PORT; fi
      for n in n1 n2 n3; do
        start_node "$n" --cluster "$url" --node "$n"
        backends+=("127.0.0.1:$NODE_PORT")
        [ "$n" = n1 ] && PUBARGS=(--publish-to "127.0.0.1:$NODE_CONTROL")
        # Connected to the broker (/health 200) before subscribers come.
        for _ in $(seq 1 200); do
          [ "$(curl -s -o /dev/null -w '%{http_code}' -m 1 "http://127.0.0.1:$NODE_CONTROL/health")" = 200 ] && break
          sleep 0.05
        done
      done
      start_lb "${backends[@]}" ;;
    nchan-redis)
      start_redis
      start_nchan x1; local first=$NCHAN_PORT
      start_nchan x2
      PUBARGS=(--publish-to "127.0.0.1:$first" --via nchan)
      PATHARGS=(--path "/sub?channel={channel}")
      start_lb "127.0.0.1:$first" "127.0.0.1:$NCHAN_PORT"
      NODE_PIDS=$NCHAN_PIDS ;;
    pushpin)
      local pubs="" backends=() p
      for p in p1 p2 p3; do
        start_pushpin "$p"
        backends+=("127.0.0.1:$PP_PORT"); pubs+=",$PP_PUBLISH"
      done
      PUBARGS=(--publish-to "${pubs#,}")
      RATE=$(( OPEN_RATE < 1000 ? OPEN_RATE : 1000 ))
      start_lb "${backends[@]}"
      for p in $PP_RUNNERS; do NODE_PIDS="$NODE_PIDS $(tree "$p" | tr '\n' ' ')"; done ;;
  esac
  CPUGROUPS=(--cpu-group "nodes=$(echo $NODE_PIDS | commas)")
  [ -n "$BROKER_PIDS" ] && CPUGROUPS+=(--cpu-group "broker=$(echo $BROKER_PIDS | commas)")
  [ -n "$LB_PIDS" ] && CPUGROUPS+=(--cpu-group "balancer=$(echo $LB_PIDS | commas)")
  sleep 1
}

RUN=0
run() { # run CASE WORKLOAD MESSAGES
  RUN=$((RUN + 1))
  start "$1"
  local out
  out=$("$LOAD" fanout --to "$SUB" "${PUBARGS[@]}" "${PATHARGS[@]}" "${CPUGROUPS[@]}" \
      --channel-prefix "r$RUN" --subscribers "$N" --messages "$3" --rate "$RATE" \
      --workers 4 --settle-ms 1000 --grace-ms 10000 --timeout-s 120 \
      2>>"$D/load.err" || true)
  [ -n "$out" ] || out='{}'
  echo "{\"case\":\"$1\",\"workload\":\"$2\",\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"result\":$out}" >> "$RAW"
  echo "$1 $2: $(echo "$out" | head -c 240)" >&2
  stop_all
}

STARTED=$(date +%s)
for c in $CASES; do
  for r in $(seq 1 "$ONE_ROUNDS"); do run "$c" one 1; done
  for r in $(seq 1 "$BURST_ROUNDS"); do run "$c" burst "$BURST"; done
done
echo "cluster.sh: $(( $(date +%s) - STARTED )) s" >&2

table
