#!/usr/bin/env bash
# The long fuzz run (issue 11, item 15): every fuzz target for SECONDS of
# wall time (default 900), at most JOBS (default 2) at once, at `nice -n 19`
# so the other work on a shared machine goes first. Corpora are kept (and
# grown, when the run is repeated) in fuzz/corpus/TARGET; crashes land in
# fuzz/artifacts/TARGET/.
#
# Per target it records wall and CPU time, libFuzzer's final stat lines
# (executions, exec/s, peak RSS), its last status line (coverage `cov`,
# features `ft`, corpus entries/bytes in memory), the corpus on disk (files
# and bytes) and any crash/leak/timeout artifacts, into $OUT/TARGET.stats;
# the whole, one target after another, into benches/results/fuzz_long.txt.
#
# usage: bash benches/fuzz_long.sh [TARGET...]   env: SECONDS_PER=900 JOBS=2
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER=${SECONDS_PER:-900}
JOBS=${JOBS:-2}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=$ROOT/fuzz/target/$TRIPLE/release
OUT=${OUT:-$(mktemp -d)}
RESULT=${RESULT:-$ROOT/benches/results/fuzz_long.txt}
if [ $# -gt 0 ]; then
  TARGETS="$*"
else
  TARGETS=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^corepin-fuzz$')
fi

# Built as `cargo fuzz run` builds them: release, debug assertions and
# overflow checks on, ASan.
(cd fuzz && RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz build) || { echo "fuzz build failed"; exit 1; }

one() { # target
  local t=$1 log=$OUT/$1.log st=$OUT/$1.stats
  mkdir -p "$ROOT/fuzz/corpus/$t" "$ROOT/fuzz/artifacts/$t"
  local before_files
  before_files=$(find "$ROOT/fuzz/corpus/$t" -type f | wc -l)
  local t0 c0 c1 t1 rc
  t0=$(date +%s.%N)
  # CPU time of the fuzzer (children's rusage, read around the run).
  c0=$(awk '{print $16 + $17}' /proc/$$/stat)
  nice -n 19 "$BIN/$t" "$ROOT/fuzz/corpus/$t" \
    -max_total_time="$SECONDS_PER" -print_final_stats=1 -timeout=30 \
    -artifact_prefix="$ROOT/fuzz/artifacts/$t/" >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  c1=$(awk '{print $16 + $17}' /proc/$$/stat)
  {
    echo "target: $t"
    echo "exit: $rc"
    echo "started: $(date -d @"${t0%.*}" -Is)"
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "wall_s: %.0f\n", b - a}'
    awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "cpu_s: %.0f\n", (b - a) / hz}'
    echo "corpus_files_before: $before_files"
    echo "corpus_files: $(find "$ROOT/fuzz/corpus/$t" -type f | wc -l)"
    echo "corpus_bytes: $(du -sb "$ROOT/fuzz/corpus/$t" | cut -f1)"
    echo "artifacts: $(find "$ROOT/fuzz/artifacts/$t" -type f | wc -l)"
    echo "last_status: $(grep -E '^#[0-9]+' "$log" | tail -1)"
    grep -E '^(stat::|Done [0-9]+ runs)' "$log"
    grep -E '^==[0-9]+==ERROR|^SUMMARY|panicked at|^artifact_prefix|Test unit written' "$log" | head -5
  } >"$st"
}
export -f one
export ROOT OUT BIN SECONDS_PER

echo "# fuzz_long: $(date -Is), $SECONDS_PER s per target, $JOBS at a time, nice 19; $(nproc) cores, shared"
echo "# uptime at start: $(uptime)"
echo "# logs: $OUT"
printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} bash -c 'one {}'
{
  echo "# corepin long fuzz run: $SECONDS_PER s of wall time per target, $JOBS targets at once,"
  echo "# nice -n 19 on a $(nproc)-core machine shared with other engineers' builds and tests."
  echo "# Built by cargo fuzz build (release, debug assertions, ASan); -timeout=30."
  echo "# Finished $(date -Is); uptime at the end: $(uptime)"
  echo "# Per target: the corpus on disk after the run, libFuzzer's last status line"
  echo "# (cov = edges, ft = features, corp = entries/bytes in memory) and final stats."
  for t in $TARGETS; do
    echo
    cat "$OUT/$t.stats"
  done
} >"$RESULT"
echo "results: $RESULT"
