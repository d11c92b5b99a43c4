#!/usr/bin/env bash
# Runs one test of an already built integration-test binary again and
# again, in COPIES parallel loops for SECONDS, beside BUSY busy loops
# (`yes > /dev/null`, started and killed here by PID) that take the CPU
# from it: how the "a core stalls for 20 s" failure of
# tests/ws_resume.rs was found (4 in ~2,370 runs, note25). Everything runs
# at nice 19. Prints runs and failures; failing runs' output is kept.
#
#   cargo test --workspace --test ws_resume --no-run   # prints the binary
#   bash benches/stall_stress.sh target/debug/deps/ws_resume-HASH \
#       resuming_again_and_again 4 2 1800
set -euo pipefail
bin=$1 filter=$2 copies=${3:-4} busy=${4:-2} seconds=${5:-600}
out=$(mktemp -d)
pids=()
for _ in $(seq "$busy"); do nice -n 19 yes >/dev/null & pids+=($!); done
end=$((SECONDS + seconds))
loop() {
  local i=0
  while [ "$SECONDS" -lt "$end" ]; do
    i=$((i + 1))
    if nice -n 19 "$bin" "$filter" --test-threads 1 >"$out/$1.$i.log" 2>&1; then
      echo ok >>"$out/runs.$1"; rm -f "$out/$1.$i.log"
    else
      echo fail >>"$out/runs.$1"
    fi
  done
}
loops=()
for c in $(seq "$copies"); do loop "$c" & loops+=($!); done
for p in "${loops[@]}"; do wait "$p"; done
kill "${pids[@]}" 2>/dev/null || true
runs=$(cat "$out"/runs.* 2>/dev/null | wc -l)
fails=$(cat "$out"/runs.* 2>/dev/null | grep -c fail || true)
echo "runs=$runs failures=$fails logs=$out (uptime: $(uptime))"
