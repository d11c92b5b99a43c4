#!/usr/bin/env bash
# Fan-out benchmark: corepin, Pushpin (as shipped, and with its delivery
# rate limit lifted) and nchan, one after the other in one run, measured
# with corepin-load through their public protocols (HTTP stream
# subscribers; GRIP publish API or nchan's /pub).
#
#   bash benches/fanout.sh     # writes benches/results/fanout.md and fanout.jsonl
# Env: ROUNDS (default 3), PEERS (default "corepin pushpin-raised pushpin-default nchan")
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
PEERS=${PEERS:-"corepin pushpin-raised pushpin-default nchan"}
LOAD=$ROOT/target/release/corepin-load
OUT=$ROOT/benches/results/fanout.md
RAW=$ROOT/benches/results/fanout.jsonl
mkdir -p "$(dirname "$OUT")"
: > "$RAW"

bench_init
(cd "$ROOT" && cargo build --release -q -p corepin-load)

start_peer() {
  case $1 in
    corepin) start_corepin --route "* test"; SUB=127.0.0.1:18110; PUB=127.0.0.1:18111; KIND=grip ;;
    pushpin-raised) PUSHPIN_LIMITS=raised start_pushpin "* test"; SUB=127.0.0.1:18102; PUB=127.0.0.1:5601; KIND=grip ;;
    pushpin-default) PUSHPIN_LIMITS=default start_pushpin "* test"; SUB=127.0.0.1:18102; PUB=127.0.0.1:5601; KIND=grip ;;
    nchan) start_nchan; SUB=127.0.0.1:18120; PUB=127.0.0.1:18120; KIND=nchan ;;
  esac
  sleep 1
}

RUN=0
# run PEER CASE SUBSCRIBERS MESSAGES INTERVAL_US TIMEOUT_S
run() {
  RUN=$((RUN + 1))
  local out
  out=$("$LOAD" fanout --pub-kind "$KIND" --sub "$SUB" --publish "$PUB" --channel "c$RUN" \
        --subscribers "$3" --messages "$4" --interval-us "$5" --timeout-s "$6" --settle-ms 2000 2>/dev/null || echo '{}')
  echo "{\"peer\":\"$1\",\"case\":\"$2\",\"result\":$out}" >> "$RAW"
  echo "$1 $2: $out" >&2
}

# Every case runs on a freshly started peer, so what one case leaves
# behind (Pushpin degrades after its largest runs) does not skew the next.
fresh() {
  local peer=$1; shift
  start_peer "$peer"
  run "$peer" "$@"
  stop_all
  PIDS=()
}

for _ in $(seq 1 "$ROUNDS"); do
  for peer in $PEERS; do
    fresh "$peer" one-1k 1000 1 0 20
    fresh "$peer" one-10k 10000 1 0 20
    fresh "$peer" burst-10k 10000 100 0 60
    fresh "$peer" light-100 100 200 5000 30
  done
done
for peer in $PEERS; do
  fresh "$peer" burst-15k 15000 100 0 90
done

python3 - "$RAW" "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(peer, case, f):
    vals = [f(r["result"]) for r in rows if r["peer"] == peer and r["case"] == case and r["result"]]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
peers = []
for r in rows:
    if r["peer"] not in peers:
        peers.append(r["peer"])
def pct(r):
    return 100.0 * r["delivered"] / r["expected"] if r.get("expected") else None
lines = []
def table(title, case, cols):
    lines.append(f"\n**{title}**\n")
    lines.append("| peer | " + " | ".join(c[0] for c in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for p in peers:
        cells = []
        for name, f, fmt in cols:
            v = med(p, case, f)
            cells.append("–" if v is None else fmt.format(v))
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
last = ("time to last delivery ms", lambda r: r.get("first_publish_to_last_delivery_ms"), "{:.1f}")
p50 = ("p50 ms", lambda r: r.get("latency_ms", {}).get("p50"), "{:.1f}")
p99 = ("p99 ms", lambda r: r.get("latency_ms", {}).get("p99"), "{:.1f}")
got = ("delivered %", pct, "{:.1f}")
rate = ("deliveries/s", lambda r: r.get("deliveries_per_sec") if pct(r) == 100.0 else None, "{:,.0f}")
rate_any = ("deliveries/s (of those delivered)", lambda r: r.get("deliveries_per_sec"), "{:,.0f}")
order = ("out of order", lambda r: r.get("out_of_order"), "{:.0f}")
table("One publish to 1,000 stream subscribers", "one-1k", [last, p50, p99, got])
table("One publish to 10,000 stream subscribers", "one-10k", [last, p50, p99, got])
table("Sustained: 10,000 subscribers × 100 publishes", "burst-10k", [got, rate, rate_any, p99, order])
table("Light load: 100 subscribers, 200 publishes 5 ms apart", "light-100", [p50, p99, got])
table("15,000 subscribers × 100 publishes (one run)", "burst-15k", [got, rate_any, p99, order])
open(sys.argv[2], "w").write("\n".join(lines).lstrip() + "\n")
print("\n".join(lines))
PY
