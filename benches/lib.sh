# Shared by the benchmark scripts: start and stop the peers side by side on
# this machine. Source it; every peer runs under $BENCH_DIR and is stopped
# by stop_all (installed as an EXIT trap by bench_init).
#
# Ports: backend 18100, nginx proxy 18101, Pushpin 18102 (publish 5601),
# corepin 18110 (control 18111), nchan 18120, WebSocket echo server 18130.

BENCH_DIR=${BENCH_DIR:-/tmp/corepin-bench}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIDS=()

bench_init() {
  rm -rf "$BENCH_DIR"
  mkdir -p "$BENCH_DIR"
  trap stop_all EXIT
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
  (cd "$ROOT" && cargo build --release -q -p corepin -p corepin-load)
  LOAD=$ROOT/target/release/corepin-load
}

stop_all() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  pkill -f "$BENCH_DIR" 2>/dev/null || true
  # Wait until they are gone: corepin binds with SO_REUSEPORT, so a new
  # instance could otherwise share its port with a dying one.
  for _ in $(seq 1 100); do
    local alive=0 pid
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    pgrep -f "$BENCH_DIR" >/dev/null && alive=1
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 100); do
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
  server { listen 127.0.0.1:18100 backlog=4096; root $d/www; } }
CONF
  nginx -p "$d" -c "$d/nginx.conf" & PIDS+=($!)
  wait_port 18100
}

# nginx as a reverse proxy: 2 workers, upstream keepalive; /echo is
# proxied as a WebSocket to corepin-load's echo server on 18130.
start_nginx_proxy() {
  local d=$BENCH_DIR/nginx-proxy
  mkdir -p "$d/logs"
  cat > "$d/nginx.conf" <<CONF
daemon off; pid $d/nginx.pid; error_log $d/logs/error.log;
worker_processes 2; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  upstream backend { server 127.0.0.1:18100; keepalive 64; }
  server { listen 127.0.0.1:18101 backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }
    location /echo { proxy_pass http://127.0.0.1:18130; proxy_http_version 1.1;
                     proxy_set_header Upgrade \$http_upgrade;
                     proxy_set_header Connection "upgrade"; } } }
CONF
  nginx -p "$d" -c "$d/nginx.conf" & PIDS+=($!)
  wait_port 18101
}

# Pushpin 1.36 from Debian with its own zurl (allowing loopback), on 18102.
# The argument is the routes file text (lines separated by \n).
# PUSHPIN_LIMITS=raised lifts the handler's delivery rate limit.
start_pushpin() {
  local d=$BENCH_DIR/pushpin route=${1:-"* 127.0.0.1:18100"}
  mkdir -p "$d/run" "$d/log"
  cat > "$d/zurl.conf" <<CONF
[General]
in_spec=ipc://$d/run/zurl-in
in_stream_spec=ipc://$d/run/zurl-in-stream
out_spec=ipc://$d/run/zurl-out
defpolicy=allow
deny=
CONF
  zurl --config="$d/zurl.conf" > "$d/log/zurl.out" 2>&1 & PIDS+=($!)
  printf '%b\n' "$route" > "$d/routes"
  local rate=2500 hwm=25000
  if [ "${PUSHPIN_LIMITS:-default}" = raised ]; then rate=10000000; hwm=10000000; fi
  sed -e "s|^rundir=.*|rundir=$d/run|" \
      -e "s|^logdir=.*|logdir=$d/log|" \
      -e "s|^port_offset=.*|port_offset=40|" \
      -e "s|^routesfile=.*|routesfile=$d/routes|" \
      -e "s|^client_maxconn=.*|client_maxconn=60000|" \
      -e "s|^message_rate=.*|message_rate=$rate|" \
      -e "s|^message_hwm=.*|message_hwm=$hwm|" \
      -e "s|^log_level=.*|log_level=1|" \
      -e "s|^\[proxy\]|[proxy]\nzurl_out_specs=ipc://$d/run/zurl-in\nzurl_out_stream_specs=ipc://$d/run/zurl-in-stream\nzurl_in_specs=ipc://$d/run/zurl-out|" \
      /etc/pushpin/pushpin.conf > "$d/pushpin.conf"
  sed -i "s|{libdir}|/usr/lib/pushpin|" "$d/pushpin.conf"
  pushpin --config "$d/pushpin.conf" --port 127.0.0.1:18102 > "$d/log/pushpin.out" 2>&1 & PIDS+=($!)
  wait_port 18102
  # The port opens before Pushpin's handler is ready: wait for a real answer.
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -m 1 http://127.0.0.1:18102/stream?channel=warmup)" = 200 ] && break
    sleep 0.2
  done
  PUSHPIN_PUBLISH=http://127.0.0.1:$((5561 + 40))/publish/
}

# corepin (release build) on 18110, control HTTP on 18111; extra args follow.
start_corepin() {
  "$ROOT/target/release/corepin" --listen 127.0.0.1:18110 --control-http 127.0.0.1:18111 \
    --control-socket "$BENCH_DIR/corepin.sock" --log-level warn "$@" \
    > "$BENCH_DIR/corepin.out" 2> "$BENCH_DIR/corepin.err" & PIDS+=($!)
  COREPIN_PID=$!
  wait_port 18110
}

# nchan (nginx pub/sub module) on 18120: /sub?channel=X, /pub?channel=X.
start_nchan() {
  local d=$BENCH_DIR/nchan
  mkdir -p "$d/logs"
  cat > "$d/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off; pid $d/nginx.pid; error_log $d/logs/error.log;
worker_processes 2; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; nchan_shared_memory_size 256M;
  server { listen 127.0.0.1:18120 backlog=4096;
    location = /sub { nchan_subscriber http-raw-stream; nchan_channel_id \$arg_channel; }
    location = /pub { nchan_publisher; nchan_channel_id \$arg_channel;
                      nchan_message_buffer_length 2000; nchan_message_timeout 5m; } } }
CONF
  nginx -p "$d" -c "$d/nginx.conf" & PIDS+=($!)
  wait_port 18120
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
