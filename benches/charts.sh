#!/usr/bin/env bash
# Draws benchmark results as SVG charts (benches/charts.py) with a Python
# that has matplotlib: python3 on the PATH, else Debian's
# (python3-matplotlib, installed when running as root), else a venv in
# target/chartenv with matplotlib from PyPI.
#
# usage: bash benches/charts.sh compare RESULTS.jsonl OUTDIR
#        bash benches/charts.sh uring   LINES.txt     OUTDIR
set -eu
cd "$(dirname "$0")/.."
pick() {
  local p
  for p in python3 /usr/bin/python3 target/chartenv/bin/python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import matplotlib' 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
if ! PY=$(pick); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-matplotlib >/dev/null 2>&1 || true
  fi
  if ! PY=$(pick); then
    python3 -m venv target/chartenv
    target/chartenv/bin/pip install -q matplotlib
    PY=$(pick)
  fi
fi
exec "$PY" benches/charts.py "$@"
