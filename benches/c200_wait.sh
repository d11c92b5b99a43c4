#!/usr/bin/env bash
# Keep-alive req/s at c=200: where the proxies' threads spend the run
# (issue 16). The proxy section of benches/uring_corepin.sh (same backend,
# same nginx proxy, same corepin configs, wrk -t1), with, per measured run:
#  - per thread of the proxy, of the nginx backend and of wrk: CPU run time,
#    run-queue wait (runnable, not running) and the rest of the wall time
#    (asleep: waiting on I/O) from /proc/PID/task/TID/schedstat, and the
#    voluntary/involuntary context switches;
#  - corepin's client connections per core and idle backend connections per
#    core (/metrics), established proxy->backend connections (ss);
#  - wrk --latency's percentiles and socket errors.
# usage: bash benches/c200_wait.sh [ROUNDS]; env BIN UPROXY WARM=2 DUR=6 NAMES FREE STALL PARK PARK_MIN
set -u
ROUNDS=${1:-2}
cd "$(dirname "$0")/.."
. benches/nginx_confs.sh
D=$(mktemp -d); chmod 755 "$D"
WARM=${WARM:-2}; DUR=${DUR:-6}; BIN=${BIN:-target/release/corepin}
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BEP=$(freeport); NPP=$(freeport); UPP=$(freeport)
nginx_backend_conf $D $BEP
nginx_proxy_conf $D $NPP $BEP
STARTED=""
cleanup() { for p in $STARTED; do kill $p 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
declare -A PORT PIDS CPORT
start_corepin() { # name data_path
  local port cport; port=$(freeport); cport=$(freeport)
  cat > $D/$1.toml <<EOC
listen = ["127.0.0.1:$port"]
control_http = "127.0.0.1:$cport"
control_socket = ""
workers = 2
data_path = "$2"
routes = ["* 127.0.0.1:$BEP"]
[log]
access_log = false
level = "warn"
[limits]
max_connections = 19000
[upstream]
max_idle_per_target = ${POOL:-1024}
EOC
  "$BIN" --config $D/$1.toml >$D/$1.out 2>$D/$1.err & local p=$!
  STARTED="$STARTED $p"; PIDS[$1]=$p; PORT[$1]=$port; CPORT[$1]=$cport
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$cport/health && break; sleep 0.1; done
}
# tid comm run_ns wait_ns vol invol cpu
snap() { local p t; for p in "$@"; do for t in /proc/$p/task/*; do
  echo "$(basename $t) $(tr ' ' '_' < $t/comm) $(cut -d' ' -f1,2 $t/schedstat) $(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' $t/status) $(awk '{print $39}' $t/stat)"
done; done 2>/dev/null; }
# machine-wide: packets dropped by the per-CPU input backlog (softnet_stat's
# second column, loopback goes through it), TCP segments retransmitted, RTO
# timeouts. Other processes on the machine count too: read the deltas
# against the other proxies' in the same round.
netc() { python3 - <<'PYN'
d = sum(int(l.split()[1], 16) for l in open("/proc/net/softnet_stat"))
def kv(path):
    ls = open(path).read().split("\n"); out = {}
    for a, b in zip(ls[0::2], ls[1::2]):
        if not a: continue
        ks, vs = a.split()[1:], b.split()[1:]
        out.update(zip(ks, vs))
    return out
s = kv("/proc/net/snmp"); n = kv("/proc/net/netstat")
print(d, s["RetransSegs"], n["TCPTimeouts"], n["TCPSynRetrans"], n["ListenOverflows"])
PYN
}
mid() { # name: state in the middle of the measured run
  local n=$1
  sleep $((DUR / 2))
  if [ -n "${CPORT[$n]:-}" ]; then
    curl -s http://127.0.0.1:${CPORT[$n]}/metrics | grep -E '^corepin_connections\{kind="http"|^corepin_upstream_idle_connections' | tr '\n' ' '
  fi
  echo "backend_estab=$(ss -Htn state established "( dport = :$BEP )" | wc -l)"
}
measure() { # round name c
  local r=$1 n=$2 c=$3 port=${PORT[$2]} pids=${PIDS[$2]} t0 t1 out w m
  timeout 10 wrk -t1 -c$c -d$WARM http://127.0.0.1:$port/index.html >/dev/null 2>&1
  snap $pids > $D/s0; snap $BEW > $D/b0
  netc > $D/n0; t0=$(date +%s%N)
  timeout 30 wrk -t1 -c$c -d$DUR --latency http://127.0.0.1:$port/index.html > $D/wrk.out 2>&1 & w=$!
  sleep 0.2; WRKP=$(pgrep -P $w wrk || echo $w); snap $WRKP > $D/w0; date +%s%N > $D/w0t
  # listen queues (accepted by the kernel, not yet by the server) every 20 ms
  ( while kill -0 $w 2>/dev/null; do
      ss -Hltn "( sport = :$port or sport = :$BEP )" | awk -v t=$(date +%s%N) '{print t, $2, $4}'; sleep 0.02
    done > $D/lq ) & LQ=$!
  m=$(mid $n)
  sleep $((DUR / 2 - 1)); snap $WRKP > $D/w1; date +%s%N > $D/w1t
  wait $w; wait $LQ
  cp $D/wrk.out $D/wrk.$r.$n.$c
  t1=$(date +%s%N); netc > $D/n1; snap $pids > $D/s1; snap $BEW > $D/b1
  python3 - "$r" "$n" "$c" "$t0" "$t1" "$D" "$m" "$(cut -d' ' -f1 /proc/loadavg)" "$BEP" <<'PY' | tee -a $D/lines.txt
import sys, re
r, n, c, t0, t1, d, m, load, bep = sys.argv[1:]
wall = (int(t1) - int(t0)) / 1e9
w = open(f"{d}/wrk.out").read()
reqs = int(re.search(r"(\d+) requests in", w).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))
lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", w, re.M))
la = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", w)
err = re.search(r"Socket errors:.*", w)
def load_snap(p):
    out = {}
    for l in open(p):
        f = l.split()
        if len(f) >= 7: out[f[0]] = (f[1], int(f[2]), int(f[3]), int(f[4]), int(f[5]), f[6])
    return out
def rows(a, b, span):
    a, b = load_snap(a), load_snap(b)
    res = []
    for tid, v in b.items():
        if tid not in a: continue
        u = a[tid]
        run = (v[1] - u[1]) / 1e9; wt = (v[2] - u[2]) / 1e9
        if run < 0.01 * span: continue
        res.append((v[0], run / span, wt / span, max(0, 1 - (run + wt) / span), v[3] - u[3], v[4] - u[4], v[5]))
    return res
def fmt(tag, rs, q):
    return " ".join(f"{tag}:{x[0]}@cpu{x[6]}[run={x[1]:.0%},rq={x[2]:.0%},sleep={x[3]:.0%},vcs/req={x[4]/q:.2f},ics/req={x[5]/q:.3f}]" for x in rs)
q = max(1, reqs)
n0 = [int(x) for x in open(f"{d}/n0").read().split()]; n1 = [int(x) for x in open(f"{d}/n1").read().split()]
nd = [b - a for a, b in zip(n0, n1)]
print(f"round={r} name={n} c={c} rps={rps:.0f} p50={lat.get('50')} p90={lat.get('90')} p99={lat.get('99')} "
      f"avg={la.group(1)} max={la.group(3)} err={(err.group(0).replace(' ', '_') if err else 0)} load={load}")
print(f"   softnet_drops={nd[0]} tcp_retrans={nd[1]} tcp_rto_timeouts={nd[2]} syn_retrans={nd[3]} listen_overflows={nd[4]}")
lq = {}
for l in open(f"{d}/lq"):
    t, qlen, a = l.split(); port = a.rsplit(":", 1)[1]
    x = lq.setdefault(port, [0, 0, 0]); x[0] += 1; x[1] += int(qlen) > 0; x[2] = max(x[2], int(qlen))
print("   listen queue (samples, non-empty, max): " + " ".join(f"{('backend' if p == sys.argv[9] else 'proxy')}={v}" for p, v in lq.items()))
print("   " + fmt("proxy", rows(f"{d}/s0", f"{d}/s1", wall), q))
print("   " + fmt("backend", rows(f"{d}/b0", f"{d}/b1", wall), q))
print("   " + fmt("wrk", rows(f"{d}/w0", f"{d}/w1", (int(open(f"{d}/w1t").read()) - int(open(f"{d}/w0t").read())) / 1e9), q))
print("   mid: " + m)
PY
}
echo "# $(date -Is) uptime: $(uptime)"
nginx -p $D -c $D/be.conf & BE=$!; STARTED="$STARTED $BE"
nginx -p $D/np -c $D/np.conf & NP=$!; STARTED="$STARTED $NP"
start_corepin glommio glommio
start_corepin uring uring
# "-free": the same corepin with its executors' CPU affinity widened to every
# CPU after start (taskset), so the kernel may migrate them as it does
# nginx's workers: an A/B of pinning.
for f in ${FREE:-}; do
  start_corepin $f-free $f; taskset -a -p -c 0-$(($(nproc) - 1)) ${PIDS[$f-free]} >/dev/null
done
names=${NAMES:-"nginx glommio uring"}
if [ -n "${UPROXY:-}" ]; then
  "$UPROXY" 127.0.0.1:$UPP 127.0.0.1:$BEP 2 >$D/uproxy.err 2>&1 & UP=$!; STARTED="$STARTED $UP"
  PIDS[uproxy]=$UP; PORT[uproxy]=$UPP; names="$names uproxy"
fi
sleep 1
PIDS[nginx]=$(pgrep -P $NP | tr '\n' ' '); PORT[nginx]=$NPP
BEW=$(pgrep -P $BE | tr '\n' ' ')
if [ -n "${PARK:-}" ]; then
  # PARK=1: c=200 only, corepin's data paths only (NAMES without nginx),
  # each measured run under benches/c200_park.py: every episode of at
  # least PARK_MIN ms (default 100) in which an executor got no CPU, with
  # the thread's kernel state, wait channel, system call and stack, the
  # other threads' states, and the Recv-Q/Send-Q of the process's client
  # and backend sockets sampled through it. LOAD=N adds N busy loops, each
  # in its own session (setsid: its own autogroup, as another engineer's
  # process would be), unpinned, killed by PID at the end: a stress
  # reproduction, not a clean measurement.
  for _ in $(seq ${LOAD:-0}); do setsid sh -c 'while :; do :; done' & STARTED="$STARTED $!"; done
  # NETLOAD=N: N more wrk -c50 (own sessions) against a second nginx
  # backend (one worker, own port): loopback traffic beside corepin's, as
  # other engineers' benchmarks make it.
  if [ "${NETLOAD:-0}" -gt 0 ]; then
    LBP=$(freeport); mkdir -p $D/load; nginx_backend_conf $D/load $LBP
    nginx -p $D/load -c $D/load/be.conf & STARTED="$STARTED $!"; sleep 0.5
    for _ in $(seq $NETLOAD); do
      setsid wrk -t1 -c50 -d3600 http://127.0.0.1:$LBP/index.html >/dev/null 2>&1 & STARTED="$STARTED $!"
    done
  fi
  for r in $(seq $ROUNDS); do
    for n in $names; do
      timeout 10 wrk -t1 -c200 -d$WARM http://127.0.0.1:${PORT[$n]}/index.html >/dev/null 2>&1
      echo "round=$r name=$n c=200 load=$(cut -d' ' -f1 /proc/loadavg) $(date +%T)"
      # PERF=DIR: the round's io_uring tracepoints (which fd each request
      # is on, when it completes) in DIR/r$r.$n.data, for perf script.
      [ -n "${PERF:-}" ] && { perf record -q -k CLOCK_MONOTONIC -e io_uring:io_uring_file_get -e io_uring:io_uring_complete \
        -e io_uring:io_uring_task_add -e io_uring:io_uring_poll_arm -p ${PIDS[$n]} -o $PERF/r$r.$n.data 2>/dev/null & PP=$!; sleep 0.3; }
      BACKEND_PIDS="$BEW" nice -n -10 python3 benches/c200_park.py ${PIDS[$n]} ${PORT[$n]} $BEP ${PARK_MIN:-100} -- \
        timeout 30 wrk -t1 -c200 -d$DUR --latency http://127.0.0.1:${PORT[$n]}/index.html
      [ -n "${PERF:-}" ] && { kill -INT $PP; wait $PP; }
    done
  done
  echo "# end: $(uptime)"; exit 0
fi
if [ -n "${STALL:-}" ]; then
  # STALL=1: c=200 only, each measured run under benches/c200_stall.py (a
  # 10 ms schedstat timeline of the proxy's and the backend's threads: the
  # longest stretch each thread got no CPU, runnable or asleep).
  for r in $(seq $ROUNDS); do
    set -- $names; k=$(( (r - 1) % $# )); order="${@:k+1} ${@:1:k}"
    for n in $order; do
      timeout 10 wrk -t1 -c200 -d$WARM http://127.0.0.1:${PORT[$n]}/index.html >/dev/null 2>&1
      echo "round=$r name=$n c=200 load=$(cut -d' ' -f1 /proc/loadavg)"
      python3 benches/c200_stall.py "$(echo ${PIDS[$n]} $BEW | tr ' ' ',')" -- \
        timeout 30 wrk -t1 -c200 -d$DUR http://127.0.0.1:${PORT[$n]}/index.html
    done
  done
  echo "# end: $(uptime)"; exit 0
fi
for r in $(seq $ROUNDS); do
  echo "# round $r: $(uptime)"
  set -- $names; k=$(( (r - 1) % $# )); order="${@:k+1} ${@:1:k}"
  for c in 50 200; do for n in $order; do measure $r $n $c; done; done
done
echo "# end: $(uptime)"; echo "# wrk outputs: $D"
