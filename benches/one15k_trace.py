#!/usr/bin/env python3
"""The timeline of one publish to many subscribers (benches/one15k_trace.sh).

args: NAME LOAD_JSON PERF_SCRIPT SERVER_PIDS READER_PIDS SERVER_STDERR TIDS
Times are ms after the publisher sent the publish (corepin-load's
first_send_ns, CLOCK_MONOTONIC like perf's -k CLOCK_MONOTONIC).
"""
import collections
import json
import re
import sys

name, load_json, script, spids, rpids, serr, tids_file = sys.argv[1:8]
d = json.load(open(load_json))
t0 = d["publish"]["first_send_ns"] / 1e9
last = d["first_publish_to_last_delivery_ms"]
spids = {int(p) for p in spids.split(",") if p}
rpids = {int(p) for p in rpids.split(",") if p}
role_of = {}  # tid -> role
for line in open(tids_file):
    role, tid = line.split()[:2]
    role_of[int(tid)] = role


def ms(t):
    return (t - t0) * 1e3


LINE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
SW = re.compile(r"prev_comm=(.*) prev_pid=(\d+) .* prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+)")
END = last + 50  # the window: publish .. last delivery (+50 ms)
BUCKET = 25.0

evs = collections.defaultdict(list)  # (role, tid) -> [(ms, kind)]
on_cpu = collections.defaultdict(float)  # role -> ms on CPU in window
cpu_role = collections.defaultdict(lambda: collections.defaultdict(float))  # bucket -> role -> ms
running = {}  # cpu -> (tid, since_ms)
idle_ms = 0.0
sends = collections.defaultdict(list)  # server tid -> [ms]
reads = collections.defaultdict(list)  # reader tid -> [ms]
# Per thread of ours, the window split by the scheduler's view: running,
# runnable but not running (switched out in state R: it wanted the CPU),
# sleeping (switched out otherwise: nothing to do).
state = collections.defaultdict(lambda: collections.defaultdict(float))
out_at = {}  # tid -> (ms, state) when switched out
in_at = {}  # tid -> ms when switched in
seen = set()


def clip(a, b):
    return max(0.0, min(b, END) - max(a, 0.0))


def role(tid):
    if tid == 0:
        return "idle"
    return role_of.get(tid, "other")


def account(cpu, tid, a, b):
    global idle_ms
    a, b = max(a, 0.0), min(b, END)
    if b <= a:
        return
    r = role(tid)
    on_cpu[r] += b - a
    k = int(a // BUCKET)
    while a < b:
        e = min(b, (k + 1) * BUCKET)
        cpu_role[k][r] += e - a
        a, k = e, k + 1


for line in open(script):
    m = LINE.match(line)
    if not m:
        continue
    comm, pid, tid, cpu, t, ev, rest = m.groups()
    pid, tid, cpu, t = int(pid), int(tid), int(cpu), ms(float(t))
    if ev == "sched:sched_switch":
        s = SW.search(rest)
        if not s:
            continue
        prev, pstate, nxt = int(s.group(2)), s.group(3), int(s.group(5))
        if prev in role_of:
            seen.add(prev)
            if prev in in_at:
                state[prev]["running"] += clip(in_at.pop(prev), t)
            out_at[prev] = (t, pstate)
        if nxt in role_of:
            # Not seen switched out: asleep since before the window the
            # first time; later, a switch perf lost (counted as nothing).
            a, st = out_at.pop(nxt, (-1e9 if nxt not in seen else t, "S"))
            seen.add(nxt)
            state[nxt]["runnable" if st.startswith("R") else "sleeping"] += clip(a, t)
            in_at[nxt] = t
        if cpu in running:
            rt, since = running[cpu]
            account(cpu, rt, since, t)
        else:
            account(cpu, prev, -1e9, t)
        running[cpu] = (nxt, t)
        continue
    if t < -5 or t > END + 500:
        continue
    r = role(tid)
    if ev == "syscalls:sys_exit_recvfrom" and r.startswith("reader"):
        if int(rest.split("0x")[-1], 16) < (1 << 31) and int(rest.split("0x")[-1], 16) > 0:
            reads[(r, tid)].append(t)
    elif r.startswith("server"):
        if ev == "io_uring:io_uring_submit_req" and re.search(r"opcode (SEND|SENDMSG)\b", rest):
            sends[(r, tid)].append(t)
        elif ev in ("syscalls:sys_exit_writev", "syscalls:sys_exit_write", "syscalls:sys_exit_sendto"):
            v = int(rest.split("0x")[-1], 16)
            if 0 < v < (1 << 31):
                sends[(r, tid)].append(t)
for cpu, (rt, since) in running.items():
    account(cpu, rt, since, END)
for tid, a in in_at.items():
    state[tid]["running"] += clip(a, END)
for tid, (a, st) in out_at.items():
    state[tid]["runnable" if st.startswith("R") else "sleeping"] += clip(a, END)


def span(xs, lo=0.0):
    xs = [x for x in xs if x >= lo]
    if not xs:
        return "-"
    xs.sort()
    return f"n={len(xs)} first={xs[0]:.1f} median={xs[len(xs)//2]:.1f} last={xs[-1]:.1f}"


print(f"== {name}: one publish to {d.get('subscribers')} streams; delivered {d.get('delivered')} "
      f"lost {d.get('lost')}; first {d.get('first_publish_to_first_delivery_ms'):.1f} ms, "
      f"p50 {d.get('latency_ms', {}).get('p50')} ms, last {last:.1f} ms; "
      f"server CPU {d.get('server_cpu_us_per_delivery', float('nan')):.2f} us/delivery")
print(f"-- server sends (syscalls or ring SEND/SENDMSG submissions), ms after the publish:")
for (r, tid), xs in sorted(sends.items()):
    print(f"   {r} tid {tid}: {span(xs)}")
print(f"-- readers (recvfrom returning data; the load tool's own view below):")
for (r, tid), xs in sorted(reads.items()):
    print(f"   {r} tid {tid}: {span(xs)}")
for i, w in enumerate(d.get("per_worker", [])):
    print(f"   worker {i}: delivered {w.get('delivered')} first {w.get('first_ms')} last {w.get('last_ms')} "
          f"window {json.dumps(w.get('window'))}")
print(f"-- CPU in the window (publish .. last delivery + 50 ms = {END:.0f} ms; 2 CPUs = {2*END:.0f} CPU-ms), ms:")
print("   " + "  ".join(f"{k}={v:.1f}" for k, v in sorted(on_cpu.items(), key=lambda kv: -kv[1])))
print("-- each thread of ours in the window, ms: running / runnable, not running (wanted a CPU) / sleeping:")
for tid, v in sorted(state.items(), key=lambda kv: role_of[kv[0]]):
    if v.get("running", 0) + v.get("runnable", 0) > 1:
        print(f"   {role_of[tid]} tid {tid}: running {v.get('running', 0):.1f} / runnable {v.get('runnable', 0):.1f}"
              f" / sleeping {v.get('sleeping', 0):.1f}")
roles = sorted(on_cpu, key=lambda k: -on_cpu[k])
print(f"-- per {BUCKET:.0f} ms: CPU-ms by role | server sends per thread | reader reads per thread")
skeys = sorted(sends)
rkeys = sorted(reads)
print("   " + f"{'ms':>6} " + " ".join(f"{r[:10]:>10}" for r in roles)
      + " | " + " ".join(f"{k[0][-8:]:>8}" for k in skeys) + " | " + " ".join(f"{k[0][-8:]:>8}" for k in rkeys))
for k in range(int(END // BUCKET) + 1):
    a, b = k * BUCKET, (k + 1) * BUCKET
    row = " ".join(f"{cpu_role[k].get(r, 0):10.1f}" for r in roles)
    sn = " ".join(f"{sum(1 for x in sends[s] if a <= x < b):8d}" for s in skeys)
    rn = " ".join(f"{sum(1 for x in reads[s] if a <= x < b):8d}" for s in rkeys)
    print(f"   {a:6.0f} {row} | {sn} | {rn}")
print("-- corepin's own per-core trace (COREPIN_FANOUT_TRACE), ms after the publish:")
try:
    for line in open(serr):
        if not line.startswith("fanout-trace"):
            continue
        parts = dict(kv.split("=", 1) for kv in line.split()[1:])
        out = [f"core {parts.pop('core')}"]
        for k, v in parts.items():
            out.append(f"{k}={int(v)}" if k.endswith("_n") else f"{k}={(int(v)/1e9 - t0)*1e3:.1f}")
        print("   " + " ".join(out))
except FileNotFoundError:
    pass
