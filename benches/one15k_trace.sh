#!/usr/bin/env bash
# A per-core timeline of ONE publish to BIG (15,000) HTTP-stream subscribers
# (issue 16's "last subscriber >= 3x sooner than nchan"), for nchan and each
# corepin data path, like for like: the same corepin-load fanout as
# uring_corepin.sh's one15k section, with the kernel's view recorded around
# the publish (perf record -a -k CLOCK_MONOTONIC: every scheduler switch,
# the server's sends as syscalls (nchan, glommio) or ring submissions
# (uring), the readers' recvfrom) and, for corepin,
# COREPIN_FANOUT_TRACE=1 (src/uring/trace.rs: per core, when the delivery
# pass ran, how many queues it filled, when tasks handed their bytes to the
# ring, submissions, completions). benches/one15k_trace.py turns it into
# one timeline in ms after the publish.
# usage: bash benches/one15k_trace.sh nchan|glommio|uring [more...]
# env: BIG=15000 OPEN_RATE=4000 BIN=target/release/corepin
#      LOAD=target/release/corepin-load KEEP=1 (keep the temp dir)
#      SERVER_ENV="VAR=value ..." (extra environment for corepin)
# Run it under the benchmark lock: flock /work/wt/bench.lock bash ...
set -u
cd "$(dirname "$0")/.."
. benches/nginx_confs.sh
BIG=${BIG:-15000}; OPEN_RATE=${OPEN_RATE:-4000}
BIN=${BIN:-target/release/corepin}; LOAD=${LOAD:-target/release/corepin-load}
D=$(mktemp -d); chmod 755 "$D"
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)"; exit 1; }
STARTED=""
cleanup() { for p in $STARTED; do kill $p 2>/dev/null; done; wait 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$D"; }
trap cleanup EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # name -> PORT, PUBARGS, SPID (the server's pids, comma list)
  local n=$1 port cport
  port=$(freeport)
  if [ $n = nchan ]; then
    nchan_conf $D/nchan $port
    nginx -p $D/nchan -c $D/nchan/nginx.conf & local m=$!; STARTED="$STARTED $m"
    for _ in $(seq 50); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/pub?channel=x" && break; sleep 0.1; done
    PUBARGS=(--publish-to 127.0.0.1:$port --via nchan --path "/sub?channel={channel}")
    SPID=$(pgrep -P $m | tr '\n' ',' | sed 's/,$//')
  else
    cport=$(freeport)
    cat > $D/$n.toml <<EOF
listen = ["127.0.0.1:$port"]
control_http = "127.0.0.1:$cport"
control_socket = ""
workers = 2
data_path = "$n"
routes = ["*,path_beg=/stream test"]
[log]
access_log = false
level = "warn"
[limits]
max_connections = 19000
EOF
    env COREPIN_FANOUT_TRACE=1 ${SERVER_ENV:-} "$BIN" --config $D/$n.toml >$D/$n.out 2>$D/$n.err & local p=$!
    STARTED="$STARTED $p"
    for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$cport/health && break; sleep 0.1; done
    PUBARGS=(--publish-to 127.0.0.1:$cport)
    SPID=$p
  fi
  PORT=$port
}

for n in "$@"; do
  start $n
  echo "# $n $(date -Is) $(uptime)"
  "$LOAD" fanout --to 127.0.0.1:$PORT "${PUBARGS[@]}" --kind stream --channels 1 \
      --channel-prefix "t$n" --subscribers $BIG --workers 2 --messages 1 --size 64 \
      --rate $OPEN_RATE --settle-ms 3000 --grace-ms 3000 --timeout-s 90 \
      --cpu-pids $SPID >$D/$n.json 2>$D/$n.load.err & L=$!
  for _ in $(seq 600); do grep -q "subscribed $BIG " $D/$n.load.err && break; sleep 0.1; done
  WORKERS=$(pgrep -P $L | tr '\n' ',' | sed 's/,$//')
  : > $D/$n.tids   # role tid: each server thread by its name, each reader process
  for p in ${SPID//,/ }; do for t in /proc/$p/task/*; do
    echo "server-$(tr -c 'A-Za-z0-9\n-' _ < $t/comm)-$p ${t##*/}" >> $D/$n.tids; done; done
  for p in ${WORKERS//,/ }; do for t in /proc/$p/task/*; do echo "reader-$p ${t##*/}" >> $D/$n.tids; done; done
  for t in /proc/$L/task/*; do echo "loadparent ${t##*/}" >> $D/$n.tids; done
  perf record -q -a -k CLOCK_MONOTONIC -o $D/$n.perf \
    -e sched:sched_switch -e syscalls:sys_exit_recvfrom \
    -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete \
    -e syscalls:sys_exit_writev -e syscalls:sys_exit_write -e syscalls:sys_exit_sendto \
    -- sleep 5 2>$D/$n.perf.err
  wait $L
  sleep 0.6   # the cores' trace lines are printed once they are quiet
  perf script -i $D/$n.perf -F comm,pid,tid,cpu,time,event,trace 2>/dev/null >$D/$n.script
  python3 benches/one15k_trace.py $n $D/$n.json $D/$n.script "$SPID" "$WORKERS" $D/$n.err $D/$n.tids
  for p in $STARTED; do kill $p 2>/dev/null; done; wait 2>/dev/null; STARTED=""
done
[ -n "${KEEP:-}" ] && echo "# kept $D"
