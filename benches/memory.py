#!/usr/bin/env python3
"""Memory after peaks: does corepin give memory back once a peak is over?

Usage: memory.py LOAD_BIN NAME=COREPIN_BIN [NAME=COREPIN_BIN...]
(benches/memory.sh builds the allocator variants and runs this.)

For each corepin binary, on its own fresh process (port 0, two cores):
  connections  corepin-load holds 19,000 stream subscribers for 5 s, then
               leaves; RSS before, at the peak, and 15 s and 30 s after
               they left.
  backlog      100 stream subscribers on 100 channels never read
               (SO_RCVBUF 4 KiB) while 8 x 1 MiB is published to each
               channel (the kernel's socket buffers take the first few
               MB); they are dropped (queue over 1 MiB, or the 3 s write
               deadline); RSS at the peak, 15 s and 30 s after the last drop.
  cpu          corepin-load proxy: 10 s of keep-alive GETs answered by
               the test target; corepin's CPU time per request (user +
               system). The machine is shared: a sanity check, not a
               benchmark.
Prints one JSON line per binary, then a Markdown table.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")
SLOW = 100


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


class Sampler:
    """Samples a process's RSS every 20 ms; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.02)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def start(binary, config):
    path = tempfile.mktemp(suffix=".toml")
    with open(path, "w") as f:
        f.write(config)
    p = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--control-http", "127.0.0.1:0",
         "--control-socket", "", "--workers", "2", "--route", "* test",
         "--config", path],
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
    time.sleep(0.5)
    return p, port, cport


def publish(cport, items):
    body = json.dumps({"items": items}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{cport}/publish/", data=body), timeout=60).read()


def metric(cport, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{cport}/metrics", timeout=10).read().decode()
    return sum(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines()
               if l.startswith(name + "{") or l.startswith(name + " "))


def connections(load, binary):
    # The cap derived from a 20,000 file limit is below 19,000: set it.
    p, port, cport = start(binary, "[limits]\nmax_connections = 19500\n")
    before = rss_kib(p.pid)
    s = Sampler(p.pid)
    subprocess.run([load, "subscribe", "--to", f"127.0.0.1:{port}", "--subscribers", "19000",
                    "--kind", "stream", "--rate", "10000", "--hold-s", "5", "--timeout-s", "60"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    while metric(cport, "corepin_connections") > 0:
        time.sleep(0.1)
    peak = s.done()
    time.sleep(15)
    after = rss_kib(p.pid)
    time.sleep(15)
    after30 = rss_kib(p.pid)
    p.terminate()
    p.wait()
    return {"before_kib": before, "peak_kib": peak, "after_kib": after, "after30_kib": after30}


def backlog(binary):
    p, port, cport = start(
        binary,
        "[timeouts]\nclient_write = 3\n[publish]\nmax_body_bytes = 8388608\n")
    before = rss_kib(p.pid)
    socks = []
    for i in range(SLOW):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(("127.0.0.1", port))
        c.sendall(f"GET /stream?channel=b{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        socks.append(c)
    while metric(cport, "corepin_subscriptions") < SLOW:
        time.sleep(0.1)
    s = Sampler(p.pid)
    chunk = "m" * (1 << 20)
    for round_ in range(8):
        for i in range(0, SLOW, 4):
            publish(cport, [{"channel": f"b{j}", "formats": {"http-stream": {"content": chunk}}}
                            for j in range(i, min(i + 4, SLOW))])
    deadline = time.time() + 60
    while metric(cport, "corepin_subscriber_drops_total") < SLOW and time.time() < deadline:
        time.sleep(0.1)
    peak = s.done()
    for c in socks:
        c.close()
    time.sleep(15)
    after = rss_kib(p.pid)
    time.sleep(15)
    after30 = rss_kib(p.pid)
    p.terminate()
    p.wait()
    return {"before_kib": before, "peak_kib": peak, "after_kib": after, "after30_kib": after30}


def cpu(load, binary):
    p, port, cport = start(binary, "[log]\naccess_log = false\n")
    c0 = cpu_s(p.pid)
    out = subprocess.run([load, "proxy", "--to", f"127.0.0.1:{port}", "--path", "/nothing",
                          "--conns", "64", "--threads", "2", "--seconds", "10", "--warmup-s", "0"],
                         capture_output=True, text=True, check=False).stdout
    c1 = cpu_s(p.pid)
    p.terminate()
    p.wait()
    r = json.loads(out.strip().splitlines()[-1])
    requests = r.get("requests") or r.get("ok") or 0
    return {"requests": requests, "cpu_s": round(c1 - c0, 2),
            "cpu_us_per_request": round((c1 - c0) * 1e6 / max(requests, 1), 2)}


def main():
    load = sys.argv[1]
    rows = []
    for arg in sys.argv[2:]:
        name, binary = arg.split("=", 1)
        r = {"allocator": name, "connections": connections(load, binary),
             "backlog": backlog(binary), "cpu": cpu(load, binary)}
        print(json.dumps(r), flush=True)
        rows.append(r)
    mb = lambda k: f"{k / 1024:.0f}"
    print("\n| allocator | 19k conns: peak / 15 s / 30 s after (MB) | backlog: peak / 15 s / 30 s after (MB) | CPU µs per request |")
    print("|---|---|---|---|")
    for r in rows:
        c, b = r["connections"], r["backlog"]
        print(f"| {r['allocator']} | {mb(c['peak_kib'])} / {mb(c['after_kib'])} / {mb(c['after30_kib'])} | "
              f"{mb(b['peak_kib'])} / {mb(b['after_kib'])} / {mb(b['after30_kib'])} | {r['cpu']['cpu_us_per_request']} |")


if __name__ == "__main__":
    main()
