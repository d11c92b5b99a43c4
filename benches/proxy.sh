#!/usr/bin/env bash
# Proxy benchmark: small keep-alive GETs through corepin, nginx (as a reverse
# proxy) and Pushpin to one nginx static backend, with wrk, one peer after
# the other, 3 rounds; then userspace memory per idle keep-alive client
# connection (RSS delta over N connections held by another process).
#
#   bash benches/proxy.sh            # writes benches/results/proxy.md
# Env: DURATION (s, default 5), CONNS (wrk -c, default 100), IDLE (default 10000)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-5}
CONNS=${CONNS:-100}
IDLE=${IDLE:-10000}
ROUNDS=${ROUNDS:-3}
OUT=$ROOT/benches/results/proxy.md

bench_init
start_backend
start_nginx_proxy
start_pushpin
start_corepin --route "* 127.0.0.1:18100"

declare -A URL=([corepin]=http://127.0.0.1:18110/index.html [nginx]=http://127.0.0.1:18101/index.html [pushpin]=http://127.0.0.1:18102/index.html [direct]=http://127.0.0.1:18100/index.html)
PEERS=(corepin nginx pushpin direct)
for p in "${PEERS[@]}"; do
  curl -sf "${URL[$p]}" > /dev/null || { echo "$p does not answer ${URL[$p]}" >&2; exit 1; }
done

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'; }

declare -A RPS P99
for round in $(seq 1 "$ROUNDS"); do
  for p in "${PEERS[@]}"; do
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${URL[$p]}")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}' | to_ms)
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/' | tr '\n' ' ')
    echo "round $round $p: $rps req/s, p99 $p99 ms $errors" >&2
    RPS[$p]="${RPS[$p]:-} $rps"
    P99[$p]="${P99[$p]:-} $p99"
    sleep 1
  done
done

# Idle keep-alive connections: RSS of the proxy's processes before and after.
idle_per_conn() {
  local port=$1; shift
  local pids=$*
  local before after
  before=$(rss_kib $pids)
  coproc HOLD { python3 "$ROOT/benches/idle_clients.py" "$port" "$IDLE"; }
  local line
  read -r line <&"${HOLD[0]}"
  sleep 1
  after=$(rss_kib $pids)
  kill "$HOLD_PID" 2>/dev/null || true
  wait "$HOLD_PID" 2>/dev/null || true
  awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN {printf "%.2f", (a - b) * 1024 / n / 1024}'
}
declare -A MEM
MEM[corepin]=$(idle_per_conn 18110 "$COREPIN_PID")
MEM[nginx]=$(idle_per_conn 18101 $(nginx_workers "$BENCH_DIR/nginx-proxy"))
MEM[pushpin]=$(idle_per_conn 18102 $(pids_of "$BENCH_DIR/pushpin"))
echo "idle KiB/conn: corepin ${MEM[corepin]} nginx ${MEM[nginx]} pushpin ${MEM[pushpin]}" >&2

mkdir -p "$(dirname "$OUT")"
{
  echo "| peer | req/s (median of $ROUNDS) | p99 ms | corepin req/s ÷ peer | KiB per idle keep-alive conn |"
  echo "|---|---:|---:|---:|---:|"
  c=$(median ${RPS[corepin]})
  for p in "${PEERS[@]}"; do
    r=$(median ${RPS[$p]}); l=$(median ${P99[$p]})
    ratio=$(awk -v c="$c" -v r="$r" 'BEGIN {printf "%.2f×", c / r}')
    label=$p; [ "$p" = direct ] && label="nginx serving the file directly (no proxy)"
    [ "$p" = nginx ] && label="nginx 1.22 as reverse proxy (2 workers, upstream keepalive)"
    [ "$p" = pushpin ] && label="Pushpin 1.36 (condure + proxy + zurl)"
    [ "$p" = corepin ] && label="corepin (2 cores)"
    echo "| $label | $r | $l | $ratio | ${MEM[$p]:-–} |"
  done
  echo
  echo "wrk -t2 -c$CONNS -d${DURATION}s --latency; $IDLE idle connections for memory; $(date -u +%Y-%m-%d), $(nproc) cores."
} > "$OUT"
cat "$OUT"
