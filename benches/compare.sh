#!/usr/bin/env bash
# The comparison runner: corepin, Pushpin and nginx (with nchan for pub/sub)
# on this machine, one peer after the other in the same run, measured with
# corepin-load only. Every case runs ROUNDS times; the table gives medians
# and ratios.
#
#   bash benches/compare.sh
#     -> benches/results/compare.md     (the table PERFORMANCE.md quotes)
#        benches/results/compare.jsonl  (every run's full JSON result)
#
# Matrix (each row for every peer that does it):
#   proxy      keep-alive GETs through each proxy to one nginx static
#              backend: req/s and p99
#   fanout     one publish to 1k, 5k and 15k HTTP stream subscribers: time
#              from the publish to the last delivery, and p99 latency
#   sustained  10k stream subscribers x 200 publishes: deliveries/s
#   ws         WebSocket echo round trips/s (50 connections)
#   memory     RSS per idle stream subscriber at 1k, 5k, 15k (the proxy's
#              own processes; RSS after minus before, over N)
#
# Env: ROUNDS (3), SECTIONS ("proxy fanout sustained ws memory"),
#      SIZES ("1000 5000 15000"), OPEN_RATE (subscribers opened per
#      second, 1000, the same for every peer: Pushpin 1.36 answers part of
#      faster subscribe bursts with 500 "received message out of sequence"
#      and then stalls, which would measure the burst, not the fan-out).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
SECTIONS=${SECTIONS:-"proxy fanout sustained ws memory"}
SIZES=${SIZES:-"1000 5000 15000"}
OPEN_RATE=${OPEN_RATE:-1000}
RES=$ROOT/benches/results
RAW=$RES/compare.jsonl
OUT=$RES/compare.md
mkdir -p "$RES"
: > "$RAW"
bench_init
STARTED=$(date +%s)

# record PEER CASE JSON: one line of the raw results.
record() {
  local json=${3:-}
  [ -n "$json" ] || json='{}'
  echo "{\"peer\":\"$1\",\"case\":\"$2\",\"result\":$json}" >> "$RAW"
  echo "$1 $2: $(echo "$json" | head -c 300)" >&2
}

# restart: stop every peer (and backend) so the next case starts fresh.
restart() { stop_all; PIDS=(); }

# start_pubsub PEER: a fresh peer for the pub/sub cases; sets SUB (the
# subscribers' address), PUBARGS (how to publish) and PATHARGS.
start_pubsub() {
  PATHARGS=()
  case $1 in
    corepin) start_corepin --route "* test"
      SUB=127.0.0.1:18110; PUBARGS=(--publish-to 127.0.0.1:18111) ;;
    pushpin) PUSHPIN_LIMITS=raised start_pushpin "* test"
      SUB=127.0.0.1:18102; PUBARGS=(--publish-to 127.0.0.1:5601) ;;
    pushpin-shipped) PUSHPIN_LIMITS=default start_pushpin "* test"
      SUB=127.0.0.1:18102; PUBARGS=(--publish-to 127.0.0.1:5601) ;;
    nchan) start_nchan
      SUB=127.0.0.1:18120; PUBARGS=(--publish-to 127.0.0.1:18120 --via nchan)
      PATHARGS=(--path "/sub?channel={channel}") ;;
  esac
  sleep 1
}

# pubsub_pids PEER: the processes whose memory counts for PEER.
pubsub_pids() {
  case $1 in
    corepin) echo "$COREPIN_PID" ;;
    pushpin*) pids_of "$BENCH_DIR/pushpin" ;;
    nchan) nginx_workers "$BENCH_DIR/nchan" ;;
  esac
}

RUN=0
# A run ends when every message arrived, at the timeout, or when nothing
# arrived for 15 s after the last publish: Pushpin pauses for seconds in
# the middle of a burst and then delivers everything, so a short grace
# would count its late deliveries as lost.
fanout() { # fanout PEER CASE SUBSCRIBERS MESSAGES TIMEOUT_S
  RUN=$((RUN + 1))
  start_pubsub "$1"
  record "$1" "$2" "$("$LOAD" fanout --to "$SUB" "${PUBARGS[@]}" "${PATHARGS[@]}" \
      --channel-prefix "c$RUN" --subscribers "$3" --messages "$4" --rate "$OPEN_RATE" \
      --settle-ms 1000 --grace-ms 15000 --timeout-s "$5" 2>>"$BENCH_DIR/load.err" || true)"
  restart
}

memory() { # memory PEER SUBSCRIBERS
  start_pubsub "$1"
  local pids before after ready=$BENCH_DIR/ready out
  pids=$(pubsub_pids "$1")
  before=$(rss_kib $pids)
  rm -f "$ready"
  "$LOAD" subscribe --to "$SUB" "${PATHARGS[@]}" --channel-prefix idle --subscribers "$2" \
    --rate "$OPEN_RATE" --hold-s 4 --ready-file "$ready" > "$BENCH_DIR/hold.json" 2>>"$BENCH_DIR/load.err" &
  local holder=$!
  for _ in $(seq 1 600); do [ -f "$ready" ] && break; sleep 0.1; done
  sleep 1
  after=$(rss_kib $pids)
  wait "$holder" || true
  out=$(cat "$BENCH_DIR/hold.json" 2>/dev/null || true)
  [ -n "$out" ] || out='{}'
  local kib
  kib=$(awk -v a="$after" -v b="$before" -v n="$2" 'BEGIN {printf "%.3f", (a - b) / n}')
  record "$1" "idle-$2" "{\"kib_per_subscriber\":$kib,\"rss_before_kib\":$before,\"rss_after_kib\":$after,\"hold\":$out}"
  restart
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS ($(( $(date +%s) - STARTED )) s so far)" >&2
  for section in $SECTIONS; do
    case $section in
      proxy)
        start_backend
        start_nginx_proxy
        start_pushpin "* 127.0.0.1:18100"
        start_corepin --route "* 127.0.0.1:18100"
        for p in corepin:18110 nginx:18101 pushpin:18102 direct:18100; do
          curl -sf "http://127.0.0.1:${p#*:}/index.html" > /dev/null || { echo "${p%%:*} does not answer" >&2; exit 1; }
          record "${p%%:*}" proxy "$("$LOAD" proxy --to "127.0.0.1:${p#*:}" --path /index.html \
              --conns 100 --threads 2 --seconds 5 --warmup-s 1 2>>"$BENCH_DIR/load.err" || true)"
        done
        restart ;;
      fanout)
        for peer in corepin pushpin pushpin-shipped nchan; do
          for n in $SIZES; do fanout "$peer" "one-$n" "$n" 1 60; done
        done ;;
      sustained)
        for peer in corepin pushpin pushpin-shipped nchan; do
          fanout "$peer" sustained-10k 10000 200 90
        done ;;
      ws)
        "$LOAD" echo-server 127.0.0.1:18130 > /dev/null & PIDS+=($!)
        wait_port 18130
        start_corepin --route "*,path_beg=/oh 127.0.0.1:18130,over_http" --route "* 127.0.0.1:18130"
        PUSHPIN_LIMITS=raised start_pushpin "*,path_beg=/oh 127.0.0.1:18130,over_http\n* 127.0.0.1:18130"
        start_backend
        start_nginx_proxy
        for c in direct:18130:/echo corepin:18110:/echo corepin-over-http:18110:/oh/echo \
                 pushpin:18102:/echo pushpin-over-http:18102:/oh/echo nginx:18101:/echo; do
          IFS=: read -r peer port path <<< "$c"
          record "$peer" ws-echo "$("$LOAD" ws-echo --to "127.0.0.1:$port" --path "$path" \
              --conns 50 --seconds 5 2>>"$BENCH_DIR/load.err" || true)"
        done
        restart ;;
      memory)
        for peer in corepin pushpin nchan; do
          for n in $SIZES; do memory "$peer" "$n"; done
        done ;;
    esac
  done
done
echo "== done in $(( $(date +%s) - STARTED )) s" >&2

python3 "$ROOT/benches/table.py" "$RAW" "$OUT" "$ROUNDS" "$SIZES"
cat "$OUT"
