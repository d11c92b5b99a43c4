#!/usr/bin/env bash
# corepin's two data paths side by side (issue 16): CPU per proxied request
# and CPU per fan-out delivery, with nginx and the raw io_uring probe as
# yardsticks for the proxy.
#
# proxy   backend: nginx, 1 worker, a 23-byte file. Proxies: nginx (2 workers,
#         upstream keepalive), corepin --data-path glommio, corepin
#         --data-path uring (both --workers 2, access log off), and the raw
#         probe of ../shared/probes/uproxy when UPROXY=/path/to/its/build.
#         wrk -t1, c=50 and c=200, WARM s warm-up, DUR s measured; CPU per
#         request = run time of the proxy's threads (schedstat) / requests.
# fanout  corepin (each data path, --workers 2): SUBS HTTP-stream
#         subscribers on one channel, MSGS publishes of 64 bytes (corepin-load
#         fanout, each publish waiting until every subscriber holds);
#         corepin's CPU from the first publish to the last delivery /
#         deliveries.
# one15k  one publish to BIG (15,000) HTTP-stream subscribers of one
#         channel: time from the publish to the last delivery (corepin-load
#         fanout, --messages 1, subscribers opened at OPEN_RATE/s over
#         127.0.0.2-254 by the load tool) for nchan (PEERS.md's config, 2
#         workers) and each corepin (--workers 2); also the server's CPU per
#         delivery.
# ws      WebSocket passthrough echo: corepin-load ws-echo (50 connections,
#         DUR s, 16-byte messages) through nginx (2 workers) and each corepin
#         to corepin-load's echo server; round trips/s and the proxy's CPU
#         per round trip.
# churn   connection churn, a new connection per request (corepin-load proxy
#         --per-conn 1, CHURN_CONNS connections, 1 thread, DUR s) through
#         nginx (2 workers) and each corepin to the nginx backend: requests/s,
#         CPU per request (= per accepted connection) and latency p50/p99/
#         p99.9. With B_ENV="VAR=value" a third corepin on the uring path
#         runs with that variable set ("uring-b"): an A/B of one binary; with
#         B_BIN=path, "uring-b" runs that build instead (an A/B of two)
#         (also in the one15k and fanout sections; ONE15K_PEERS picks
#         one15k's peers, default "nchan glommio uring").
# memory  each corepin: RSS of the process after IDLE HTTP-stream
#         subscribers are held, minus before, over IDLE (KiB per idle
#         subscriber, userspace and the kernel's page tables as RSS sees it).
# usage: bash benches/uring_corepin.sh [ROUNDS]
# env: BIN=(a corepin build; default: target/release/corepin, built) WARM=2 DUR=6 SUBS=4000 MSGS=20 IDLE=10000 UPROXY=... LOAD=(a
#      corepin-load build; default target/release/corepin-load, built)
#      SECTIONS="proxy ws fanout memory one15k" (churn on request) BIG=15000
#      OPEN_RATE=4000 CHURN_CONNS=50 B_ENV= NO_BUILD=1 (use target/release as it is)
# Charts: benches/charts.py draws $OUT/lines.txt as SVGs into CHARTS (default
# $OUT; benches/results for the committed ones).
# Only processes this script starts are stopped, by PID; ports are free
# ones picked at start. Lines: $OUT/lines.txt (default: a temp dir).
set -u
ROUNDS=${1:-3}
cd "$(dirname "$0")/.."
. benches/nginx_confs.sh
D=$(mktemp -d); chmod 755 "$D"
OUT=${OUT:-$D}
WARM=${WARM:-2}; DUR=${DUR:-6}; SUBS=${SUBS:-4000}; MSGS=${MSGS:-20}; IDLE=${IDLE:-10000}
CHURN_CONNS=${CHURN_CONNS:-50}; B_ENV=${B_ENV:-}; B_BIN=${B_BIN:-}
SECTIONS=${SECTIONS:-"proxy ws fanout memory one15k"}
BIG=${BIG:-15000}; OPEN_RATE=${OPEN_RATE:-4000}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
command -v nginx >/dev/null || { echo "needs nginx"; exit 1; }
LOAD=${LOAD:-target/release/corepin-load}
if [ -z "${BIN:-}" ]; then
  BIN=target/release/corepin
  [ -n "${NO_BUILD:-}" ] || cargo build --release --bin corepin -q || { echo "build failed"; exit 1; }
fi
[ -x "$LOAD" ] || cargo build --release -p corepin-load -q || { echo "build failed"; exit 1; }

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BEP=$(freeport); NPP=$(freeport); UPP=$(freeport); EP=$(freeport)
nginx_backend_conf $D $BEP
nginx_proxy_conf $D $NPP $BEP "location /echo { proxy_pass http://127.0.0.1:$EP; proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \"upgrade\"; }"

STARTED=""
cleanup() { for p in $STARTED; do kill $p 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
declare -A PORT PIDS CPORT

start_corepin() { # name data_path [VAR=value]
  local port cport
  port=$(freeport); cport=$(freeport)
  cat > $D/$1.toml <<EOF
listen = ["127.0.0.1:$port"]
control_http = "127.0.0.1:$cport"
control_socket = ""
workers = 2
data_path = "$2"
routes = ["*,path_beg=/stream test", "*,path_beg=/echo 127.0.0.1:$EP", "* 127.0.0.1:$BEP"]
[log]
access_log = false
level = "warn"
[limits]
max_connections = 19000
# As nginx's "keepalive 1024": at c=200 the default 64 idle connections
# per target and core would close and reopen backend connections.
[upstream]
max_idle_per_target = ${POOL:-1024}
EOF
  local bin=$BIN; [ "$1" = uring-b ] && bin=${B_BIN:-$BIN}
  env ${3:-} "$bin" --config $D/$1.toml >$D/$1.out 2>$D/$1.err & local p=$!
  STARTED="$STARTED $p"; PIDS[$1]=$p; PORT[$1]=$port; CPORT[$1]=$cport
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$cport/health && break; sleep 0.1; done
}

runns() { local p; for p in "$@"; do cat /proc/$p/task/*/schedstat 2>/dev/null; done | awk '{s+=$1} END {printf "%.0f\n", s}'; }
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

measure() { # round name conns
  local r=$1 n=$2 c=$3 port=${PORT[$2]} pids=${PIDS[$2]} out n0 n1 reqs rps b0 b1 t0 t1
  timeout 10 wrk -t1 -c$c -d$WARM http://127.0.0.1:$port/index.html >/dev/null 2>&1
  n0=$(runns $pids); read b0 t0 < <(busy)
  out=$(timeout 30 wrk -t1 -c$c -d$DUR http://127.0.0.1:$port/index.html 2>&1)
  n1=$(runns $pids); read b1 t1 < <(busy)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local err=$(echo "$out" | awk '/Socket errors|Non-2xx/ {printf "%s;", $0}' | tr ' ' '_')
  python3 - "$r" "$n" "$c" "$rps" "$reqs" "$n0" "$n1" "$b0" "$b1" "$t0" "$t1" "${err:-0}" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY' | tee -a $OUT/lines.txt
import sys
r,n,c,rps,reqs,n0,n1,b0,b1,t0,t1,err,load=sys.argv[1:]
q=int(reqs or 0) or 1
us=(int(n1)-int(n0))/1e3/q
mb=100*(int(b1)-int(b0))/max(1,int(t1)-int(t0))
print(f"section=proxy round={r} name={n} c={c} rps={rps} reqs={q} cpu_us={us:.2f} machine_busy={mb:.0f}% load={load} err={err}")
PY
}

fanout() { # round name
  local r=$1 n=$2 out
  out=$("$LOAD" fanout --to 127.0.0.1:${PORT[$n]} --publish-to 127.0.0.1:${CPORT[$n]} \
      --lockstep 127.0.0.1:${CPORT[$n]} --kind stream --channels 1 --channel-prefix "f$r$n" \
      --subscribers $SUBS --messages $MSGS --size 64 --rate 4000 --settle-ms 500 --grace-ms 1000 \
      --timeout-s 60 --cpu-pids ${PIDS[$n]} 2>>$D/load.err)
  python3 - "$r" "$n" "$(cut -d' ' -f1 /proc/loadavg)" "$out" <<'PY' | tee -a $OUT/lines.txt
import json, sys
r, n, load, text = sys.argv[1:]
try:
    d = json.loads(text)
except Exception:
    d = {}
print(f"section=fanout round={r} name={n} subs={d.get('subscribers', d.get('held', '?'))} "
      f"delivered={d.get('delivered')} lost={d.get('lost')} "
      f"cpu_us={d.get('server_cpu_us_per_delivery', float('nan')):.3f} "
      f"first_ms={d.get('first_publish_to_first_delivery_ms', float('nan')):.1f} "
      f"last_ms={d.get('first_publish_to_last_delivery_ms', float('nan')):.1f} load={load}")
PY
}

wsecho() { # round name
  local r=$1 n=$2 port=${PORT[$2]} pids=${PIDS[$2]} out n0 n1
  timeout 10 "$LOAD" ws-echo --to 127.0.0.1:$port --path /echo --conns 50 --seconds $WARM >/dev/null 2>&1
  n0=$(runns $pids)
  out=$(timeout 60 "$LOAD" ws-echo --to 127.0.0.1:$port --path /echo --conns 50 --seconds $DUR --size 16 2>>$D/load.err)
  n1=$(runns $pids)
  python3 "$(dirname "$0")/ws_echo_line.py" section=ws "$r" "$n" "$n0" "$n1" "$(cut -d' ' -f1 /proc/loadavg)" "$out" | tee -a $OUT/lines.txt
}

churn() { # round name: a new connection per request
  local r=$1 n=$2 port=${PORT[$2]} pids=${PIDS[$2]} out n0 n1
  timeout 20 "$LOAD" proxy --to 127.0.0.1:$port --path /index.html --conns $CHURN_CONNS --threads 1 \
    --per-conn 1 --warmup-s 0 --seconds $WARM >/dev/null 2>>$D/load.err
  n0=$(runns $pids)
  out=$(timeout 60 "$LOAD" proxy --to 127.0.0.1:$port --path /index.html --conns $CHURN_CONNS --threads 1 \
    --per-conn 1 --warmup-s 0 --seconds $DUR 2>>$D/load.err)
  n1=$(runns $pids)
  python3 - "$r" "$n" "$n0" "$n1" "$(cut -d' ' -f1 /proc/loadavg)" "$out" <<'PY' | tee -a $OUT/lines.txt
import json, sys
r, n, n0, n1, load, text = sys.argv[1:]
try:
    d = json.loads(text)
except Exception:
    d = {}
q = d.get("requests") or 0
lat = d.get("latency_ms") or {}
us = (int(n1) - int(n0)) / 1e3 / q if q else float("nan")
ok = d.get("ok_responses")
print(f"section=churn round={r} name={n} c={d.get('connections')} rps={d.get('requests_per_sec', float('nan')):.0f} "
      f"reqs={q} ok={ok} cpu_us={us:.2f} p50={lat.get('p50')} p99={lat.get('p99')} p999={lat.get('p999')} "
      f"max={lat.get('max')} errors={sum((d.get('errors') or {}).values())} load={load}")
PY
}

start_nchan() { # sets PORT[nchan], PIDS[nchan]
  local port d=$D/nchan; port=$(freeport)
  nchan_conf $d $port
  nginx -p $d -c $d/nginx.conf & local m=$!; STARTED="$STARTED $m"
  for _ in $(seq 50); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/pub?channel=x" && break; sleep 0.1; done
  PORT[nchan]=$port; PIDS[nchan]=$(pgrep -P $m | tr '\n' ' ')
}

one15k() { # round name
  local r=$1 n=$2 out args pids
  if [ $n = nchan ]; then
    args=(--publish-to 127.0.0.1:${PORT[nchan]} --via nchan --path "/sub?channel={channel}")
  else
    args=(--publish-to 127.0.0.1:${CPORT[$n]})
  fi
  pids=$(echo ${PIDS[$n]} | tr ' ' ',')
  out=$("$LOAD" fanout --to 127.0.0.1:${PORT[$n]} "${args[@]}" --kind stream --channels 1 \
      --channel-prefix "b$r$n" --subscribers $BIG --workers 2 --messages 1 --size 64 \
      --rate $OPEN_RATE --settle-ms 1000 --grace-ms 3000 --timeout-s 90 \
      --cpu-pids $pids 2>>$D/load.err)
  python3 - "$r" "$n" "$(cut -d' ' -f1 /proc/loadavg)" "$out" <<'PY' | tee -a $OUT/lines.txt
import json, sys
r, n, load, text = sys.argv[1:]
try:
    d = json.loads(text)
except Exception:
    d = {}
lat = d.get("latency_ms") or {}
print(f"section=one15k round={r} name={n} subs={d.get('subscribers', d.get('held', '?'))} "
      f"delivered={d.get('delivered')} lost={d.get('lost')} "
      f"cpu_us={d.get('server_cpu_us_per_delivery', float('nan')):.3f} "
      f"first_ms={d.get('first_publish_to_first_delivery_ms', float('nan')):.1f} "
      f"p50_ms={lat.get('p50')} "
      f"last_ms={d.get('first_publish_to_last_delivery_ms', float('nan')):.1f} load={load}")
PY
}

idlemem() { # round name
  local r=$1 n=$2 pid=${PIDS[$2]} before after ready=$D/ready.$1.$2
  sleep 0.5
  before=$(awk '/^VmRSS:/ {print $2}' /proc/$pid/status)
  "$LOAD" subscribe --to 127.0.0.1:${PORT[$n]} --kind stream --channel-prefix idle --subscribers $IDLE \
    --rate 4000 --hold-s 3 --ready-file $ready >$D/hold.json 2>>$D/load.err & local h=$!
  for _ in $(seq 600); do [ -f $ready ] && break; sleep 0.1; done
  sleep 1
  after=$(awk '/^VmRSS:/ {print $2}' /proc/$pid/status)
  wait $h
  python3 - "$r" "$n" "$before" "$after" "$IDLE" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY' | tee -a $OUT/lines.txt
import sys
r, n, b, a, k, load = sys.argv[1:]
print(f"section=memory round={r} name={n} c={k} kib={(int(a)-int(b))/int(k):.3f} rss_before={b} rss_after={a} load={load}")
PY
}

echo "# $(date -Is) $(uname -r) nproc=$(nproc) $(nginx -v 2>&1)"
echo "# uptime: $(uptime)"
for r in $(seq $ROUNDS); do
  echo "# round $r: $(uptime)"
  for s in $SECTIONS; do
    case $s in
      proxy)
        nginx -p $D -c $D/be.conf & BE=$!; STARTED="$STARTED $BE"
        nginx -p $D/np -c $D/np.conf & NP=$!; STARTED="$STARTED $NP"
        start_corepin glommio glommio
        start_corepin uring uring
        names="nginx glommio uring"
        if [ -n "${UPROXY:-}" ]; then
          "$UPROXY" 127.0.0.1:$UPP 127.0.0.1:$BEP 2 >$D/uproxy.err 2>&1 & UP=$!; STARTED="$STARTED $UP"
          PIDS[uproxy]=$UP; PORT[uproxy]=$UPP; names="$names uproxy"
        fi
        sleep 1
        PIDS[nginx]=$(pgrep -P $NP | tr '\n' ' '); PORT[nginx]=$NPP
        for n in $names; do
          a=$(curl -s --max-time 3 http://127.0.0.1:${PORT[$n]}/index.html)
          [ "$a" = "hello from the backend" ] || echo "# WARNING: $n answered '$a'"
        done
        # Rotate the order each round (a loaded machine drifts).
        set -- $names; k=$(( (r - 1) % $# )); order="${@:k+1} ${@:1:k}"
        for c in 50 200; do for n in $order; do measure $r $n $c; done; done
        cleanup; STARTED="" ;;
      ws)
        "$LOAD" echo-server 127.0.0.1:$EP >/dev/null 2>&1 & ES=$!; STARTED="$STARTED $ES"
        nginx -p $D -c $D/be.conf & BE=$!; STARTED="$STARTED $BE"
        nginx -p $D/np -c $D/np.conf & NP=$!; STARTED="$STARTED $NP"
        start_corepin glommio glommio
        start_corepin uring uring
        sleep 1
        PIDS[nginx]=$(pgrep -P $NP | tr '\n' ' '); PORT[nginx]=$NPP
        set -- nginx glommio uring; k=$(( (r - 1) % 3 )); order="${@:k+1} ${@:1:k}"
        for n in $order; do wsecho $r $n; done
        cleanup; STARTED="" ;;
      churn)
        nginx -p $D -c $D/be.conf & BE=$!; STARTED="$STARTED $BE"
        nginx -p $D/np -c $D/np.conf & NP=$!; STARTED="$STARTED $NP"
        start_corepin glommio glommio
        start_corepin uring uring
        names="nginx glommio uring"
        if [ -n "$B_ENV$B_BIN" ]; then start_corepin uring-b uring "$B_ENV"; names="$names uring-b"; fi
        sleep 1
        PIDS[nginx]=$(pgrep -P $NP | tr '\n' ' '); PORT[nginx]=$NPP
        set -- $names; k=$(( (r - 1) % $# )); order="${@:k+1} ${@:1:k}"
        for n in $order; do churn $r $n; done
        cleanup; STARTED="" ;;
      memory)
        for n in glommio uring; do
          start_corepin $n $n
          idlemem $r $n
          cleanup; STARTED=""
        done ;;
      one15k)
        names="${ONE15K_PEERS:-nchan glommio uring}"
        [ -n "$B_ENV$B_BIN" ] && names="$names uring-b"
        set -- $names; k=$(( (r - 1) % $# )); order="${@:k+1} ${@:1:k}"
        for n in $order; do
          case $n in
            nchan) start_nchan ;;
            uring-b) start_corepin uring-b uring "$B_ENV" ;;
            *) start_corepin $n $n ;;
          esac
          one15k $r $n
          cleanup; STARTED=""
        done ;;
      fanout)
        names="glommio uring"; [ -n "$B_ENV$B_BIN" ] && names="$names uring-b"
        for n in $names; do
          if [ $n = uring-b ]; then start_corepin uring-b uring "$B_ENV"; else start_corepin $n $n; fi
          fanout $r $n
          cleanup; STARTED=""
        done ;;
    esac
  done
done
echo "# end: $(uptime)"
python3 - $OUT/lines.txt <<'PY'
import sys, statistics as st, collections
rows = collections.defaultdict(list)
for l in open(sys.argv[1]):
    d = dict(kv.split("=", 1) for kv in l.split())
    rows[(d["section"], d["name"], d.get("c", "-"))].append(d)
def med(v, k):
    xs = sorted(float(x[k]) for x in v if x.get(k) not in (None, "None", "nan"))
    return (st.median(xs), xs[0], xs[-1]) if xs else (float("nan"),) * 3
print(f"{'section':7} {'name':8} {'c':>4} {'n':>2} {'CPU us median [min-max]':>26} {'vs nginx':>8} {'req/s':>8}")
RATE = ("proxy", "ws", "churn")
for (s, n, c), v in sorted(rows.items()):
    m, lo, hi = med(v, "kib" if s == "memory" else "cpu_us")
    if s in ("one15k", "fanout"):
        lm = med(v, "last_ms")
        ng = {x["round"]: float(x["last_ms"]) for x in rows.get((s, "nchan", c), [])}
        rs = [ng[x["round"]] / float(x["last_ms"]) for x in v if x["round"] in ng and float(x["last_ms"]) > 0]
        print(f"{s:7} {n:8} last delivery ms median {lm[0]:.1f} [{lm[1]:.1f}-{lm[2]:.1f}]"
              + (f", nchan's time / this one's (median per round) {st.median(rs):.2f}" if rs and n != "nchan" else ""))
    ratio = "-"
    if s in RATE and n != "nginx":
        ng = {x["round"]: float(x["cpu_us"]) for x in rows.get((s, "nginx", c), [])}
        rs = [float(x["cpu_us"]) / ng[x["round"]] for x in v if x["round"] in ng]
        ratio = f"{st.median(rs):.2f}" if rs else "-"
    rps = f"{med(v, 'rps')[0]:.0f}" if s in RATE else "-"
    print(f"{s:7} {n:8} {c:>4} {len(v):>2} {m:>9.3f} [{lo:.3f}-{hi:.3f}] {ratio:>8} {rps:>8}")
print("CPU: the process's threads' run time / requests (proxy; churn: one connection each), / round trips (ws) or / deliveries (fanout);")
print("memory: KiB RSS per idle stream subscriber (c = subscribers); vs nginx: median of per-round CPU ratios")
PY
bash benches/charts.sh uring "$OUT/lines.txt" "${CHARTS:-$OUT}" || echo "# (no charts drawn)"
cleanup; trap - EXIT
