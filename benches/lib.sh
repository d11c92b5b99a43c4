# Shared by the benchmark scripts: start and stop the peers side by side on
# this machine. Source it; every peer runs under $BENCH_DIR and is stopped
# by stop_all (installed as an EXIT trap by bench_init).
#
# Other engineers run servers on this machine at the same time, so nothing
# here uses a fixed port or path, or stops a process it did not start:
# bench_init picks free ports (pick_ports) and a fresh mktemp -d folder,
# and stop_all signals only the PIDs started here and their descendants.
# The ports, set by pick_ports: BACKEND_PORT (nginx static backend),
# NGINX_PORT (nginx proxy), NGINX_TLS_PORT, PUSHPIN_PORT, PUSHPIN_TLS_PORT,
# PUSHPIN_PUBLISH_PORT (5561 + PUSHPIN_OFFSET, Pushpin's port_offset),
# COREPIN_PORT, COREPIN_CONTROL_PORT, COREPIN_TLS_PORT, NCHAN_PORT,
# NCHAN_TLS_PORT, ECHO_PORT (corepin-load's WebSocket echo server),
# URING_PORT and URING_CONTROL_PORT (a second corepin, on the `uring` data
# path, beside the first where a section runs both at once), PROBE_PORT,
# PROBE_EPOLL_PORT and PROBE_GLOMMIO_PORT (the proxy probes).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIDS=()
. "$ROOT/benches/nginx_confs.sh"

# free_ports N: N distinct loopback ports nothing listens on, all bound at
# once (so they differ) and released for the peers to take.
free_ports() {
  python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

# port_free PORT: nothing is bound to 127.0.0.1:PORT (or 0.0.0.0:PORT).
port_free() {
  python3 -c '
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
' "$1"
}

pick_ports() {
  read -r BACKEND_PORT NGINX_PORT NGINX_TLS_PORT PUSHPIN_PORT PUSHPIN_TLS_PORT \
    COREPIN_PORT COREPIN_CONTROL_PORT COREPIN_TLS_PORT NCHAN_PORT NCHAN_TLS_PORT \
    ECHO_PORT URING_PORT URING_CONTROL_PORT PROBE_PORT PROBE_EPOLL_PORT PROBE_GLOMMIO_PORT \
    <<< "$(free_ports 16)"
  # Pushpin's port_offset moves its fixed ZeroMQ and publish ports
  # (5560-5563): find an offset where all four are free, below the
  # ephemeral range that port-0 binds draw from.
  local off p ok
  for _ in $(seq 1 200); do
    off=$((1000 + RANDOM % 20000)); ok=1
    for p in 5560 5561 5562 5563; do port_free $((p + off)) || { ok=0; break; }; done
    [ "$ok" = 1 ] && break
  done
  PUSHPIN_OFFSET=$off
  PUSHPIN_PUBLISH_PORT=$((5561 + off))
}

bench_init() {
  BENCH_DIR=$(mktemp -d /tmp/corepin-bench.XXXXXX)
  # nginx's workers (not root) read the backend's files in it.
  chmod 755 "$BENCH_DIR"
  trap stop_all EXIT
  pick_ports
  local missing=()
  for bin in nginx pushpin zurl curl python3 wrk; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(nchan)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: nginx libnginx-mod-nchan pushpin curl python3 wrk (missing: ${missing[*]})" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan pushpin curl python3 wrk >/dev/null
  fi
  # NO_BUILD=1: measure the release binaries already built (a rebuild
  # under a shared machine's load can take longer than the run).
  [ "${NO_BUILD:-}" = 1 ] || (cd "$ROOT" && cargo build --release -q -p corepin -p corepin-load)
  # LOAD_BIN: another corepin-load build (the debug one, say).
  LOAD=${LOAD_BIN:-$ROOT/target/release/corepin-load}
}

# descendants PID...: the PIDs and every process below them.
descendants() {
  local pid
  for pid in "$@"; do
    echo "$pid"
    descendants $(pgrep -P "$pid" 2>/dev/null)
  done
}

# stop_all: stops what this script started (the PIDs in PIDS and their
# children: nginx workers, Pushpin's condure/proxy/handler), nothing else.
stop_all() {
  local all pid
  [ ${#PIDS[@]} -gt 0 ] || return 0
  all=$(descendants "${PIDS[@]}")
  for pid in $all; do kill "$pid" 2>/dev/null || true; done
  # Wait until they are gone: corepin binds with SO_REUSEPORT, so a new
  # instance could otherwise share its port with a dying one.
  for _ in $(seq 1 100); do
    local alive=0
    for pid in $all; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in $all; do kill -9 "$pid" 2>/dev/null || true; done
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on port $1" >&2
  return 1
}

# The backend every proxy forwards to: nginx serving a small static file.
start_backend() {
  local d=$BENCH_DIR/backend
  mkdir -p "$d/www" "$d/logs"
  printf 'hello from the backend\n' > "$d/www/index.html"
  cat > "$d/nginx.conf" <<CONF
daemon off; pid $d/nginx.pid; error_log $d/logs/error.log;
worker_processes 1; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND_PORT backlog=4096; root $d/www; } }
CONF
  nginx -p "$d" -c "$d/nginx.conf" & PIDS+=($!)
  wait_port "$BACKEND_PORT"
}

# nginx as a reverse proxy: 2 workers, upstream keepalive; /echo is
# proxied as a WebSocket to corepin-load's echo server on ECHO_PORT.
start_nginx_proxy() {
  local d=$BENCH_DIR/nginx-proxy
  mkdir -p "$d/logs"
  cat > "$d/nginx.conf" <<CONF
daemon off; pid $d/nginx.pid; error_log $d/logs/error.log;
worker_processes 2; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }
    location /echo { proxy_pass http://127.0.0.1:$ECHO_PORT; proxy_http_version 1.1;
                     proxy_set_header Upgrade \$http_upgrade;
                     proxy_set_header Connection "upgrade"; } } }
CONF
  nginx -p "$d" -c "$d/nginx.conf" & PIDS+=($!)
  wait_port "$NGINX_PORT"
}

# Pushpin 1.36 from Debian with its own zurl (allowing loopback), on
# PUSHPIN_PORT. The argument is the routes file text (lines separated by
# \n). PUSHPIN_LIMITS=raised lifts the handler's delivery rate limit.
# With WITH_TLS=1 (and TLS_DIR holding a localhost.crt/.key pair), Pushpin also serves
# HTTPS on PUSHPIN_TLS_PORT (its https_ports; condure terminates TLS with
# the pair as runner/certs/localhost.crt beside pushpin.conf).
start_pushpin() {
  local d=$BENCH_DIR/pushpin route=${1:-"* 127.0.0.1:$BACKEND_PORT"}
  mkdir -p "$d/run" "$d/log"
  local https=()
  if [ "${WITH_TLS:-}" = 1 ]; then
    mkdir -p "$d/runner/certs"
    # condure answers an SNI name with no file of its own name with an
    # unrecognized_name alert, default.crt or not.
    cp "$TLS_DIR/localhost.crt" "$TLS_DIR/localhost.key" "$d/runner/certs/"
    cp "$TLS_DIR/localhost.crt" "$d/runner/certs/default.crt"
    cp "$TLS_DIR/localhost.key" "$d/runner/certs/default.key"
    https=(-e "s|^#*https_ports=.*|https_ports=127.0.0.1:$PUSHPIN_TLS_PORT|")
  fi
  cat > "$d/zurl.conf" <<CONF
[General]
in_spec=ipc://$d/run/zurl-in
in_stream_spec=ipc://$d/run/zurl-in-stream
out_spec=ipc://$d/run/zurl-out
defpolicy=allow
deny=
CONF
  zurl --config="$d/zurl.conf" > "$d/log/zurl.out" 2>&1 & PIDS+=($!)
  ZURL_PID=$!
  printf '%b\n' "$route" > "$d/routes"
  local rate=2500 hwm=25000
  if [ "${PUSHPIN_LIMITS:-default}" = raised ]; then rate=10000000; hwm=10000000; fi
  sed -e "s|^rundir=.*|rundir=$d/run|" \
      -e "s|^logdir=.*|logdir=$d/log|" \
      -e "s|^port_offset=.*|port_offset=$PUSHPIN_OFFSET|" \
      -e "s|^http_port=.*|http_port=127.0.0.1:$PUSHPIN_PORT|" \
      "${https[@]}" \
      -e "s|^routesfile=.*|routesfile=$d/routes|" \
      -e "s|^client_maxconn=.*|client_maxconn=60000|" \
      -e "s|^message_rate=.*|message_rate=$rate|" \
      -e "s|^message_hwm=.*|message_hwm=$hwm|" \
      -e "s|^log_level=.*|log_level=1|" \
      -e "s|^\[proxy\]|[proxy]\nzurl_out_specs=ipc://$d/run/zurl-in\nzurl_out_stream_specs=ipc://$d/run/zurl-in-stream\nzurl_in_specs=ipc://$d/run/zurl-out|" \
      /etc/pushpin/pushpin.conf > "$d/pushpin.conf"
  sed -i "s|{libdir}|/usr/lib/pushpin|" "$d/pushpin.conf"
  # The ports are in the file: --port would replace https_ports too.
  pushpin --config "$d/pushpin.conf" > "$d/log/pushpin.out" 2>&1 & PIDS+=($!)
  PUSHPIN_PID=$!
  wait_port "$PUSHPIN_PORT"
  # The port opens before Pushpin's handler is ready: wait for a real answer.
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -m 1 "http://127.0.0.1:$PUSHPIN_PORT/stream?channel=warmup")" = 200 ] && break
    sleep 0.2
  done
  [ "${WITH_TLS:-}" != 1 ] || wait_port "$PUSHPIN_TLS_PORT"
  PUSHPIN_PUBLISH=http://127.0.0.1:$PUSHPIN_PUBLISH_PORT/publish/
}

# corepin (release build) on COREPIN_PORT, control HTTP on
# COREPIN_CONTROL_PORT; extra args follow (`--data-path uring` for the
# other data path).
start_corepin() {
  start_corepin_on "$COREPIN_PORT" "$COREPIN_CONTROL_PORT" corepin "$@"
  COREPIN_PID=$STARTED_PID
}

# start_corepin_on PORT CONTROL_PORT NAME ARGS...: a corepin on PORT (its
# control socket and logs named NAME in BENCH_DIR); sets STARTED_PID.
start_corepin_on() {
  local port=$1 cport=$2 name=$3
  shift 3
  "$ROOT/target/release/corepin" --listen "127.0.0.1:$port" \
    --control-http "127.0.0.1:$cport" \
    --control-socket "$BENCH_DIR/$name.sock" --log-level warn "$@" \
    > "$BENCH_DIR/$name.out" 2> "$BENCH_DIR/$name.err" & PIDS+=($!)
  STARTED_PID=$!
  wait_port "$port"
}

# The proxy probes of ../shared/probes (PROBES): the least a keep-alive
# proxy must do, on raw io_uring (uproxy; --epoll: the same loop on epoll)
# and on glommio's TcpStream (gproxy); yardsticks for corepin's data paths
# (issue 16), not part of corepin. build_probes builds them once into
# target/probes and sets UPROXY_BIN and GPROXY_BIN; both stay empty when
# the probes are not on this machine.
build_probes() {
  UPROXY_BIN= GPROXY_BIN=
  local dir=${PROBES:-$ROOT/../shared/probes}
  if [ ! -f "$dir/uproxy/Cargo.toml" ] || [ ! -f "$dir/gproxy/Cargo.toml" ]; then
    echo "no proxy probes in $dir (set PROBES): their columns stay empty" >&2
    return 0
  fi
  local p
  for p in uproxy gproxy; do
    (cd "$dir/$p" && CARGO_TARGET_DIR="$ROOT/target/probes" cargo build --release -q) ||
      { echo "the $p probe did not build: its columns stay empty" >&2; return 0; }
  done
  UPROXY_BIN=$ROOT/target/probes/release/uproxy
  GPROXY_BIN=$ROOT/target/probes/release/gproxy
}

# start_probes: the three probes (2 threads each) in front of BACKEND_PORT,
# when built; sets PROBE_PID, PROBE_EPOLL_PID and PROBE_GLOMMIO_PID.
start_probes() {
  [ -n "${UPROXY_BIN:-}" ] || return 0
  local be=127.0.0.1:$BACKEND_PORT
  "$UPROXY_BIN" "127.0.0.1:$PROBE_PORT" "$be" 2 2> "$BENCH_DIR/uproxy.err" & PIDS+=($!)
  PROBE_PID=$!
  "$UPROXY_BIN" "127.0.0.1:$PROBE_EPOLL_PORT" "$be" 2 --epoll 2> "$BENCH_DIR/uproxy-epoll.err" & PIDS+=($!)
  PROBE_EPOLL_PID=$!
  "$GPROXY_BIN" "127.0.0.1:$PROBE_GLOMMIO_PORT" "$be" 2 2> "$BENCH_DIR/gproxy.err" & PIDS+=($!)
  PROBE_GLOMMIO_PID=$!
  wait_port "$PROBE_PORT" && wait_port "$PROBE_EPOLL_PORT" && wait_port "$PROBE_GLOMMIO_PORT"
}

# nchan (nginx pub/sub module) on NCHAN_PORT: /sub?channel=X,
# /pub?channel=X; with WITH_TLS=1 (TLS_DIR as for Pushpin), /sub over TLS on NCHAN_TLS_PORT too.
start_nchan() {
  local d=$BENCH_DIR/nchan tls=""
  if [ "${WITH_TLS:-}" = 1 ]; then
    tls="listen 127.0.0.1:$NCHAN_TLS_PORT ssl backlog=4096;
    ssl_certificate $TLS_DIR/localhost.crt; ssl_certificate_key $TLS_DIR/localhost.key;"
  fi
  nchan_conf "$d" "$NCHAN_PORT" \
    "ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;" "$tls"
  nginx -p "$d" -c "$d/nginx.conf" & PIDS+=($!)
  wait_port "$NCHAN_PORT"
}

# nginx_workers DIR: the worker pids of the nginx instance started in DIR.
nginx_workers() {
  local master
  master=$(cat "$1/nginx.pid" 2>/dev/null) || return 0
  pgrep -P "$master" | tr '\n' ' '
}

# pids_of PATTERN: pids whose command line matches.
pids_of() { pgrep -f "$1" | tr '\n' ' '; }

# rss_kib PID...: summed resident memory.
rss_kib() {
  local total=0 pid kb
  for pid in "$@"; do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

# cpu_seconds PID...: summed user + system CPU time of the processes.
cpu_seconds() {
  local ticks=0 pid t hz
  hz=$(getconf CLK_TCK)
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    ticks=$((ticks + ${t:-0}))
  done
  awk -v t="$ticks" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}'
}

# median of the arguments (numbers).
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
