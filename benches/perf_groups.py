#!/usr/bin/env python3
"""Groups `perf report --sort dso,symbol --stdio` lines (stdin) into where a
proxied request's CPU goes: kernel, glommio, corepin's ring driver, the
allocator, libc's copies, corepin's codec, the rest of corepin (and the
crates it calls). argv[1]: CPU us per request, to scale the shares."""
import re
import sys

us = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
groups = {}
ALLOC = ("malloc", "free", "realloc", "_int_", "malloc_consolidate", "unlink_chunk", "tcache", "calloc")
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
    if not m:
        continue
    pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    if kind == "k" or "kernel" in dso:
        g = "kernel"
    elif "glommio" in sym:
        g = "glommio"
    elif "corepin::uring" in sym or "io_uring::" in sym:
        g = "ring driver"
    elif any(a in sym for a in ALLOC) and ("libc" in dso or "corepin" not in sym):
        g = "allocator"
    elif "memmove" in sym or "memcpy" in sym or "memset" in sym or "memcmp" in sym:
        g = "libc copies"
    elif "clock_gettime" in sym or "vdso" in dso:
        g = "clock"
    elif "corepin::codec" in sym or "httparse" in sym:
        g = "corepin codec (parse, heads)"
    elif "libc" in dso:
        g = "libc other"
    else:
        g = "corepin other (conn, shard, futures, std)"
    groups[g] = groups.get(g, 0.0) + pct
tot = sum(groups.values()) or 1.0
for g, p in sorted(groups.items(), key=lambda x: -x[1]):
    print(f"  {g:44} {100 * p / tot:5.1f}%  {us * p / tot:6.2f} us/req")
