#!/usr/bin/env python3
"""Evidence from inside an executor's stall (issue 16, stop 28).

Samples every thread of corepin (PID) every ~3 ms while a command (wrk)
runs. An executor thread ("corepin-N", the glommio executors) whose CPU
run time advanced less than 1 ms over the last 40 ms starts an
*episode*; while it lasts, each sample records the thread's state
(/proc/TID/stat: S asleep, D uninterruptible, R runnable), its wait
channel (wchan), its system call (/proc/TID/syscall: number and first
argument, the ring's fd for io_uring_enter), its kernel stack
(/proc/TID/stack, root only), the state and wchan of every other thread
of the process, and the receive/send queues of the process's TCP sockets
(/proc/net/tcp by the socket inodes in /proc/PID/fd): client sockets
(local port = the proxy's) and backend sockets (remote port = BACKEND).
Episodes of at least MIN ms are printed.

A client socket whose Recv-Q is non-empty in every sample of an episode
was not read for the whole episode. The other executor drains its own
sockets within a few ms while it runs, so such sockets are the stalled
core's unread requests.

At each episode's end it also prints how long the other executor, the
backend's worker(s) (env BACKEND_PIDS) and the command (wrk) ran and
waited for a CPU over it (schedstat: a wait still going on at the end is
not booked yet, so the per-sample states are the truer split). Env
PARK_AUTOGROUP_NICE=N moves the sampler, once the command runs, into a
session of its own at that autogroup nice, so that it keeps sampling when
the benchmark's processes are starved. benches/c200_wait.sh PARK=1 runs
it (and PERF=DIR for benches/c200_uring_trace.py).

usage: c200_park.py PID PROXYPORT BACKENDPORT [MIN_MS] -- command...
"""
import collections, os, subprocess, sys, time

pid, pport, bport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rest = sys.argv[4:sys.argv.index("--")]
min_ms = float(rest[0]) if rest else 100.0
cmd = sys.argv[sys.argv.index("--") + 1:]
SYSCALLS = {426: "io_uring_enter", 202: "futex", 232: "epoll_wait", 7: "poll",
            230: "clock_nanosleep", 35: "nanosleep", 0: "read", 1: "write",
            44: "sendto", 45: "recvfrom", 324: "membarrier", 10: "mprotect",
            11: "munmap", 9: "mmap", 28: "madvise"}


def rd(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def threads():
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        out[t] = rd(f"/proc/{pid}/task/{t}/comm").strip()
    return out


def run_ns(t):
    s = rd(f"/proc/{pid}/task/{t}/schedstat").split()
    return (int(s[0]), int(s[1])) if s else (0, 0)


def state(t):
    s = rd(f"/proc/{pid}/task/{t}/stat")
    return s[s.rfind(")") + 2] if s else "?"


def sysc(t):
    f = rd(f"/proc/{pid}/task/{t}/syscall").split()
    if not f or f[0] == "running":
        return "running"
    try:
        n = int(f[0])
    except ValueError:
        return f[0]
    name = SYSCALLS.get(n, str(n))
    return f"{name}({int(f[1], 16)})" if len(f) > 1 else name


def sock_inodes():
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            l = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if l.startswith("socket:["):
            out.add(l[8:-1])
    return out


def fdmap():
    """socket inode -> fd, now (the episode's connections may be closed by
    the time it is printed)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            l = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if l.startswith("socket:["):
            out[l[8:-1]] = int(fd)
    return out


def ring_fds():
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[io_uring]":
                out.append(int(fd))
        except OSError:
            pass
    return sorted(out)


def ring_state(fd):
    d = {}
    for l in rd(f"/proc/{pid}/fdinfo/{fd}").splitlines():
        k, _, v = l.partition(":")
        if k in ("SqHead", "SqTail", "CqHead", "CqTail", "CachedSqHead", "CachedCqTail"):
            d[k] = int(v)
    return d


def socks(inodes):
    """(client rq>0 {inode: rq}, backend rq>0 {inode: rq}, client sq>0 count, backend sq>0 count)"""
    cl, be, csq, bsq = {}, {}, 0, 0
    for line in rd("/proc/net/tcp").splitlines()[1:]:
        f = line.split()
        if f[9] not in inodes or f[3] != "01":
            continue
        lport = int(f[1].split(":")[1], 16); rport = int(f[2].split(":")[1], 16)
        tx, rx = (int(x, 16) for x in f[4].split(":"))
        if lport == pport:
            if rx: cl[f[9]] = rx
            csq += tx > 0
        elif rport == bport:
            if rx: be[f[9]] = rx
            bsq += tx > 0
    return cl, be, csq, bsq


def wrk_tid():
    """wrk's thread (the child of `timeout`), once it runs."""
    try:
        for c in rd(f"/proc/{proc.pid}/task/{proc.pid}/children").split():
            return f"/proc/{c}/task/{c}"
    except NameError:
        return None


def peers():
    """CPU run and run-queue ns of every executor and of wrk, now."""
    out = {}
    for t in execs:
        out[comms[t]] = run_ns(t)
    for b in os.environ.get("BACKEND_PIDS", "").split():
        a = rd(f"/proc/{b}/schedstat").split()
        if a:
            out[f"backend-{b}"] = (int(a[0]), int(a[1]))
    w = wrk_tid()
    if w:
        # every thread of wrk (its worker thread does the I/O)
        base = w.rsplit("/task/", 1)[0]
        run = wait = 0
        for t in os.listdir(f"{base}/task") if os.path.isdir(f"{base}/task") else []:
            a = rd(f"{base}/task/{t}/schedstat").split()
            if a:
                run += int(a[0]); wait += int(a[1])
        out["wrk"] = (run, wait)
    return out


comms = threads()
# The executors: of the threads named corepin-N (glommio names its
# blocking-pool threads after the executor too), the one per name that
# has run the most (the warm-up run just before made it busy).
by_name = {}
for t, c in comms.items():
    if c.startswith("corepin-") and c.split("-")[-1].isdigit():
        if c not in by_name or run_ns(t)[0] > run_ns(by_name[c])[0]:
            by_name[c] = t
execs = sorted(by_name.values())
hist = {t: collections.deque() for t in execs}
episodes = {}  # tid -> record
done = []
inodes = sock_inodes(); inodes_at = time.monotonic()
rings = ring_fds()
# The sampler may run at a raised priority (c200_wait.sh: nice -10) so that
# it samples through the stalls; the command runs at the default nice.
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                        preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))
# PARK_AUTOGROUP_NICE=N: after starting the command, the sampler moves to a
# session of its own (its own autogroup) at that nice, so that it keeps
# sampling while the benchmark's group is starved; the command stays where
# it was started.
if os.environ.get("PARK_AUTOGROUP_NICE"):
    try:
        os.setsid()
        with open("/proc/self/autogroup", "w") as f:
            f.write(os.environ["PARK_AUTOGROUP_NICE"])
    except OSError as e:
        print(f"# sampler stays in the benchmark's autogroup: {e}")
t_start = time.monotonic_ns()
nsamples = 0
while proc.poll() is None:
    now = time.monotonic_ns(); nsamples += 1
    for t in execs:
        r, q = run_ns(t)
        h = hist[t]; h.append((now, r, q))
        while h and now - h[0][0] > 40_000_000:
            h.popleft()
        st = state(t)
        quiet = now - h[0][0] >= 35_000_000 and r - h[0][1] < 1_000_000
        ep = episodes.get(t)
        if quiet and st != "R" or (ep and r - ep["r0"] < 1_000_000):
            if ep is None:
                if time.monotonic() - inodes_at > 0.5:
                    inodes = sock_inodes(); inodes_at = time.monotonic()
                ep = episodes[t] = {"t0": h[0][0], "r0": h[0][1], "q0": h[0][2], "states": collections.Counter(),
                                    "wchan": collections.Counter(), "sys": collections.Counter(),
                                    "stacks": collections.Counter(), "others": collections.Counter(),
                                    "samples": [], "rings0": {fd: ring_state(fd) for fd in rings},
                                    "peers0": peers(), "fdmap": fdmap()}
            ep["states"][st] += 1
            ep["wchan"][rd(f"/proc/{pid}/task/{t}/wchan") or "-"] += 1
            ep["sys"][sysc(t)] += 1
            stk = rd(f"/proc/{pid}/task/{t}/stack")
            ep["stacks"][" < ".join(l.split()[-1].split("+")[0] for l in stk.splitlines()[:8])] += 1
            for o, c in comms.items():
                if o != t:
                    so = state(o)
                    if so in "RD" or c == "corepin-trim":
                        ep["others"][f"{c}:{so}:{rd(f'/proc/{pid}/task/{o}/wchan') or '-'}"] += 1
            if len(ep["samples"]) < 400 and (not ep["samples"] or now - ep["samples"][-1][0] > 8_000_000):
                ep["samples"].append((now, socks(inodes)))
            sc = sysc(t)
            if "fdinfo" not in ep and now - ep["t0"] > 150_000_000 and sc.startswith("io_uring_enter("):
                # The ring it sleeps on, 150 ms in: what the kernel holds
                # for it (armed polls by opcode, overflowed completions).
                fd = int(sc[len("io_uring_enter("):-1])
                ep["fdinfo"] = (fd, rd(f"/proc/{pid}/fdinfo/{fd}"))
            ep["last"] = (now, r, q)
        elif ep is not None:
            del episodes[t]
            ep["end"] = (now, r, q); ep["tid"] = t
            ep["rings1"] = {fd: ring_state(fd) for fd in rings}
            ep["peers1"] = peers()
            if (now - ep["t0"]) / 1e6 >= min_ms:
                done.append(ep)
    time.sleep(0.002)
for t, ep in episodes.items():
    ep["end"] = ep.get("last", (time.monotonic_ns(), ep["r0"], ep["q0"])); ep["tid"] = t
    ep["peers1"] = peers()
    ep["rings1"] = {fd: ring_state(fd) for fd in rings}
    if (ep["end"][0] - ep["t0"]) / 1e6 >= min_ms:
        done.append(ep)
out = proc.stdout.read()
for line in out.splitlines():
    if "Latency " in line or "Requests/sec" in line or " 99%" in line:
        print("#", line.strip())
span = (time.monotonic_ns() - t_start) / 1e9
print(f"# samples={nsamples} ({nsamples / span:.0f}/s) executors={','.join(f'{t}={comms[t]}' for t in execs)}")
for ep in done:
    n0, r0, q0 = ep["t0"], ep["r0"], ep["q0"]
    n1, r1, q1 = ep["end"]
    ms = (n1 - n0) / 1e6; rq = (q1 - q0) / 1e6
    print(f"EPISODE {comms[ep['tid']]}({ep['tid']}) at +{(n0 - t_start) / 1e9:.2f}s: {ms:.0f} ms, "
          f"runnable {rq:.0f} ms, ran {(r1 - r0) / 1e6:.1f} ms")
    print(f"   states {dict(ep['states'])} wchan {dict(ep['wchan'])} syscall {dict(ep['sys'])}")
    for s, k in ep["stacks"].most_common(3):
        print(f"   stack x{k}: {s}")
    print(f"   other threads (R/D or trim) {dict(ep['others'].most_common(8))}")
    sm = ep["samples"]
    if sm:
        first = set(sm[0][1][0]); alls = set(first)
        for _, s in sm[1:]:
            alls &= set(s[0])
        series = " ".join(f"{len(s[0])}/{len(s[1])}" for _, s in sm[:: max(1, len(sm) // 12)])
        print(f"   sockets: {len(sm)} samples; client rq>0 / backend rq>0 over time: {series}")
        fds = {i: ep["fdmap"][i] for i in alls if i in ep["fdmap"]}
        t_rel = ((n0 - t_start) / 1e9, (n1 - t_start) / 1e9)
        print(f"   unread client fds (+{t_rel[0]:.2f}..+{t_rel[1]:.2f}s, monotonic {n0}..{n1}): {','.join(map(str, sorted(fds.values())))}")
        print(f"   client sockets unread in every sample: {len(alls)} (bytes at first {sum(sm[0][1][0].get(i, 0) for i in alls)}); "
              f"backend rq>0 in every sample: {len(set.intersection(*[set(s[1]) for _, s in sm]))}")
    if "peers1" in ep:
        print("   meanwhile: " + " ".join(
            f"{k} ran {(ep['peers1'][k][0] - v[0]) / 1e6:.0f} ms, runnable {(ep['peers1'][k][1] - v[1]) / 1e6:.0f} ms;"
            for k, v in ep["peers0"].items() if k in ep["peers1"]))
    if "fdinfo" in ep:
        fd, info = ep["fdinfo"]
        lines = info.splitlines()
        head = {l.split(":")[0]: l.split(":", 1)[1].strip() for l in lines if ":" in l and not l.startswith(" ")}
        i = next((k for k, l in enumerate(lines) if l.startswith("PollList")), None)
        polls = collections.Counter()
        over = 0
        if i is not None:
            for l in lines[i + 1:]:
                if l.startswith("CqOverflowList"):
                    over = -1
                    continue
                if over < 0 or over > 0:
                    over = over - 1 if over < 0 else over + 1
                    continue
                polls[l.strip()] += 1
        print(f"   ring fd {fd} at 150 ms: " + " ".join(f"{k}={head.get(k)}" for k in ("SqHead", "SqTail", "CachedSqHead", "CqHead", "CqTail", "CachedCqTail", "SQEs", "CQEs")))
        print(f"   ring fd {fd} armed (PollList): {sum(polls.values())} {dict(polls.most_common(6))}; overflow lines {abs(over) - 1 if over else 0}")
        open(f"/tmp/c200_park_fdinfo.{ep['tid']}.{n0}", "w").write(info)
    for fd in sorted(ep["rings0"]):
        a, b = ep["rings0"][fd], ep["rings1"].get(fd, {})
        if a:
            print(f"   ring fd {fd}: Cq head/tail {a.get('CqHead')}/{a.get('CqTail')} -> {b.get('CqHead')}/{b.get('CqTail')}, "
                  f"Sq head/tail {a.get('SqHead')}/{a.get('SqTail')} -> {b.get('SqHead')}/{b.get('SqTail')}")
print(f"# episodes>={min_ms:.0f}ms: {len(done)}")
