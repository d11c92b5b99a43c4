#!/usr/bin/env python3
"""Reads `perf script` output of io_uring tracepoints (benches/c200_wait.sh
PARK=1 PERF=DIR) and lists every request that waited long: by kernel
request, its fd (io_uring_file_get), when its poll was armed, when the
poll woke (io_uring_task_add) and when it completed. A poll armed on a
client socket that holds unread data and never wakes is a lost wakeup; a
poll that woke (task_add) and completed long before its task ran is the
executor's.  usage: perf script -i FILE | c200_uring_trace.py [MIN_MS]"""
import re, sys
min_ms = float(sys.argv[1]) if len(sys.argv) > 1 else 300
pat = re.compile(r"^\s*(\S+)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+io_uring:(\w+):\s+ring (\S+), req (\S+), user_data (\S+)(.*)$")
live = {}  # req -> dict
long = []
t_end = 0
for line in sys.stdin:
    m = pat.match(line)
    if not m:
        continue
    comm, tid, t, ev, ring, req, ud, rest = m.groups()
    t = float(t); t_end = t
    r = live.get(req)
    if ev == "io_uring_file_get":
        fd = int(re.search(r"fd (-?\d+)", rest).group(1))
        live[req] = {"ring": ring, "ud": ud, "fd": fd, "t0": t, "arm": None, "woke": None, "tid": tid}
    elif ev == "io_uring_poll_arm" and r is not None:
        r["arm"] = t; r["op"] = re.search(r"opcode (\w+)", rest).group(1)
    elif ev == "io_uring_task_add" and r is not None:
        r["woke"] = r["woke"] or t
    elif ev == "io_uring_complete" and r is not None and ud == r["ud"]:
        del live[req]
        if r["arm"] is not None and (t - r["t0"]) * 1e3 >= min_ms:
            long.append((r, t))
for req, r in live.items():
    if r["arm"] is not None and (t_end - r["t0"]) * 1e3 >= min_ms:
        long.append((r, None))
print(f"# requests armed (poll) and not completed within {min_ms:.0f} ms: {len(long)}")
for r, t1 in sorted(long, key=lambda x: x[0]["t0"]):
    woke = f"woke +{(r['woke'] - r['t0']) * 1e3:.0f} ms" if r["woke"] else "never woke"
    done = f"completed +{(t1 - r['t0']) * 1e3:.0f} ms" if t1 else "still pending at trace end"
    print(f"t={r['t0']:.3f} tid={r['tid']} ring={r['ring'][-6:]} fd={r['fd']} op={r.get('op')} armed +{(r['arm'] - r['t0']) * 1e3:.1f} ms, {woke}, {done}")
