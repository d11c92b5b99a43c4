# Sourced by the benches: the nginx-based peers' configurations, written
# once so that every script's rows compare against the same peer.

# nchan_conf DIR PORT [HTTP] [SERVER] [LOCATION]: writes DIR/nginx.conf for
# nchan on 127.0.0.1:PORT with two workers: /sub?channel=X an HTTP raw
# stream, /pub?channel=X its publisher; logs in DIR/logs. HTTP, SERVER and
# LOCATION are extra directives for the http block, the server block and
# both locations (TLS, a Redis upstream).
nchan_conf() {
  local d=$1 port=$2 http=${3:-} server=${4:-} loc=${5:-}
  mkdir -p "$d/logs"
  cat > "$d/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off; pid $d/nginx.pid; error_log $d/logs/error.log;
worker_processes 2; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; nchan_shared_memory_size 256M; $http
  server { listen 127.0.0.1:$port backlog=4096; $server
    location = /sub { nchan_subscriber http-raw-stream; nchan_channel_id \$arg_channel; $loc }
    location = /pub { nchan_publisher; nchan_channel_id \$arg_channel;
                      nchan_message_buffer_length 2000; nchan_message_timeout 5m; $loc } } }
CONF
}

# nginx_backend_conf D PORT: the proxy benches' backend, one nginx worker
# serving D/www/index.html (23 bytes) on 127.0.0.1:PORT; writes D/be.conf
# (pid D/be.pid, logs in D/logs).
nginx_backend_conf() {
  local d=$1 port=$2
  mkdir -p "$d/www" "$d/logs"
  printf 'hello from the backend\n' > "$d/www/index.html"
  cat > "$d/be.conf" <<CONF
daemon off; pid $d/be.pid; error_log $d/logs/error.log;
worker_processes 1; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$port backlog=4096; root $d/www; } }
CONF
}

# nginx_proxy_conf D PORT BACKEND_PORT [SERVER]: nginx as the reverse proxy
# peer, two workers on 127.0.0.1:PORT with upstream keep-alive to
# BACKEND_PORT; SERVER is extra directives for its server block (more
# locations). Writes D/np.conf (pid D/np.pid, logs in D/np/logs).
nginx_proxy_conf() {
  local d=$1 port=$2 backend=$3 server=${4:-}
  mkdir -p "$d/np/logs"
  cat > "$d/np.conf" <<CONF
daemon off; pid $d/np.pid; error_log $d/np/logs/error.log;
worker_processes 2; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  upstream backend { server 127.0.0.1:$backend; keepalive 1024; }
  server { listen 127.0.0.1:$port backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } $server } }
CONF
}
