#!/usr/bin/env bash
# CPU per proxied request, side by side, on loopback (issue 16):
#   backend      nginx, 1 worker, a 23-byte static file (also measured direct)
#   nginx        nginx, 2 workers, keep-alive proxy (upstream keepalive 1024)
#   glommio      benches/uring_proxy --serve glommio: glommio 0.9 TcpStreams
#   uring        ... --serve uring: corepin's src/uring driver inside glommio
#   uring-self   ... --serve uring-self: the same driver as the main loop of a
#                minimal executor (no glommio)
#   uproxy       the raw io_uring probe, when UPROXY=/path/to/uproxy is given
#                (build it from a copy of ../shared/probes/uproxy)
# Each round, each proxy, c=50 and c=200: wrk -t1, WARM s warm-up, DUR s
# measured. Proxy CPU per request = run time of the proxy's threads
# (/proc/PID/task/*/schedstat) ÷ requests; utime+stime agree. Also req/s and
# the machine's busy share during the run (other engineers share it).
# usage: bash benches/uring_proxy.sh [ROUNDS]   env: WARM=2 DUR=6 QUIET=15 NAMES="..."
#        URING_CFG=... (passed to the proxy's environment)
# Free ports are picked at start; only processes this script starts are
# stopped, by PID. Results: $OUT (default: a temp dir) lines.txt + a median table.
set -u
ROUNDS=${1:-3}
cd "$(dirname "$0")/.."
. benches/nginx_confs.sh
D=$(mktemp -d); chmod 755 "$D"
OUT=${OUT:-$D}
WARM=${WARM:-2}; DUR=${DUR:-6}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null 2>&1 || { echo "needs wrk"; exit 1; }; }
command -v nginx >/dev/null || { echo "needs nginx"; exit 1; }

BIN=$(cargo build --release --bench uring_proxy --message-format=json 2>/dev/null \
  | python3 -c 'import sys,json
for l in sys.stdin:
  m=json.loads(l)
  if m.get("reason")=="compiler-artifact" and m.get("target",{}).get("name")=="uring_proxy" and m.get("executable"): print(m["executable"])' | tail -1)
[ -x "$BIN" ] || { echo "build failed"; exit 1; }

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BEP=$(freeport); NPP=$(freeport); UPP=$(freeport)
nginx_backend_conf $D $BEP
nginx_proxy_conf $D $NPP $BEP

STARTED=""
cleanup() { for p in $STARTED; do kill $p 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
nginx -p $D -c $D/be.conf & BE=$!; STARTED="$STARTED $BE"
nginx -p $D/np -c $D/np.conf & NP=$!; STARTED="$STARTED $NP"
declare -A PORT PIDS
start_proxy() { # name mode
  "$BIN" --serve "$2" 127.0.0.1:0 127.0.0.1:$BEP 2 >$D/$1.out 2>$D/$1.err & local p=$!
  STARTED="$STARTED $p"; PIDS[$1]=$p
  for _ in $(seq 100); do grep -q "listening on" $D/$1.out 2>/dev/null && break; sleep 0.1; done
  PORT[$1]=$(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' $D/$1.out | head -1)
}
start_proxy glommio glommio
start_proxy uring uring
start_proxy uring-self uring-self
NAMES_DEFAULT="backend nginx glommio uring uring-self"
if [ -n "${UPROXY:-}" ]; then
  "$UPROXY" 127.0.0.1:$UPP 127.0.0.1:$BEP 2 >$D/uproxy.err 2>&1 & UP=$!; STARTED="$STARTED $UP"
  PIDS[uproxy]=$UP; PORT[uproxy]=$UPP; NAMES_DEFAULT="$NAMES_DEFAULT uproxy"
fi
sleep 1
PIDS[backend]=$(pgrep -P $BE | tr '\n' ' '); PORT[backend]=$BEP
PIDS[nginx]=$(pgrep -P $NP | tr '\n' ' '); PORT[nginx]=$NPP
echo "# $(date -Is) $(uname -r) nproc=$(nproc) $(nginx -v 2>&1)"
echo "# uptime: $(uptime)"
for n in glommio uring uring-self; do echo "# $n: port ${PORT[$n]} $(sort -u $D/$n.err | tr '\n' ' ')"; done
for n in ${!PORT[@]}; do
  r=$(curl -s --max-time 3 http://127.0.0.1:${PORT[$n]}/index.html)
  [ "$r" = "hello from the backend" ] || echo "# WARNING: $n answered '$r'"
done

runns() { local p; for p in "$@"; do cat /proc/$p/task/*/schedstat 2>/dev/null; done | awk '{s+=$1} END {printf "%.0f\n", s}'; }
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
quiet() { # wait (bounded: QUIET seconds, default 15) for the machine to be under 30% busy
  local k a b c d
  for k in $(seq ${QUIET:-15}); do
    read a b < <(busy); sleep 1; read c d < <(busy)
    [ $(( 100 * (c - a) / (d - b + 1) )) -lt 30 ] && return 0
  done
}

measure() { # round name conns
  local r=$1 n=$2 c=$3 port=${PORT[$2]} pids=${PIDS[$2]} out n0 n1 reqs rps b0 b1 t0 t1
  quiet
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
print(f"round={r} name={n} c={c} rps={rps} reqs={q} proxy_us={us:.2f} machine_busy={mb:.0f}% load={load} err={err}")
PY
}

read -ra NAMES <<< "${NAMES:-$NAMES_DEFAULT}"
for r in $(seq $ROUNDS); do
  echo "# round $r: $(uptime)"
  k=$(( (r-1) % ${#NAMES[@]} ))
  for c in 50 200; do
    for j in $(seq 0 $(( ${#NAMES[@]} - 1 ))); do
      measure $r ${NAMES[$(( (j+k) % ${#NAMES[@]} ))]} $c
    done
  done
done
echo "# end: $(uptime)"
python3 - $OUT/lines.txt <<'PY'
import sys, statistics as st, collections
rows=collections.defaultdict(list)
for l in open(sys.argv[1]):
    d=dict(kv.split("=",1) for kv in l.split())
    rows[(d["name"],int(d["c"]))].append(d)
print(f"{'name':11} {'c':>4} {'n':>2} {'req/s median [min-max]':>26} {'CPU us/req median [min-max]':>30} {'vs nginx':>8}")
for (n,c),v in sorted(rows.items(), key=lambda kv:(kv[0][1],kv[0][0])):
    rp=sorted(float(x['rps']) for x in v); pu=sorted(float(x['proxy_us']) for x in v)
    ng={x['round']:float(x['proxy_us']) for x in rows.get(('nginx',c),[])}
    rat=[float(x['proxy_us'])/ng[x['round']] for x in v if x['round'] in ng]
    rs=f"{st.median(rat):.2f}" if rat and n!='backend' else "-"
    print(f"{n:11} {c:>4} {len(v):>2} {st.median(rp):>9.0f} [{rp[0]:>6.0f}-{rp[-1]:>6.0f}] {st.median(pu):>13.2f} [{pu[0]:>6.2f}-{pu[-1]:>6.2f}] {rs:>8}")
print("CPU us/req: run time of the proxy's threads / requests (backend: nginx's own); vs nginx: median of per-round ratios")
PY
cleanup; trap - EXIT
