# Sourced by the fan-out benches (uring_corepin.sh, one15k_trace.sh): the
# nchan they compare against, configured once so their rows stay alike.

# nchan_fanout_conf DIR PORT: writes DIR/nginx.conf for nchan on PORT, two
# workers, /sub an HTTP raw stream and /pub its publisher (logs in DIR/logs).
nchan_fanout_conf() {
  local d=$1 port=$2
  mkdir -p "$d/logs"
  cat > "$d/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off; pid $d/nginx.pid; error_log $d/logs/error.log;
worker_processes 2; worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http { access_log off; nchan_shared_memory_size 256M;
  server { listen 127.0.0.1:$port backlog=4096;
    location = /sub { nchan_subscriber http-raw-stream; nchan_channel_id \$arg_channel; }
    location = /pub { nchan_publisher; nchan_channel_id \$arg_channel;
                      nchan_message_buffer_length 2000; nchan_message_timeout 5m; } } }
CONF
}
