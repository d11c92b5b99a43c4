#!/usr/bin/env bash
# The comparison runner: corepin, Pushpin and nginx (with nchan for pub/sub)
# on this machine, one peer after the other in the same run, measured with
# corepin-load only. Every case runs ROUNDS times; the table gives medians
# and ratios.
#
#   bash benches/compare.sh
#     -> benches/results/compare.md     (the table PERFORMANCE.md quotes)
#        benches/results/compare.jsonl  (every run's full JSON result)
#        benches/results/compare-*.svg  (the table's rows as charts:
#                                        benches/charts.py, redrawn from
#                                        the .jsonl by every run)
#
# corepin runs twice where its data path matters (proxy, fanout,
# sustained, ws, memory): `corepin` on the default data path (glommio's
# sockets) and `corepin-uring` on its own io_uring data path
# (`--data-path uring`).
#
# Matrix (each row for every peer that does it):
#   proxy      keep-alive GETs through each proxy to one nginx static
#              backend: req/s, p99 and the proxy's CPU time per request
#              (utime + stime of its processes, from /proc). The proxy
#              probes of ../shared/probes (PROBES=dir) are extra columns
#              when they are on the machine: the least a keep-alive proxy
#              must do, on raw io_uring, on epoll and on glommio's
#              TcpStream (yardsticks, built into target/probes)
#   fanout     one publish to 1k, 5k and 15k HTTP stream subscribers: time
#              from the publish to the last delivery, and p99 latency
#   sustained  10k stream subscribers x 200 publishes: deliveries/s
#   ws         WebSocket echo round trips/s (50 connections) and the
#              proxy's CPU time per round trip
#   tls        HTTPS through corepin's, Pushpin's (https_ports, condure's
#              TLS) and nginx's TLS listeners to the same nginx static
#              backend (one self-signed ECDSA P-256 certificate, TLS 1.3):
#              keep-alive GETs (50 connections), a new resumed handshake
#              per request and a new full handshake per request (50
#              connections each), WebSocket echo over wss (50 connections);
#              req/s, p99 and the server's CPU time (utime + stime of its
#              processes, from /proc) per request or round trip. Then RSS
#              per idle TLS stream subscriber (TLS_SIZES, default 2000) for
#              corepin, Pushpin and nchan, with corepin's plaintext figure
#              at the same count beside it.
#   memory     RSS per idle stream subscriber at 1k, 5k, 15k (the proxy's
#              own processes; RSS after minus before, over N)
#   publish    the publish path (corepin, Pushpin raised, nchan): publishes/s
#              and server CPU per publish with 8 keep-alive publishers (wrk,
#              benches/publish.lua; also pipelining 16 deep) and with 8
#              corepin-load publishers, all
#              over 2,000 channels with no subscribers; one closed-loop
#              publisher to 2,000 channels x 1 subscriber (CPU per publish);
#              the rooms workload (200 rooms x 10 subscribers, 20,000
#              publishes) as fast as one publisher goes, then at half that
#              rate: publishes/s, p50/p99/p99.9 publish->delivery, lost,
#              out of order
#
# Env: NO_BUILD=1 (use target/release as it is), PROBES (../shared/probes: the
#      proxy probes' sources), TLS_SIZES (2000), TLS_SECONDS (5),
#      ROUNDS (3), SECTIONS ("proxy fanout sustained ws memory publish tls"),
#      PUB_SECONDS (10, each publish-rate run), PUB_PEERS (the publish
#      section's peers, "corepin pushpin nchan"),
#      SIZES ("1000 5000 15000"), OPEN_RATE (subscribers opened per
#      second, 1000, the same for every peer: Pushpin 1.36 answers part of
#      faster subscribe bursts with 500 "received message out of sequence"
#      and then stalls, which would measure the burst, not the fan-out).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
TLS_SIZES=${TLS_SIZES:-2000}
TLS_SECONDS=${TLS_SECONDS:-5}
ROUNDS=${ROUNDS:-3}
SECTIONS=${SECTIONS:-"proxy fanout sustained ws memory publish tls"}
PUB_SECONDS=${PUB_SECONDS:-10}
PUB_PEERS=${PUB_PEERS:-"corepin pushpin nchan"}
SIZES=${SIZES:-"1000 5000 15000"}
OPEN_RATE=${OPEN_RATE:-1000}
RES=${RES:-$ROOT/benches/results}
RAW=$RES/compare.jsonl
OUT=$RES/compare.md
mkdir -p "$RES"
: > "$RAW"
bench_init
case " $SECTIONS " in *" proxy "*) build_probes ;; esac
STARTED=$(date +%s)

# record PEER CASE JSON: one line of the raw results.
record() {
  local json=${3:-}
  [ -n "$json" ] || json='{}'
  echo "{\"peer\":\"$1\",\"case\":\"$2\",\"result\":$json}" >> "$RAW"
  echo "$1 $2: $(echo "$json" | head -c 300)" >&2
}

# make_tls_cert: a self-signed ECDSA certificate for localhost (an end
# entity, CA:FALSE, as rustls's verifier requires) in $TLS_DIR.
make_tls_cert() {
  TLS_DIR=$BENCH_DIR/tls
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$TLS_DIR/localhost.key" -out "$TLS_DIR/localhost.crt" 2>/dev/null
}

# start_nginx_tls: nginx terminating TLS on NGINX_TLS_PORT (tickets and a
# session cache, as corepin resumes with tickets), proxying to the backend,
# /echo to the WebSocket echo server.
start_nginx_tls() {
  local d=$BENCH_DIR/nginx-tls
  mkdir -p "$d/logs"
  cat > "$d/nginx.conf" <<CONF
daemon off; pid $d/nginx.pid; error_log $d/logs/error.log;
worker_processes 2; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_TLS_PORT ssl backlog=4096;
    ssl_certificate $TLS_DIR/localhost.crt;
    ssl_certificate_key $TLS_DIR/localhost.key;
    location / { proxy_pass http://backend; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }
    location /echo { proxy_pass http://127.0.0.1:$ECHO_PORT; proxy_http_version 1.1;
                     proxy_set_header Upgrade \$http_upgrade;
                     proxy_set_header Connection "upgrade"; } } }
CONF
  nginx -p "$d" -c "$d/nginx.conf" & PIDS+=($!)
  NGINX_TLS_PID=$!
  wait_port "$NGINX_TLS_PORT"
}

# restart: stop every peer (and backend) so the next case starts fresh.
restart() { stop_all; PIDS=(); }

# start_pubsub PEER: a fresh peer for the pub/sub cases; sets SUB (the
# subscribers' address), PUBARGS (how to publish) and PATHARGS.
start_pubsub() {
  PATHARGS=()
  case $1 in
    corepin) start_corepin --route "* test"
      SUB=127.0.0.1:$COREPIN_PORT; PUBARGS=(--publish-to 127.0.0.1:$COREPIN_CONTROL_PORT) ;;
    corepin-uring) start_corepin --route "* test" --data-path uring
      SUB=127.0.0.1:$COREPIN_PORT; PUBARGS=(--publish-to 127.0.0.1:$COREPIN_CONTROL_PORT) ;;
    pushpin) PUSHPIN_LIMITS=raised start_pushpin "* test"
      SUB=127.0.0.1:$PUSHPIN_PORT; PUBARGS=(--publish-to 127.0.0.1:$PUSHPIN_PUBLISH_PORT) ;;
    pushpin-shipped) PUSHPIN_LIMITS=default start_pushpin "* test"
      SUB=127.0.0.1:$PUSHPIN_PORT; PUBARGS=(--publish-to 127.0.0.1:$PUSHPIN_PUBLISH_PORT) ;;
    nchan) start_nchan
      SUB=127.0.0.1:$NCHAN_PORT; PUBARGS=(--publish-to 127.0.0.1:$NCHAN_PORT --via nchan)
      PATHARGS=(--path "/sub?channel={channel}") ;;
  esac
  sleep 1
}

# pubsub_pids PEER: the processes whose memory counts for PEER.
pubsub_pids() {
  case $1 in
    corepin*) echo "$COREPIN_PID" ;;
    pushpin*) descendants "$PUSHPIN_PID" | tr '\n' ' ' ;;
    nchan) nginx_workers "$BENCH_DIR/nchan" ;;
  esac
}

# publish_to PEER: how corepin-load's publish mode reaches PEER (sets PUBTO)
# and the URL and kind benches/publish.lua uses (sets WRKURL, WRKKIND).
publish_to() {
  case $1 in
    corepin*) PUBTO=(--to 127.0.0.1:$COREPIN_CONTROL_PORT); WRKURL=http://127.0.0.1:$COREPIN_CONTROL_PORT/publish/; WRKKIND=grip ;;
    pushpin*) PUBTO=(--to 127.0.0.1:$PUSHPIN_PUBLISH_PORT); WRKURL=http://127.0.0.1:$PUSHPIN_PUBLISH_PORT/publish/; WRKKIND=grip ;;
    nchan) PUBTO=(--to 127.0.0.1:$NCHAN_PORT --via nchan); WRKURL=http://127.0.0.1:$NCHAN_PORT/pub; WRKKIND=nchan ;;
  esac
}

# comma_pids PEER: the peer's processes as a comma list for --cpu-pids.
comma_pids() { pubsub_pids "$1" | tr -s ' \n' ',' | sed 's/,$//'; }

# wrk_publish PEER [DEPTH]: wrk with 8 keep-alive connections, one publish
# per request (DEPTH requests pipelined per write), no subscribers; prints
# JSON with the peer's CPU per publish.
wrk_publish() {
  publish_to "$1"
  local pids before after out
  pids=$(pubsub_pids "$1")
  before=$(cpu_seconds $pids)
  # `times` in the subshell gives wrk's own CPU time (the load generator's
  # share of the 2 cores bounds what any peer can reach).
  out=$( (wrk -t2 -c8 -d"${PUB_SECONDS}s" -s "$ROOT/benches/publish.lua" "$WRKURL" -- "$WRKKIND" 2000 "${2:-1}" 2>&1 || true; times) )
  after=$(cpu_seconds $pids)
  echo "$out" | python3 -c '
import json, re, sys
text = sys.stdin.read()
before, after = float(sys.argv[1]), float(sys.argv[2])
m = re.search(r"(\d+) requests in ([\d.]+)s", text)
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errs = re.search(r"Socket errors: (.*)", text)
n = int(m.group(1)) if m else 0
ok = n - (int(bad.group(1)) if bad else 0)
# The last line of times: user and system time of the children (wrk).
t = re.findall(r"(\d+)m([\d.]+)s", text.strip().splitlines()[-1])
client = sum(int(a) * 60 + float(b) for a, b in t) if len(t) == 2 else None
print(json.dumps({"requests": n, "published": ok, "seconds": float(m.group(2)) if m else 0,
  "publishes_per_sec": float(rps.group(1)) * ok / n if rps and n else 0,
  "non_2xx": int(bad.group(1)) if bad else 0, "socket_errors": errs.group(1) if errs else "",
  "server_cpu_seconds": after - before,
  "server_cpu_us_per_publish": (after - before) * 1e6 / ok if ok else None,
  "client_cpu_us_per_request": client * 1e6 / n if client is not None and n else None}))
' "$before" "$after"
}

# with_cpu JSON BEFORE AFTER COUNT_FIELD: JSON plus the server's CPU
# seconds over the run and per unit (COUNT_FIELD of the result).
with_cpu() {
  local json=${1:-}
  [ -n "$json" ] || json='{}'
  printf '%s' "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)
cpu = float(sys.argv[2]) - float(sys.argv[1])
n = r.get(sys.argv[3]) or 0
r["server_cpu_seconds"] = round(cpu, 3)
r["server_cpu_us_per_unit"] = cpu * 1e6 / n if n else None
print(json.dumps(r))' "$2" "$3" "$4"
}

# tls_case PEER CASE PORT "PIDS" MODE ARGS...: one corepin-load run
# against a TLS listener, with the server's CPU time around it.
tls_case() {
  local peer=$1 case=$2 port=$3 pids=$4 mode=$5 before after out field=requests
  shift 5
  [ "$mode" = ws-echo ] && field=round_trips
  before=$(cpu_seconds $pids)
  out=$("$LOAD" "$mode" --to "127.0.0.1:$port" --tls "$TLS_DIR/localhost.crt" --sni localhost \
      --seconds "$TLS_SECONDS" "$@" 2>>"$BENCH_DIR/load.err" || true)
  after=$(cpu_seconds $pids)
  record "$peer" "$case" "$(with_cpu "$out" "$before" "$after" "$field")"
}

# tls_memory PEER SUBSCRIBERS: RSS per idle stream subscriber held over
# TLS (PEER's pub/sub setup with a TLS listener).
tls_memory() {
  local sub pids before after ready=$BENCH_DIR/ready out path=()
  case $1 in
    corepin) start_corepin --route "* test" --listen-tls "127.0.0.1:$COREPIN_TLS_PORT" \
        --tls-cert "$TLS_DIR/localhost.crt" --tls-key "$TLS_DIR/localhost.key"
      wait_port "$COREPIN_TLS_PORT"; sub=$COREPIN_TLS_PORT ;;
    pushpin) PUSHPIN_LIMITS=raised start_pushpin "* test"; sub=$PUSHPIN_TLS_PORT ;;
    nchan) start_nchan; wait_port "$NCHAN_TLS_PORT"; sub=$NCHAN_TLS_PORT
      path=(--path "/sub?channel={channel}") ;;
  esac
  sleep 1
  pids=$(pubsub_pids "$1")
  before=$(rss_kib $pids)
  rm -f "$ready"
  "$LOAD" subscribe --to "127.0.0.1:$sub" --tls "$TLS_DIR/localhost.crt" "${path[@]}" \
    --channel-prefix idle --subscribers "$2" --rate "$OPEN_RATE" --hold-s 4 \
    --ready-file "$ready" > "$BENCH_DIR/hold.json" 2>>"$BENCH_DIR/load.err" &
  local holder=$!
  for _ in $(seq 1 600); do [ -f "$ready" ] && break; sleep 0.1; done
  sleep 1
  after=$(rss_kib $pids)
  wait "$holder" || true
  out=$(cat "$BENCH_DIR/hold.json" 2>/dev/null || true)
  [ -n "$out" ] || out='{}'
  local kib
  kib=$(awk -v a="$after" -v b="$before" -v n="$2" 'BEGIN {printf "%.3f", (a - b) / n}')
  record "$1" "tls-idle-$2" "{\"kib_per_subscriber\":$kib,\"rss_before_kib\":$before,\"rss_after_kib\":$after,\"hold\":$out}"
  restart
}

# peer_pids PEER: the processes whose CPU time counts for PEER in the proxy
# and ws sections (where the peers run side by side).
peer_pids() {
  case $1 in
    corepin | corepin-over-http) echo "$COREPIN_PID" ;;
    corepin-uring) echo "$URING_PID" ;;
    nginx) nginx_workers "$BENCH_DIR/nginx-proxy" ;;
    # Pushpin's runner, condure, proxy, handler, and its zurl (which makes
    # its backend requests).
    pushpin | pushpin-over-http) echo "$(descendants "$PUSHPIN_PID" | tr '\n' ' ') $ZURL_PID" ;;
    probe-uring) echo "$PROBE_PID" ;;
    probe-epoll) echo "$PROBE_EPOLL_PID" ;;
    probe-glommio) echo "$PROBE_GLOMMIO_PID" ;;
    # No proxy: the backend's own CPU (the nginx backend in the proxy
    # section, the echo server in the ws section), the floor under every
    # proxy's row.
    direct) echo "$DIRECT_PIDS" ;;
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
        start_pushpin "* 127.0.0.1:$BACKEND_PORT"
        start_corepin --route "* 127.0.0.1:$BACKEND_PORT"
        start_corepin_on "$URING_PORT" "$URING_CONTROL_PORT" corepin-uring \
          --route "* 127.0.0.1:$BACKEND_PORT" --data-path uring
        URING_PID=$STARTED_PID
        start_probes
        DIRECT_PIDS=$(nginx_workers "$BENCH_DIR/backend")
        peers="corepin:$COREPIN_PORT corepin-uring:$URING_PORT nginx:$NGINX_PORT pushpin:$PUSHPIN_PORT"
        [ -z "${UPROXY_BIN:-}" ] ||
          peers+=" probe-uring:$PROBE_PORT probe-epoll:$PROBE_EPOLL_PORT probe-glommio:$PROBE_GLOMMIO_PORT"
        for p in $peers direct:$BACKEND_PORT; do
          peer=${p%%:*} port=${p#*:}
          curl -sf "http://127.0.0.1:$port/index.html" > /dev/null || { echo "$peer does not answer" >&2; exit 1; }
          # `direct`'s CPU is the backend's own: what every proxy's
          # request costs the backend.
          pids=$(peer_pids "$peer")
          before=$(cpu_seconds $pids)
          out=$("$LOAD" proxy --to "127.0.0.1:$port" --path /index.html \
              --conns 100 --threads 2 --seconds 5 --warmup-s 1 2>>"$BENCH_DIR/load.err" || true)
          after=$(cpu_seconds $pids)
          record "$peer" proxy "$(with_cpu "$out" "$before" "$after" requests)"
        done
        restart ;;
      fanout)
        for peer in corepin corepin-uring pushpin pushpin-shipped nchan; do
          for n in $SIZES; do fanout "$peer" "one-$n" "$n" 1 60; done
        done ;;
      sustained)
        for peer in corepin corepin-uring pushpin pushpin-shipped nchan; do
          fanout "$peer" sustained-10k 10000 200 90
        done ;;
      ws)
        "$LOAD" echo-server 127.0.0.1:$ECHO_PORT > /dev/null & PIDS+=($!)
        DIRECT_PIDS=$!
        wait_port $ECHO_PORT
        start_corepin --route "*,path_beg=/oh 127.0.0.1:$ECHO_PORT,over_http" --route "* 127.0.0.1:$ECHO_PORT"
        start_corepin_on "$URING_PORT" "$URING_CONTROL_PORT" corepin-uring \
          --route "* 127.0.0.1:$ECHO_PORT" --data-path uring
        URING_PID=$STARTED_PID
        PUSHPIN_LIMITS=raised start_pushpin "*,path_beg=/oh 127.0.0.1:$ECHO_PORT,over_http\n* 127.0.0.1:$ECHO_PORT"
        start_backend
        start_nginx_proxy
        for c in direct:$ECHO_PORT:/echo corepin:$COREPIN_PORT:/echo corepin-uring:$URING_PORT:/echo \
                 corepin-over-http:$COREPIN_PORT:/oh/echo \
                 pushpin:$PUSHPIN_PORT:/echo pushpin-over-http:$PUSHPIN_PORT:/oh/echo nginx:$NGINX_PORT:/echo; do
          IFS=: read -r peer port path <<< "$c"
          # WebSocket-over-HTTP's round trip also costs the echo server
          # its HTTP requests; the proxies' own processes are counted.
          pids=$(peer_pids "$peer")
          before=$(cpu_seconds $pids)
          out=$("$LOAD" ws-echo --to "127.0.0.1:$port" --path "$path" \
              --conns 50 --seconds 5 2>>"$BENCH_DIR/load.err" || true)
          after=$(cpu_seconds $pids)
          record "$peer" ws-echo "$(with_cpu "$out" "$before" "$after" round_trips)"
        done
        restart ;;
      tls)
        make_tls_cert
        "$LOAD" echo-server "127.0.0.1:$ECHO_PORT" > /dev/null & PIDS+=($!)
        wait_port "$ECHO_PORT"
        start_backend
        start_nginx_tls
        start_corepin --listen-tls "127.0.0.1:$COREPIN_TLS_PORT" --tls-cert "$TLS_DIR/localhost.crt" \
          --tls-key "$TLS_DIR/localhost.key" --route "*,path_beg=/echo 127.0.0.1:$ECHO_PORT" \
          --route "* 127.0.0.1:$BACKEND_PORT"
        wait_port "$COREPIN_TLS_PORT"
        WITH_TLS=1 start_pushpin "*,path_beg=/echo 127.0.0.1:$ECHO_PORT\n* 127.0.0.1:$BACKEND_PORT"
        for p in corepin:$COREPIN_TLS_PORT nginx:$NGINX_TLS_PORT pushpin:$PUSHPIN_TLS_PORT; do
          peer=${p%%:*} port=${p#*:}
          curl -sf --cacert "$TLS_DIR/localhost.crt" --resolve "localhost:$port:127.0.0.1" \
            "https://localhost:$port/index.html" > /dev/null \
            || { echo "$peer does not answer over TLS" >&2; exit 1; }
          case $peer in
            corepin) pids=$COREPIN_PID ;;
            nginx) pids=$(descendants "$NGINX_TLS_PID" | tr '\n' ' ') ;;
            # Pushpin's runner, condure, proxy, handler, and its zurl
            # (which makes its backend requests).
            pushpin) pids="$(descendants "$PUSHPIN_PID" | tr '\n' ' ') $ZURL_PID" ;;
          esac
          for c in keepalive:0:yes resumed:1:yes full:1:no; do
            IFS=: read -r name per resume <<< "$c"
            tls_case "$peer" "tls-$name" "$port" "$pids" proxy --path /index.html \
              --conns 50 --threads 2 --warmup-s 0 --per-conn "$per" --resume "$resume"
          done
          tls_case "$peer" tls-ws-echo "$port" "$pids" ws-echo --path /echo --conns 50
        done
        restart
        for n in $TLS_SIZES; do
          for peer in corepin pushpin nchan; do WITH_TLS=1 tls_memory "$peer" "$n"; done
          memory corepin "$n"
        done ;;
      memory)
        for peer in corepin corepin-uring pushpin nchan; do
          for n in $SIZES; do memory "$peer" "$n"; done
        done ;;
      publish)
        for peer in $PUB_PEERS; do
          start_pubsub "$peer"
          publish_to "$peer"
          record "$peer" publish-wrk8 "$(wrk_publish "$peer")"
          record "$peer" publish-wrk8-pipelined "$(wrk_publish "$peer" 16)"
          record "$peer" publish-load8 "$("$LOAD" publish "${PUBTO[@]}" --conns 8 --channels 2000 \
              --seconds "$PUB_SECONDS" --cpu-pids "$(comma_pids "$peer")" 2>>"$BENCH_DIR/load.err" || true)"
          restart
          RUN=$((RUN + 1))
          start_pubsub "$peer"
          record "$peer" closed-2000x1 "$("$LOAD" fanout --to "$SUB" "${PUBARGS[@]}" "${PATHARGS[@]}" \
              --channel-prefix "c$RUN-" --subscribers 2000 --channels 2000 --messages 20000 --rate "$OPEN_RATE" \
              --settle-ms 1000 --grace-ms 5000 --timeout-s 120 --cpu-pids "$(comma_pids "$peer")" 2>>"$BENCH_DIR/load.err" || true)"
          restart
          RUN=$((RUN + 1))
          start_pubsub "$peer"
          local_json=$("$LOAD" rooms --to "$SUB" "${PUBARGS[@]}" "${PATHARGS[@]}" --channel-prefix "r$RUN-" \
              --rate "$OPEN_RATE" --settle-ms 1000 --grace-ms 5000 --timeout-s 120 \
              --cpu-pids "$(comma_pids "$peer")" 2>>"$BENCH_DIR/load.err" || true)
          record "$peer" rooms-max "$local_json"
          restart
          half=$(printf '%s' "$local_json" | python3 -c 'import json,sys
try: print(round(json.load(sys.stdin)["publish"]["publishes_per_sec"] / 2))
except Exception: print(0)')
          if [ "${half:-0}" -gt 0 ]; then
            RUN=$((RUN + 1))
            start_pubsub "$peer"
            record "$peer" rooms-half "$("$LOAD" rooms --to "$SUB" "${PUBARGS[@]}" "${PATHARGS[@]}" --channel-prefix "r$RUN-" \
                --publish-rate "$half" --rate "$OPEN_RATE" --settle-ms 1000 --grace-ms 5000 --timeout-s 120 \
                --cpu-pids "$(comma_pids "$peer")" 2>>"$BENCH_DIR/load.err" || true)"
            restart
          fi
        done ;;
    esac
  done
done
echo "== done in $(( $(date +%s) - STARTED )) s" >&2

python3 "$ROOT/benches/table.py" "$RAW" "$OUT" "$ROUNDS" "$SIZES"
cat "$OUT"
# The same rows as SVG charts (PERFORMANCE.md embeds them).
bash "$ROOT/benches/charts.sh" compare "$RAW" "$RES" || echo "(no charts drawn: see benches/charts.sh)" >&2
