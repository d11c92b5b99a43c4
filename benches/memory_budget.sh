#!/usr/bin/env bash
# Per-connection byte budget (PERFORMANCE.md, "Per-connection byte budget
# (issue 16)"): where the heap bytes of one idle stream subscriber go.
# Runs a release corepin under heaptrack (apt-get install heaptrack), holds
# N idle stream subscribers on the test target with corepin-load, and
# prints corepin's RSS then, and heaptrack's largest live allocation
# sites at the peak: a site with N (or 2N) calls is a per-subscriber cost,
# its bytes / N the size of one. The sizes of the futures themselves are
# printed by a nightly build with -Zprint-type-sizes (see PERFORMANCE.md).
#
# usage: benches/memory_budget.sh [N] [stream|ws] [COREPIN_BIN]
#   DATA_PATH=uring  runs corepin with data_path = "uring"
#   KEEP=DIR         copies heaptrack's data file there (for heaptrack_print)
#   TLS=1            holds the subscribers on a TLS listener (self-signed
#                    ECDSA P-256 certificate made here); aws-lc's own C
#                    allocations (its AEAD key contexts) are listed too
# Ports are picked by the system (port 0); temporary files under mktemp -d.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
KIND=${2:-stream}
BIN=${3:-$PWD/target/release/corepin}
LOAD=$PWD/target/release/corepin-load
[ -x "$BIN" ] && [ -x "$LOAD" ] || cargo build --release -q -p corepin -p corepin-load
command -v heaptrack >/dev/null || { echo "needs heaptrack (apt-get install heaptrack)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
{
  [ -n "${DATA_PATH:-}" ] && echo "data_path = \"$DATA_PATH\""
  printf '[log]\naccess_log = false\n[limits]\nmax_connections = %d\n' $((N + 1000))
} >"$T/c.toml"
TLSARGS=()
LOADTLS=()
LISTENER=clients
if [ -n "${TLS:-}" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -addext basicConstraints=critical,CA:FALSE -keyout "$T/k.pem" -out "$T/c.pem" 2>/dev/null
  TLSARGS=(--listen-tls 127.0.0.1:0 --tls-cert "$T/c.pem" --tls-key "$T/k.pem")
  LOADTLS=(--tls "$T/c.pem")
  LISTENER="TLS clients"
fi
heaptrack -o "$T/heap" "$BIN" --listen 127.0.0.1:0 "${TLSARGS[@]}" --control-http 127.0.0.1:0 \
  --control-socket "" --workers 2 --route "* test" --config "$T/c.toml" 2>"$T/err" >/dev/null &
HP=$!
for _ in $(seq 600); do grep -q "running on" "$T/err" && break; sleep 0.1; done
PORT=$(grep -oP "listening on 127.0.0.1:\\K\\d+(?= \\($LISTENER\\))" "$T/err")
CP=$(pgrep -n -f "^$BIN --listen 127.0.0.1:0 .*--config $T/c.toml" || echo "$HP")
BEFORE=$(awk '/VmRSS/{print $2}' "/proc/$CP/status")
"$LOAD" subscribe --to "127.0.0.1:$PORT" "${LOADTLS[@]}" --subscribers "$N" --kind "$KIND" --rate 5000 \
  --hold-s 4 --ready-file "$T/ready" --timeout-s 60 >/dev/null 2>&1 &
LP=$!
for _ in $(seq 600); do [ -e "$T/ready" ] && break; sleep 0.1; done
sleep 1
AFTER=$(awk '/VmRSS/{print $2}' "/proc/$CP/status")
echo "RSS under heaptrack: $BEFORE KiB before, $AFTER KiB with $N idle $KIND subscribers: $(( (AFTER - BEFORE) * 1024 / N )) bytes each"
kill -TERM "$CP"
wait "$LP" || true
wait "$HP" || true
[ -n "${KEEP:-}" ] && cp "$T"/heap*.zst "$KEEP"/
heaptrack_print -f "$T"/heap*.zst --print-peaks 1 --print-allocators 0 \
  --print-temporary 0 --print-leaks 0 --peak-limit ${PEAKS:-25} --sub-peak-limit 1 2>/dev/null \
  | awk '/peak memory consumed over/ {print; getline; print "   " $0}'
