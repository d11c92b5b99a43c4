#!/usr/bin/env python3
"""A/B for the TLS listener: two corepin binaries in alternating rounds.

Usage: tls_ab.py LOAD_BIN ROUNDS NAME=COREPIN_BIN NAME=COREPIN_BIN...

The TLS counterpart of benches/ab.py (whose helpers it uses). Per round and
binary, each on a fresh process (port 0, two workers, no access log, one
self-signed ECDSA P-256 certificate made at start), measured in CPU time
and memory rather than wall time, so a shared, loaded machine disturbs the
figures as little as it can:
  keepalive  corepin-load proxy --tls, 50 keep-alive connections for 5 s,
             through corepin's TLS listener to corepin-load's echo server;
             corepin's user + system CPU time per request (from /proc)
  wss        corepin-load ws-echo --tls, 50 connections for 5 s to the
             echo server through corepin; CPU time per round trip
  idle       RSS per idle TLS stream subscriber (2,000 held; RSS after
             minus before, over N), and the same for plaintext
             subscribers on the same binary (plain), so the ratio is at hand
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import cpu_s, held_rss, run_json, stop  # noqa: E402


def make_cert(tmp):
    crt, key = os.path.join(tmp, "localhost.crt"), os.path.join(tmp, "localhost.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-keyout", key, "-out", crt], check=True, capture_output=True)
    return crt, key


def start(binary, routes, tmp, crt, key):
    cfg = os.path.join(tmp, "ab.toml")
    with open(cfg, "w") as f:
        f.write("[log]\naccess_log = false\n[limits]\nmax_connections = 12000\n")
    args = [binary, "--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0", "--tls-cert", crt,
            "--tls-key", key, "--control-http", "127.0.0.1:0", "--control-socket", "",
            "--workers", "2", "--config", cfg]
    for r in routes:
        args += ["--route", r]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ports = {}
    for line in p.stderr:
        m = re.search(r"listening on 127.0.0.1:(\d+) \(([a-zA-Z ]+)\)", line)
        if m:
            ports[m.group(2)] = int(m.group(1))
        if "running on" in line:
            break
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    time.sleep(0.3)
    return p, ports


def echo_server(load):
    echo = subprocess.Popen([load, "echo-server", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    return echo, int(echo.stdout.readline())


def traffic(load, binary, tmp, cert, mode):
    echo, backend = echo_server(load)
    p, ports = start(binary, [f"* 127.0.0.1:{backend}"], tmp, *cert)
    tls = ["--to", f"127.0.0.1:{ports['TLS clients']}", "--tls", cert[0], "--sni", "localhost",
           "--conns", "50", "--seconds", "5"]
    c0 = cpu_s(p.pid)
    if mode == "keepalive":
        r = run_json([load, "proxy", *tls, "--path", "/x", "--threads", "2", "--warmup-s", "0"])
        n = r.get("requests") or r.get("ok") or 0
    else:
        r = run_json([load, "ws-echo", *tls, "--path", "/echo"])
        n = r.get("round_trips") or 0
    c1 = cpu_s(p.pid)
    stop(p)
    echo.terminate()
    echo.wait()
    return {"n": n, "cpu_s": round(c1 - c0, 2), "us_per_unit": round((c1 - c0) * 1e6 / max(n, 1), 3)}


def idle(load, binary, tmp, cert, tls):
    p, ports = start(binary, ["* test"], tmp, *cert)
    port = ports["TLS clients"] if tls else ports["clients"]
    extra = ["--tls", cert[0]] if tls else []
    return held_rss(load, p, port, 2000, tmp, extra, 2000)


def main():
    load, rounds = sys.argv[1], int(sys.argv[2])
    bins = [a.split("=", 1) for a in sys.argv[3:]]
    tmp = tempfile.mkdtemp(prefix="corepin-tls-ab-")
    cert = make_cert(tmp)
    cases = {"keepalive": (lambda b: traffic(load, b, tmp, cert, "keepalive"), "us_per_unit",
                           "CPU µs per keep-alive HTTPS request"),
             "wss": (lambda b: traffic(load, b, tmp, cert, "wss"), "us_per_unit",
                     "CPU µs per wss echo round trip"),
             "idle": (lambda b: idle(load, b, tmp, cert, True), "kib_per_subscriber",
                      "KiB per idle TLS subscriber"),
             "plain": (lambda b: idle(load, b, tmp, cert, False), "kib_per_subscriber",
                       "KiB per idle plaintext subscriber")}
    chosen = os.environ.get("CASES", " ".join(cases)).split()
    results = {name: {c: [] for c in chosen} for name, _ in bins}
    for rnd in range(rounds):
        order = bins if rnd % 2 == 0 else bins[::-1]
        for case in chosen:
            for name, binary in order:
                r = cases[case][0](binary)
                r.update({"round": rnd, "binary": name, "case": case, "load": os.getloadavg()[0]})
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
