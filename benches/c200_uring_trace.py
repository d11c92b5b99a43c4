#!/usr/bin/env python3
"""Reads `perf script` output of io_uring tracepoints (benches/c200_wait.sh
PARK=1 PERF=DIR) and lists every request that waited long: by kernel
request, its fd (io_uring_file_get), when its poll was armed, when the
poll woke (io_uring_task_add) and when it completed. A poll armed on a
client socket that holds unread data and never wakes is a lost wakeup; a
poll that woke (task_add) and completed long before its task ran is the
executor's. With FDS (comma-separated, c200_park.py's "unread client
fds") and AT (monotonic seconds): which thread last submitted on each fd
before AT, and that request's fate.
usage: perf script -i FILE | c200_uring_trace.py [MIN_MS [FDS AT]]"""
import re, sys
min_ms = float(sys.argv[1]) if len(sys.argv) > 1 else 300
want = {int(x) for x in sys.argv[2].split(",") if x} if len(sys.argv) > 3 else set()
at = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
last = {}  # fd -> request dict, the last submitted before `at`
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
        if fd in want and t <= at:
            last[fd] = live[req]
    elif ev == "io_uring_poll_arm" and r is not None:
        r["arm"] = t; r["op"] = re.search(r"opcode (\w+)", rest).group(1)
    elif ev == "io_uring_task_add" and r is not None:
        r["woke"] = r["woke"] or t
    elif ev == "io_uring_complete" and r is not None and ud == r["ud"]:
        del live[req]
        r["done"] = t
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
for fd in sorted(want):
    r = last.get(fd)
    if r is None:
        print(f"fd {fd}: nothing submitted before {at:.3f}")
        continue
    fate = f"completed at {r['done']:.3f}" if "done" in r else "never completed"
    woke = f"woke at {r['woke']:.3f}" if r["woke"] else "never woke"
    print(f"fd {fd}: last request by tid {r['tid']} ring {r['ring'][-6:]} at {r['t0']:.3f} op={r.get('op')} armed={r['arm'] is not None}, {woke}, {fate}")
