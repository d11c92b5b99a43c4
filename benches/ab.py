#!/usr/bin/env python3
"""A/B: two corepin binaries measured in alternating rounds on this machine.

Usage: ab.py LOAD_BIN ROUNDS NAME=COREPIN_BIN NAME=COREPIN_BIN...
(benches/ab.sh builds the current tree and runs this against a saved
binary.)

Per round and binary, each on a fresh process (port 0, two workers, no
access log), measured in CPU time and memory rather than wall time, so
that a shared, loaded machine disturbs the figures as little as it can:
  proxy     corepin-load proxy, 50 keep-alive connections for 5 s, through
            corepin to corepin-load's echo server; corepin's user + system
            CPU time per request (from /proc)
  fanout    2,000 stream subscribers on one channel, 200 publishes of one
            small message; corepin's CPU time per delivery, from the first
            publish to the last delivery
  stream    RSS per idle stream subscriber (5,000 held; RSS after minus
            before, over N)
  ws        RSS per idle WebSocket subscriber (the same, on /ws)
  publish   corepin-load publish, 8 keep-alive publishers over 2,000
            channels with no subscribers, 5 s; CPU time per publish
  closed    one closed-loop publisher to 2,000 channels x 1 stream
            subscriber, 10,000 publishes; CPU time per publish (each one
            routed, delivered and written: the whole publish path)
Prints every run as a JSON line, then the medians per binary. CASES (env,
space-separated) picks cases; the default is every one.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(binary, route, tmp):
    cfg = os.path.join(tmp, "ab.toml")
    with open(cfg, "w") as f:
        f.write("[log]\naccess_log = false\n[limits]\nmax_connections = 12000\n")
    p = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--control-http", "127.0.0.1:0",
         "--control-socket", "", "--workers", "2", "--route", route, "--config", cfg],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = cport = None
    for line in p.stderr:
        m = re.search(r"listening on 127.0.0.1:(\d+) \((clients|control http)\)", line)
        if m and m.group(2) == "clients":
            port = int(m.group(1))
        elif m:
            cport = int(m.group(1))
        if "running on" in line:
            break
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    time.sleep(0.3)
    return p, port, cport


def stop(p):
    p.terminate()
    p.wait()


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def proxy(load, binary, tmp):
    echo = subprocess.Popen([load, "echo-server", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    backend = int(echo.stdout.readline())
    p, port, _ = start(binary, f"* 127.0.0.1:{backend}", tmp)
    c0 = cpu_s(p.pid)
    r = run_json([load, "proxy", "--to", f"127.0.0.1:{port}", "--path", "/x", "--conns", "50",
                  "--threads", "2", "--seconds", "5", "--warmup-s", "0"])
    c1 = cpu_s(p.pid)
    stop(p)
    echo.terminate()
    echo.wait()
    n = r.get("requests") or r.get("ok") or 0
    return {"requests": n, "cpu_s": round(c1 - c0, 2),
            "us_per_request": round((c1 - c0) * 1e6 / max(n, 1), 3)}


def fanout(load, binary, tmp, channels=1, messages=200):
    """2,000 stream subscribers over CHANNELS channels, MESSAGES publishes."""
    p, port, cport = start(binary, "* test", tmp)
    r = run_json([load, "fanout", "--to", f"127.0.0.1:{port}", "--publish-to", f"127.0.0.1:{cport}",
                  "--subscribers", "2000", "--channels", str(channels), "--messages", str(messages),
                  "--rate", "4000", "--settle-ms", "500", "--grace-ms", "1000", "--timeout-s", "120",
                  "--cpu-pids", str(p.pid)])
    stop(p)
    d = r.get("delivered") or 0
    cpu = r.get("server_cpu_seconds") or 0
    return {"delivered": d, "lost": r.get("lost"), "cpu_s": round(cpu, 3),
            "us_per_delivery": round(cpu * 1e6 / max(d, 1), 4),
            "us_per_publish": round(r.get("server_cpu_us_per_publish") or 0, 3)}


def publish(load, binary, tmp):
    p, _, cport = start(binary, "* test", tmp)
    r = run_json([load, "publish", "--to", f"127.0.0.1:{cport}", "--conns", "8", "--channels", "2000",
                  "--seconds", "5", "--cpu-pids", str(p.pid)])
    stop(p)
    return {"published": r.get("published"), "cpu_s": r.get("server_cpu_seconds"),
            "us_per_publish": round(r.get("server_cpu_us_per_publish") or 0, 3)}


def held_rss(load, p, port, n, tmp, args, rate):
    """Holds n subscribers on `port` (`corepin-load subscribe` with
    `args`) and returns the server's RSS growth per subscriber; stops
    the server."""
    time.sleep(0.5)
    before = rss_kib(p.pid)
    ready = os.path.join(tmp, "ready")
    if os.path.exists(ready):
        os.remove(ready)
    holder = subprocess.Popen([load, "subscribe", "--to", f"127.0.0.1:{port}", *args,
                               "--subscribers", str(n), "--rate", str(rate), "--hold-s", "3",
                               "--ready-file", ready, "--timeout-s", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if os.path.exists(ready):
            break
        time.sleep(0.1)
    time.sleep(1)
    after = rss_kib(p.pid)
    holder.wait()
    stop(p)
    return {"subscribers": n, "kib_per_subscriber": round((after - before) / n, 3)}


def idle(load, binary, tmp, kind):
    p, port, _ = start(binary, "* test", tmp)
    return held_rss(load, p, port, 5000, tmp, ["--kind", kind], 5000)


def main():
    load, rounds = sys.argv[1], int(sys.argv[2])
    bins = [a.split("=", 1) for a in sys.argv[3:]]
    cases = {"proxy": (lambda b, t: proxy(load, b, t), "us_per_request", "CPU µs per proxied request"),
             "fanout": (lambda b, t: fanout(load, b, t), "us_per_delivery", "CPU µs per delivery"),
             "stream": (lambda b, t: idle(load, b, t, "stream"), "kib_per_subscriber", "KiB per idle stream"),
             "ws": (lambda b, t: idle(load, b, t, "ws"), "kib_per_subscriber", "KiB per idle WebSocket"),
             "publish": (lambda b, t: publish(load, b, t), "us_per_publish", "CPU µs per publish, no subscribers"),
             "closed": (lambda b, t: fanout(load, b, t, channels=2000, messages=10000), "us_per_publish", "CPU µs per publish, 2,000 × 1")}
    chosen = os.environ.get("CASES", " ".join(cases)).split()
    results = {name: {c: [] for c in chosen} for name, _ in bins}
    tmp = tempfile.mkdtemp(prefix="corepin-ab-")
    for rnd in range(rounds):
        # Alternate which binary goes first, so neither always meets the
        # same moment of the machine's load.
        order = bins if rnd % 2 == 0 else bins[::-1]
        for case in chosen:
            for name, binary in order:
                r = cases[case][0](binary, tmp)
                r.update({"round": rnd, "binary": name, "case": case,
                          "load": os.getloadavg()[0]})
                print(json.dumps(r), flush=True)
                results[name][case].append(r)
    print("\n| binary | " + " | ".join(cases[c][2] for c in chosen) + " | load avg |")
    print("|---|" + "---|" * (len(chosen) + 1))
    for name, _ in bins:
        med = [statistics.median(r[cases[c][1]] for r in results[name][c]) for c in chosen]
        loads = [r["load"] for c in chosen for r in results[name][c]]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in med)
              + f" | {statistics.median(loads):.1f} |")

if __name__ == "__main__":
    main()
