#!/usr/bin/env bash
# Memory after peaks (PERFORMANCE.md): builds corepin and corepin-load, then
# runs benches/memory.py on the shipped binary, or on the binaries given as
# NAME=PATH arguments (to compare allocators: build a variant with another
# #[global_allocator] in src/main.rs, copy it aside, and pass it here).
# Ports are picked by the system (port 0); nothing else is touched. Takes
# about two minutes per binary. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p corepin -p corepin-load
# 19,000 subscribers need as many descriptors, in corepin and in the tool.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ $# -eq 0 ]; then
  set -- "shipped=$PWD/target/release/corepin"
fi
exec python3 -u benches/memory.py target/release/corepin-load "$@"
