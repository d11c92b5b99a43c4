#!/usr/bin/env bash
# Where a fan-out delivery's CPU goes (issue 16): one corepin on the chosen
# data path (--workers 2, route "* test") holds SUBS HTTP-stream subscribers
# of one channel (corepin-load subscribe, from 127.0.0.2-254); then, while
# `perf record` samples corepin, MSGS publishes of 64 bytes go to that
# channel, one every 1/RATE s. Prints CPU us per delivery (run time of
# corepin's threads over the publishes / deliveries) and the perf samples
# grouped as uring_profile.sh does.
# usage: bash benches/uring_fanout_profile.sh [uring|glommio]
# env: SUBS=15000 MSGS=20 RATE=2 BIN=target/release/corepin
#      LOAD=target/release/corepin-load
# Only processes this script starts are stopped, by PID; ports are free ones.
set -u
PATH_KIND=${1:-uring}
cd "$(dirname "$0")/.."
D=$(mktemp -d)
SUBS=${SUBS:-15000}; MSGS=${MSGS:-20}; RATE=${RATE:-2}
BIN=${BIN:-target/release/corepin}; LOAD=${LOAD:-target/release/corepin-load}
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(freeport); CPORT=$(freeport)
cat > $D/c.toml <<EOF2
listen = ["127.0.0.1:$PORT"]
control_http = "127.0.0.1:$CPORT"
control_socket = ""
workers = 2
data_path = "$PATH_KIND"
routes = ["* test"]
[log]
access_log = false
level = "info"
[limits]
max_connections = 19000
EOF2
STARTED=""
cleanup() { for p in $STARTED; do kill $p 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
"$BIN" --config $D/c.toml >$D/c.out 2>$D/c.err & P=$!; STARTED="$STARTED $P"
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$CPORT/health && break; sleep 0.1; done
"$LOAD" subscribe --to 127.0.0.1:$PORT --kind stream --channels 1 --channel-prefix fp \
  --subscribers $SUBS --workers 2 --rate 4000 --hold-s $((MSGS / RATE + 15)) \
  --ready-file $D/ready >$D/hold.json 2>$D/hold.err & H=$!; STARTED="$STARTED $H"
for _ in $(seq 600); do [ -f $D/ready ] && break; sleep 0.1; done
sleep 1
runns() { cat /proc/$P/task/*/schedstat 2>/dev/null | awk '{s+=$1} END {printf "%.0f\n", s}'; }
perf record -F 2000 -p $P -o $D/perf.data -- sleep $((MSGS / RATE + 3)) >/dev/null 2>&1 & X=$!
n0=$(runns)
"$LOAD" publish --to 127.0.0.1:$CPORT --channels 1 --channel-prefix fp --messages $MSGS \
  --rate $RATE --size 64 >$D/pub.json 2>$D/pub.err
sleep 2
n1=$(runns)
wait $X
wait $H
cpu=$(python3 -c "print(($n1-$n0)/1e3/($MSGS*$SUBS))")
echo "$PATH_KIND fan-out: $SUBS subscribers x $MSGS publishes; cpu_us_per_delivery=$(printf %.2f $cpu) load=$(cut -d' ' -f1 /proc/loadavg)"
python3 -c "import json;d=json.load(open('$D/hold.json'));print('subscriber side:', {k: d.get(k) for k in ('held','messages','received','lost','failed') if k in d})" 2>/dev/null
perf report -i $D/perf.data --no-children --sort symbol --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -${TOP:-25}
echo "# samples grouped (share, and CPU us per delivery at $cpu us):"
perf report -i $D/perf.data --no-children --sort dso,symbol --stdio 2>/dev/null | grep '%' | grep -v '^#' \
  | python3 benches/perf_groups.py "$cpu"
kill -INT $P; wait $P 2>/dev/null
grep -h "io_uring data path:" $D/c.err $D/c.out 2>/dev/null | sed 's/^.*core/core/'
