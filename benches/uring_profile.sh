#!/usr/bin/env bash
# Where a proxied request's CPU goes (issue 16): one corepin on the chosen
# data path behind wrk, an nginx backend (1 worker, a 23-byte file), and
# during the measured run one of:
#   cpu     CPU µs per request (run time of corepin's threads / requests)
#           and the ring's counters per request (from the exit log)
#   perf    `perf record` (cpu-clock) of corepin, then the top symbols and
#           the samples grouped: kernel, glommio, the ring driver, the
#           allocator, libc copies, corepin's codec, the rest of corepin
#           (as a share of the samples and as CPU µs per request)
#   callers `perf record --call-graph dwarf` (3 s): who calls malloc/free
#   strace  `strace -c -f` of corepin: syscalls per request
#   children `perf record -g` (kernel call chains), the top symbols with
#           their callees' samples included: where the kernel time goes
#           (sends, receives, the park: io_cqring_wait, membarrier, ...)
# usage: bash benches/uring_profile.sh [uring|glommio|nginx|uproxy] [cpu|perf|callers|strace|children] [CONNS]
#   nginx: nginx as the proxy (2 workers, upstream keepalive), the reference;
#   uproxy: the raw io_uring probe (UPROXY=its build), the floor.
# env: DUR=6 WARM=2 WORKERS=2 BIN=target/release/corepin UPROXY=(a build of
#      ../shared/probes/uproxy: profiled instead of corepin when NAME=uproxy)
# Only processes this script starts are stopped, by PID; ports are free ones.
set -u
PATH_KIND=${1:-uring}; MODE=${2:-cpu}; C=${3:-50}
cd "$(dirname "$0")/.."
. benches/nginx_confs.sh
D=$(mktemp -d); chmod 755 "$D"
DUR=${DUR:-6}; WARM=${WARM:-2}; WORKERS=${WORKERS:-2}
BIN=${BIN:-target/release/corepin}
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BEP=$(freeport); PORT=$(freeport); CPORT=$(freeport)
nginx_backend_conf $D $BEP
cat > $D/c.toml <<EOF
listen = ["127.0.0.1:$PORT"]
control_http = "127.0.0.1:$CPORT"
control_socket = ""
workers = $WORKERS
data_path = "$PATH_KIND"
routes = ["* 127.0.0.1:$BEP"]
[log]
access_log = false
level = "info"
# As nginx's "keepalive 1024": at c=200 the default 64 idle connections
# per target and core would close and reopen backend connections.
[upstream]
max_idle_per_target = ${POOL:-1024}
EOF
STARTED=""
cleanup() { for p in $STARTED; do kill $p 2>/dev/null; done; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
nginx -p $D -c $D/be.conf & STARTED="$STARTED $!"
if [ "$PATH_KIND" = uproxy ]; then
  "$UPROXY" 127.0.0.1:$PORT 127.0.0.1:$BEP $WORKERS >$D/c.err 2>&1 & P=$!
elif [ "$PATH_KIND" = nginx ]; then
  mkdir -p $D/np/logs
  cat > $D/np.conf <<EOF
daemon off; pid $D/np.pid; error_log $D/np/logs/error.log;
worker_processes $WORKERS; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  upstream backend { server 127.0.0.1:$BEP; keepalive 1024; }
  server { listen 127.0.0.1:$PORT backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
  nginx -p $D/np -c $D/np.conf & P=$!
else
  "$BIN" --config $D/c.toml >$D/c.out 2>$D/c.err & P=$!
fi
STARTED="$STARTED $P"
sleep 1
curl -s --max-time 3 http://127.0.0.1:$PORT/index.html >/dev/null || { echo "no answer"; cat $D/c.err; exit 1; }
PIDS=$P; [ "$PATH_KIND" = nginx ] && PIDS="$P $(pgrep -P $P | tr '\n' ' ')"
runns() { local p; for p in $PIDS; do cat /proc/$p/task/*/schedstat 2>/dev/null; done | awk '{s+=$1} END {printf "%.0f\n", s}'; }
timeout 10 wrk -t1 -c$C -d$WARM http://127.0.0.1:$PORT/index.html >/dev/null 2>&1
n0=$(runns)
case $MODE in
  perf) perf record -F 2000 -p $(echo $PIDS | tr " " ",") -o $D/perf.data -- sleep $DUR >/dev/null 2>&1 & X=$! ;;
  callers) perf record -F 500 --call-graph dwarf,8192 -p $P -o $D/perf.data -- sleep 3 >/dev/null 2>&1 & X=$! ;;
  strace) strace -c -f -p $P -o $D/strace.txt & X=$! ;;
  children) perf record -F 2000 -g -p $(echo $PIDS | tr " " ",") -o $D/perf.data -- sleep $DUR >/dev/null 2>&1 & X=$! ;;
  *) X="" ;;
esac
out=$(timeout 30 wrk -t1 -c$C -d$DUR http://127.0.0.1:$PORT/index.html 2>&1)
n1=$(runns)
[ -n "$X" ] && { [ $MODE = strace ] && kill -INT $X; wait $X; }
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
echo "$PATH_KIND c=$C reqs=$reqs rps=$rps cpu_us=$(python3 -c "print(f'{($n1-$n0)/1e3/max(1,$reqs):.2f}')") load=$(cut -d' ' -f1 /proc/loadavg)"
case $MODE in
  perf) perf report -i $D/perf.data --no-children --sort symbol --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -${TOP:-45}
        cpu=$(python3 -c "print(($n1-$n0)/1e3/max(1,$reqs))")
        echo "# samples grouped (share, and CPU us per request at $cpu us):"
        perf report -i $D/perf.data --no-children --sort dso,symbol --stdio 2>/dev/null | grep '%' | grep -v '^#' \
          | python3 benches/perf_groups.py "$cpu" ;;
  callers) perf report -i $D/perf.data --no-children --stdio -G -S malloc,_int_malloc,cfree,_int_free,realloc 2>/dev/null \
        | grep -v '^$' | grep -v '^#' | head -${TOP:-150} ;;
  children) perf report -i $D/perf.data --children --sort symbol --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep '%' | sed 's/ *$//' | head -${TOP:-90} ;;
  strace) echo "# syscalls per request (during the measured run):"
          awk -v q="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 {printf "%-20s %8.3f\n", $NF, $4/q}' $D/strace.txt | sort -k2 -rn | head -15 ;;
esac
# corepin logs its ring's counters on SIGINT; the probe exits on SIGTERM only.
if [ "$PATH_KIND" = uproxy ]; then kill $P; else kill -INT $P; fi; wait $P 2>/dev/null
grep -h "io_uring data path:" $D/c.err $D/c.out 2>/dev/null | sed 's/^.*core/core/'
echo "(requests measured: $reqs; the counters above cover the whole run incl. warm-up)"
