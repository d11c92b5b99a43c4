# Sourced by the benches that run nchan (lib.sh, cluster.sh,
# uring_corepin.sh, one15k_trace.sh): its configuration written once, so
# their nchan rows stay alike.

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
