#!/usr/bin/env python3
"""Turns benches/compare.sh's raw results into the markdown table that
PERFORMANCE.md quotes: the median of the rounds for every peer and case,
and corepin's advantage over each peer as a ratio (above 1: corepin is
better, whichever direction "better" is for that measure). "corepin" is
the default data path (glommio's sockets); the `uring` column is corepin
on its own io_uring data path, where the section ran it. A second table
puts every proxy's CPU time per request beside its rate, with the proxy
probes (../shared/probes) as extra columns: the yardsticks for the data
paths (issue 16).

Usage: table.py RAW.jsonl OUT.md ROUNDS "SIZES"
"""
import json
import statistics
import sys

raw, out, rounds, sizes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
rows = [json.loads(line) for line in open(raw) if line.strip()]


def values(peer, case, f):
    vals = []
    for r in rows:
        if r["peer"] == peer and r["case"] == case and r["result"]:
            try:
                v = f(r["result"])
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            if v is not None:
                vals.append(v)
    return vals


def med(peer, case, f):
    v = values(peer, case, f)
    return statistics.median(v) if v else None


def delivered_pct(r):
    return 100.0 * r["delivered"] / r["expected"] if r.get("expected") else None


PEERS = [
    ("corepin", "corepin"),
    ("corepin-uring", "corepin `uring`"),
    ("pushpin", "Pushpin (limits raised)"),
    ("pushpin-shipped", "Pushpin as shipped"),
    ("nginx", "nginx / nchan"),
]
lines = [
    "| measure | " + " | ".join(name for _, name in PEERS)
    + " | corepin vs Pushpin | vs Pushpin as shipped | vs nginx / nchan |",
    "|---|" + "---:|" * (len(PEERS) + 3),
]


def row(label, cases, f, fmt, higher_better, show_pct=False):
    """cases: peer key -> (raw peer name, case)."""
    cells, got, pcts = [], {}, {}
    for key, _ in PEERS:
        if key not in cases:
            cells.append("–")
            continue
        peer, case = cases[key]
        v = med(peer, case, f)
        got[key] = v
        pct = med(peer, case, delivered_pct) if show_pct else None
        pcts[key] = pct
        text = "–" if v is None else fmt.format(v)
        if v is not None and pct is not None and pct < 99.95:
            text += f" ({pct:.1f}% delivered)" if pct < 10 else f" ({pct:.0f}% delivered)"
        cells.append(text)
    ratios = []
    c = got.get("corepin")
    for key in ("pushpin", "pushpin-shipped", "nginx"):
        p = got.get(key)
        if not c or not p:
            ratios.append("–")
            continue
        r = c / p if higher_better else p / c
        mark = "†" if pcts.get(key) is not None and pcts[key] < 99.95 else ""
        ratios.append(f"{r:.1f}×{mark}")
    lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


rps = lambda r: r["requests_per_sec"] if r["requests"] else None
p99 = lambda r: r["latency_ms"]["p99"]
proxies = ("corepin", "corepin-uring", "pushpin", "nginx")
cpu_unit = lambda r: r.get("server_cpu_us_per_unit")
row("proxy: keep-alive GETs, req/s", {k: (k, "proxy") for k in proxies}, rps, "{:,.0f}", True)
row("proxy: p99 latency, ms", {k: (k, "proxy") for k in proxies}, p99, "{:.2f}", False)
row("proxy: the proxy's CPU per request, µs", {k: (k, "proxy") for k in proxies}, cpu_unit, "{:.1f}", False)
tls_peers = ("corepin", "pushpin", "nginx")
for case, what in (("tls-keepalive", "keep-alive GETs"), ("tls-resumed", "a resumed handshake per GET"), ("tls-full", "a full handshake per GET")):
    row(f"TLS, {what}: req/s", {k: (k, case) for k in tls_peers}, rps, "{:,.0f}", True)
    row(f"TLS, {what}: server CPU per request, µs", {k: (k, case) for k in tls_peers}, cpu_unit, "{:,.1f}", False)
    row(f"TLS, {what}: p99, ms", {k: (k, case) for k in tls_peers}, p99, "{:.2f}", False)
tls_trips = lambda r: r["round_trips_per_sec"] if r["round_trips"] else None
row("TLS, WebSocket echo over wss: round trips/s", {k: (k, "tls-ws-echo") for k in tls_peers}, tls_trips, "{:,.0f}", True)
row("TLS, WebSocket echo over wss: server CPU per round trip, µs", {k: (k, "tls-ws-echo") for k in tls_peers}, cpu_unit, "{:,.1f}", False)

pubsub = {"corepin": "corepin", "corepin-uring": "corepin-uring", "pushpin": "pushpin", "pushpin-shipped": "pushpin-shipped", "nginx": "nchan"}
last = lambda r: r["first_publish_to_last_delivery_ms"] if r["delivered"] else None
for n in sizes:
    cases = {k: (v, f"one-{n}") for k, v in pubsub.items()}
    row(f"one publish to {int(n):,} streams: last delivery, ms", cases, last, "{:.1f}", False, True)
    row(f"one publish to {int(n):,} streams: p99, ms", cases, p99, "{:.1f}", False, True)
rate = lambda r: r["deliveries_per_sec"] if r["delivered"] else None
row("10k streams × 200 publishes: deliveries/s", {k: (v, "sustained-10k") for k, v in pubsub.items()}, rate, "{:,.0f}", True, True)

trips = lambda r: r["round_trips_per_sec"] if r["round_trips"] else None
row("WebSocket echo, passthrough: round trips/s", {k: (k, "ws-echo") for k in proxies}, trips, "{:,.0f}", True)
row("WebSocket echo, passthrough: the proxy's CPU per round trip, µs", {k: (k, "ws-echo") for k in proxies}, cpu_unit, "{:.1f}", False)
row("WebSocket echo, WebSocket-over-HTTP: round trips/s",
    {"corepin": ("corepin-over-http", "ws-echo"), "pushpin": ("pushpin-over-http", "ws-echo")}, trips, "{:,.0f}", True)

kib = lambda r: r["kib_per_subscriber"] if r["hold"].get("subscribed") else None
mem = {"corepin": "corepin", "corepin-uring": "corepin-uring", "pushpin": "pushpin", "nginx": "nchan"}
for n in sizes:
    row(f"RSS per idle stream subscriber at {int(n):,}, KiB", {k: (v, f"idle-{n}") for k, v in mem.items()}, kib, "{:.2f}", False)
tls_sizes = sorted({r["case"][len("tls-idle-"):] for r in rows if r["case"].startswith("tls-idle-")}, key=int)
for n in tls_sizes:
    row(f"RSS per idle TLS stream subscriber at {int(n):,}, KiB", {k: (v, f"tls-idle-{n}") for k, v in mem.items()}, kib, "{:.2f}", False)
    t, p = med("corepin", f"tls-idle-{n}", kib), med("corepin", f"idle-{n}", kib)
    if t and p:
        lines.append(f"| corepin at {int(n):,}: TLS ÷ plaintext RSS per idle subscriber | {t / p:.2f}× |" + " |" * (len(PEERS) + 2))

pubpeers = {"corepin": ("corepin",), "pushpin": ("pushpin",), "nginx": ("nchan",)}


def pubrow(label, case, f, fmt, higher_better, show_pct=False):
    row(label, {k: (v[0], case) for k, v in pubpeers.items()}, f, fmt, higher_better, show_pct)


pps = lambda r: r["publishes_per_sec"] if r.get("published") else None
cpu = lambda r: r.get("server_cpu_us_per_publish")
pubrow("8 keep-alive publishers (wrk), 2,000 channels, no subscribers: publishes/s", "publish-wrk8", pps, "{:,.0f}", True)
pubrow("— the same: server CPU per publish, µs", "publish-wrk8", cpu, "{:.1f}", False)
pubrow("— the same: wrk's own CPU per request, µs", "publish-wrk8", lambda r: r.get("client_cpu_us_per_request"), "{:.1f}", False)
pubrow("the same, pipelining 16 requests per write: publishes/s", "publish-wrk8-pipelined", pps, "{:,.0f}", True)
pubrow("— the same: server CPU per publish, µs", "publish-wrk8-pipelined", cpu, "{:.1f}", False)
pubrow("8 publishers (corepin-load), 2,000 channels, no subscribers: publishes/s", "publish-load8", pps, "{:,.0f}", True)
pubrow("— the same: server CPU per publish, µs", "publish-load8", cpu, "{:.1f}", False)
fpps = lambda r: r["publish"]["publishes_per_sec"] if r.get("published") else None
pubrow("one closed-loop publisher, 2,000 channels × 1 subscriber: publishes/s", "closed-2000x1", fpps, "{:,.0f}", True, True)
pubrow("— the same: server CPU per publish (and its deliveries), µs", "closed-2000x1", cpu, "{:.1f}", False, True)
pubrow("rooms (200 × 10), one publisher as fast as it goes: publishes/s", "rooms-max", fpps, "{:,.0f}", True, True)
pubrow("— the same: publish→delivery p50, ms", "rooms-max", lambda r: r["latency_ms"]["p50"], "{:.2f}", False, True)
pubrow("— the same: publish→delivery p99, ms", "rooms-max", p99, "{:.2f}", False, True)
pubrow("— the same: server CPU per publish (10 deliveries), µs", "rooms-max", cpu, "{:.1f}", False, True)
pubrow("rooms at half that rate: publishes/s", "rooms-half", fpps, "{:,.0f}", True, True)
pubrow("— the same: publish→delivery p50, ms", "rooms-half", lambda r: r["latency_ms"]["p50"], "{:.2f}", False, True)
pubrow("— the same: publish→delivery p99, ms", "rooms-half", p99, "{:.2f}", False, True)
pubrow("— the same: publish→delivery p99.9, ms", "rooms-half", lambda r: r["latency_ms"]["p999"], "{:.2f}", False, True)
pubrow("— the same: lost + out of order", "rooms-half", lambda r: r["lost"] + r["out_of_order"], "{:,.0f}", False)

baseline = []
d = med("direct", "proxy", rps)
if d:
    baseline.append(f"the backend alone (no proxy) {d:,.0f} req/s")
d = med("direct", "ws-echo", trips)
if d:
    baseline.append(f"the echo server alone {d:,.0f} WebSocket round trips/s")
lines.append("")
lines.append(
    f"Median of {rounds} rounds. Ratios: how many times better corepin is than that peer "
    "(higher req/s, deliveries/s or round trips/s; lower latency or memory); "
    "† the peer delivered less than every message, so its time is for what it delivered."
)
if baseline:
    lines.append("Baselines on the same machine: " + "; ".join(baseline) + ".")


def per_round_ratio(peer, base, case, f):
    """The median over rounds of PEER's value ÷ BASE's in the same round
    (the i-th result of each is the i-th round's)."""
    a, b = values(peer, case, f), values(base, case, f)
    rs = [x / y for x, y in zip(a, b) if x is not None and y]
    return statistics.median(rs) if rs else None


# Every proxy's CPU beside its rate, the probes as extra columns.
YARD = [
    ("nginx", "nginx"),
    ("corepin", "corepin `glommio`"),
    ("corepin-uring", "corepin `uring`"),
    ("probe-uring", "probe: raw io_uring"),
    ("probe-epoll", "probe: epoll"),
    ("probe-glommio", "probe: glommio `TcpStream`"),
    ("pushpin", "Pushpin"),
]
if any(r["case"] == "proxy" for r in rows):
    lines.append("")
    lines.append("Keep-alive GETs through each proxy (the same run): the probes of `../shared/probes` "
                 "are the least a proxy must do, driven three ways; ratios are per-round medians against nginx.")
    lines.append("")
    lines.append("| proxy: keep-alive GETs | " + " | ".join(n for _, n in YARD) + " |")
    lines.append("|---|" + "---:|" * len(YARD))

    def yrow(label, case, f, fmt, ratio=False):
        cells = []
        for key, _ in YARD:
            v = per_round_ratio(key, "nginx", case, f) if ratio else med(key, case, f)
            cells.append("–" if v is None else fmt.format(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    yrow("req/s", "proxy", rps, "{:,.0f}")
    yrow("req/s ÷ nginx's", "proxy", rps, "{:.2f}×", True)
    yrow("p99, ms", "proxy", p99, "{:.2f}")
    yrow("the proxy's CPU per request, µs", "proxy", cpu_unit, "{:.1f}")
    yrow("CPU per request ÷ nginx's", "proxy", cpu_unit, "{:.2f}×", True)
    yrow("WebSocket echo: round trips/s", "ws-echo", trips, "{:,.0f}")
    yrow("WebSocket echo: round trips/s ÷ nginx's", "ws-echo", trips, "{:.2f}×", True)
    yrow("WebSocket echo: CPU per round trip, µs", "ws-echo", cpu_unit, "{:.1f}")
    yrow("WebSocket echo: CPU per round trip ÷ nginx's", "ws-echo", cpu_unit, "{:.2f}×", True)
    d = med("direct", "proxy", cpu_unit)
    if d:
        lines.append("")
        lines.append(f"The backend's own CPU per request, no proxy in front: {d:.1f} µs.")
open(out, "w").write("\n".join(lines) + "\n")
