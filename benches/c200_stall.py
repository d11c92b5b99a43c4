#!/usr/bin/env python3
"""A 10 ms timeline of each thread of the given PIDs while a command runs:
the longest gap in which a thread's CPU run time did not advance, split into
runnable (state R in /proc/TID/stat: starved) and not (S/D: asleep). The
split is by the sampled state: schedstat's run-queue wait is booked only
when a wait ends, so it reads a thread still waiting for a CPU as asleep
(the first version of this script did that: PERFORMANCE.md, issue 16,
stop 28).
usage: c200_stall.py PIDS(comma) -- command...   (prints one line per thread)"""
import os, subprocess, sys, time

pids = sys.argv[1].split(",")
cmd = sys.argv[sys.argv.index("--") + 1:]
def tids():
    out = []
    for p in pids:
        try:
            out += [(p, t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            pass
    return out
def read(p, t):
    try:
        with open(f"/proc/{p}/task/{t}/schedstat") as f:
            a = f.read().split()
        with open(f"/proc/{p}/task/{t}/comm") as f:
            c = f.read().strip()
        with open(f"/proc/{p}/task/{t}/stat") as f:
            st = f.read()
        return c, int(a[0]), int(a[1]), st[st.rfind(")") + 2]
    except OSError:
        return None
ts = tids()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
hist = {t: [] for t in ts}
cpus = []  # (ns, {cpu: (busy, idle, steal) in ticks})
def cpustat():
    out = {}
    with open("/proc/stat") as f:
        for l in f:
            if l.startswith("cpu") and l[3] != " ":
                v = [int(x) for x in l.split()[1:]]
                out[l.split()[0]] = (v[0] + v[1] + v[2] + v[5] + v[6], v[3] + v[4], v[7])
    return out
while proc.poll() is None:
    now = time.monotonic_ns()
    cpus.append((now, cpustat()))
    for t in ts:
        r = read(*t)
        if r:
            hist[t].append((now, r[1], r[2], r[0], r[3]))
    time.sleep(0.01)
out = proc.stdout.read()
for line in out.splitlines():
    if "Latency " in line or "Requests/sec" in line:
        print("#", line.strip())
for t, h in hist.items():
    if len(h) < 10 or h[-1][1] - h[0][1] < 0.01 * (h[-1][0] - h[0][0]):
        continue
    best = (0, 0, 0, 0)  # gap ns, rq ns, start offset
    i = 0
    while i < len(h) - 1:
        j = i
        while j + 1 < len(h) and h[j + 1][1] - h[i][1] < 1_000_000:  # < 1 ms CPU
            j += 1
        gap = h[j][0] - h[i][0]
        if gap > best[0]:
            # Runnable time by the thread's state (R) in the samples: the
            # schedstat run-queue counter (h[.][2]) books a wait only when
            # the wait ends (the thread is picked), so a thread still
            # waiting for a CPU at the end of the stretch reads as asleep.
            rq_state = sum(h[k + 1][0] - h[k][0] for k in range(i, j) if h[k][4] == "R")
            best = (gap, h[j][2] - h[i][2], h[i][0] - h[0][0], rq_state)
        i = j + 1 if j > i else i + 1
    g, rq, off, rq_state = best
    t0 = h[0][0] + off; t1 = t0 + g
    a = min(cpus, key=lambda c: abs(c[0] - t0))[1]; b = min(cpus, key=lambda c: abs(c[0] - t1))[1]
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    during = " ".join(f"{k}[busy={(b[k][0]-a[k][0])*tick:.0f} idle={(b[k][1]-a[k][1])*tick:.0f} steal={(b[k][2]-a[k][2])*tick:.0f} ms]" for k in sorted(a))
    print(f"{t[1]} {h[0][3]}: longest stretch with <1 ms CPU: {g/1e6:.0f} ms at +{off/1e9:.2f} s, "
          f"of which in state R {rq_state/1e6:.0f} ms, not R {max(0, g - rq_state)/1e6:.0f} ms "
          f"(schedstat run-queue wait booked in it {rq/1e6:.0f} ms); meanwhile {during}")
