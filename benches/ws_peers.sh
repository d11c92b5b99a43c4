#!/usr/bin/env bash
# WebSocket passthrough echo through corepin (both data paths), nginx and
# Pushpin, in one run: round trips/s and each proxy's CPU time per round
# trip (the run time of all its processes' threads, from
# /proc/PID/task/*/schedstat, over the measured run ÷ round trips).
# corepin-load ws-echo, 50 connections, 16-byte messages, to corepin-load's
# echo server; a warm-up of WARM s, then DUR s measured; the peers' order
# rotates each round.
#
# usage: flock /work/wt/bench.lock bash benches/ws_peers.sh [ROUNDS]
# env: BIN (corepin, default target/release/corepin), LOAD_BIN, DUR=5, WARM=2
# Prints one line per run, then the medians and the ratios per round.
set -u
source "$(dirname "$0")/lib.sh"
ROUNDS=${1:-3}; DUR=${DUR:-5}; WARM=${WARM:-2}
BIN=${BIN:-$ROOT/target/release/corepin}
# Measures the binaries as built: no cargo build while holding the lock.
NO_BUILD=${NO_BUILD:-1} bench_init
LOAD=${LOAD_BIN:-$ROOT/target/release/corepin-load}
read -r URING_PORT URING_CONTROL <<< "$(free_ports 2)"

"$LOAD" echo-server "127.0.0.1:$ECHO_PORT" > /dev/null & PIDS+=($!)
wait_port "$ECHO_PORT"
start_nginx_proxy
PUSHPIN_LIMITS=raised start_pushpin "* 127.0.0.1:$ECHO_PORT"
corepin_on() { # data_path port control_port -> pid
  printf 'data_path = "%s"\n[log]\naccess_log = false\n' "$1" > "$BENCH_DIR/c-$1.toml"
  "$BIN" --config "$BENCH_DIR/c-$1.toml" --listen "127.0.0.1:$2" --control-http "127.0.0.1:$3" \
    --control-socket "" --workers 2 --log-level warn --route "* 127.0.0.1:$ECHO_PORT" \
    > "$BENCH_DIR/c-$1.out" 2> "$BENCH_DIR/c-$1.err" & PIDS+=($!)
  wait_port "$2"
}
corepin_on glommio "$COREPIN_PORT" "$COREPIN_CONTROL_PORT"; GLOMMIO_PID=${PIDS[-1]}
corepin_on uring "$URING_PORT" "$URING_CONTROL"; URING_PID=${PIDS[-1]}
NGINX_PID=$(cat "$BENCH_DIR/nginx-proxy/nginx.pid")

declare -A PORT TREE
PORT[nginx]=$NGINX_PORT; PORT[pushpin]=$PUSHPIN_PORT
PORT[glommio]=$COREPIN_PORT; PORT[uring]=$URING_PORT
TREE[nginx]=$NGINX_PID; TREE[pushpin]="$PUSHPIN_PID $ZURL_PID"
TREE[glommio]=$GLOMMIO_PID; TREE[uring]=$URING_PID
runns() { # the run time (ns) of every thread of these processes and their descendants
  local p
  for p in $(descendants $1); do cat /proc/$p/task/*/schedstat 2>/dev/null; done \
    | awk '{s+=$1} END {printf "%.0f\n", s}'
}
sleep 1
OUT=$BENCH_DIR/lines.txt
for r in $(seq 1 "$ROUNDS"); do
  set -- nginx pushpin glommio uring; k=$(( (r - 1) % 4 )); order="${@:k+1} ${@:1:k}"
  for n in $order; do
    timeout 20 "$LOAD" ws-echo --to 127.0.0.1:${PORT[$n]} --path /echo --conns 50 --seconds $WARM \
      > /dev/null 2>&1
    n0=$(runns "${TREE[$n]}")
    out=$(timeout 60 "$LOAD" ws-echo --to 127.0.0.1:${PORT[$n]} --path /echo --conns 50 \
      --seconds $DUR --size 16 2>>"$BENCH_DIR/load.err")
    n1=$(runns "${TREE[$n]}")
    python3 "$(dirname "$0")/ws_echo_line.py" "" "$r" "$n" "$n0" "$n1" "$(cut -d' ' -f1 /proc/loadavg)" "$out" | tee -a $OUT
  done
done
python3 - "$OUT" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    d = dict(kv.split("=", 1) for kv in line.split())
    rows[d["name"]][d["round"]] = (float(d["rps"]), float(d["cpu_us"]))
print("# medians: round trips/s, CPU us per round trip; ratios (per-round median) vs nginx and Pushpin")
for n, v in rows.items():
    rps = statistics.median(x[0] for x in v.values())
    cpu = statistics.median(x[1] for x in v.values())
    def ratio(peer, i, inv=False):
        rs = [(x[i] / rows[peer][k][i]) if not inv else (rows[peer][k][i] / x[i])
              for k, x in v.items() if k in rows.get(peer, {})]
        return statistics.median(rs) if rs else float("nan")
    print(f"{n:8} rps={rps:.0f} cpu_us={cpu:.2f} rate/nginx={ratio('nginx', 0):.2f} "
          f"rate/pushpin={ratio('pushpin', 0):.2f} cpu/nginx={ratio('nginx', 1):.2f} "
          f"cpu/pushpin={ratio('pushpin', 1):.3f}")
PY
