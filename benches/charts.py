#!/usr/bin/env python3
"""Draws benchmark results as SVG charts for PERFORMANCE.md: per-peer bars
(the median of the rounds, with a whisker from the lowest to the highest
round) and latency distributions (p50, p99, p99.9 and max, where the data
has them). Everything is read from the results files, so a rerun of the
benchmark redraws the charts; the same input gives byte-identical SVGs.

Usage:
  charts.py compare benches/results/compare.jsonl OUTDIR
      -> compare-proxy.svg, compare-fanout.svg, compare-throughput.svg,
         compare-memory.svg, and compare-tls.svg / compare-publish.svg
         when the file has those sections
  charts.py uring benches/results/uring_corepin.txt OUTDIR
      -> uring-cpu.svg (and uring-churn.svg when it has churn lines)

Run through benches/charts.sh, which finds or installs matplotlib.
"""
import json
import math
import os
import statistics
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

# Reproducible SVGs: fixed ids, no date.
plt.rcParams["svg.hashsalt"] = "corepin"
plt.rcParams["svg.fonttype"] = "none"
plt.rcParams["font.size"] = 9
plt.rcParams["axes.spines.top"] = False
plt.rcParams["axes.spines.right"] = False

COLORS = {
    "corepin": "#1f6feb",
    "corepin uring": "#1f6feb",
    "corepin glommio": "#8fb8f5",
    "corepin WS-over-HTTP": "#8fb8f5",
    "corepin uring, glommio accept": "#b07aa1",
    "Pushpin": "#e8710a",
    "Pushpin as shipped": "#f5b37a",
    "Pushpin WS-over-HTTP": "#f5b37a",
    "nginx": "#2da44e",
    "nginx / nchan": "#2da44e",
    "nchan": "#2da44e",
    "raw io_uring probe": "#6e7781",
    "epoll probe": "#a0a7b0",
    "glommio probe": "#d0b07a",
    "no proxy (baseline)": "#c9ced4",
}


def plain_log(ax):
    """A log y axis labelled 1, 2, 5, 10, 20, 50... rather than 10^n."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def color(name):
    return COLORS.get(name, "#999999")


def stats(vals):
    """(median, low, high) of the rounds, or None."""
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def save(fig, outdir, name):
    path = os.path.join(outdir, name)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    print(f"charts: {path}")


def bars(ax, groups, series, title, unit, log=False, fmt="{:,.0f}"):
    """Grouped bars: groups (x labels), series [(name, [stats per group])].
    Each bar is the median, its whisker the rounds' min to max, its label
    the median."""
    series = [(n, v) for n, v in series if any(s is not None for s in v)]
    if not series:
        ax.set_visible(False)
        return
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for g, s in enumerate(vals):
            if s is None:
                continue
            xs.append(g - 0.4 + width * (i + 0.5))
            ys.append(s[0])
            lo.append(s[0] - s[1])
            hi.append(s[2] - s[0])
        ax.bar(xs, ys, width * 0.92, label=name, color=color(name),
               yerr=[lo, hi], error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
        for x, y in zip(xs, ys):
            ax.annotate(fmt.format(y), (x, y), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7, rotation=90 if len(series) * len(groups) > 8 else 0)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    if log:
        plain_log(ax)
    ax.margins(y=0.18)
    ax.legend(fontsize=7, frameon=False)


def percentiles(ax, series, title):
    """Latency distributions: one line per peer through p50, p99, p99.9,
    max (medians of the rounds), log scale."""
    labels = ["p50", "p99", "p99.9", "max"]
    keys = ["p50", "p99", "p999", "max"]
    drawn = False
    for name, rounds in series:
        pts = []
        for k in keys:
            s = stats([r.get(k) for r in rounds])
            pts.append(s[0] if s else None)
        if all(p is None for p in pts):
            continue
        xs = [i for i, p in enumerate(pts) if p is not None]
        ax.plot(xs, [pts[i] for i in xs], marker="o", label=name, color=color(name), linewidth=1.5)
        drawn = True
    if not drawn:
        ax.set_visible(False)
        return
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    plain_log(ax)
    ax.set_ylabel("ms (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", linewidth=0.3, alpha=0.5)
    ax.legend(fontsize=7, frameon=False)


# ------------------------------------------------------------- compare.jsonl

def compare(raw, outdir):
    rows = [json.loads(line) for line in open(raw) if line.strip()]

    def results(peer, case):
        return [r["result"] for r in rows if r["peer"] == peer and r["case"] == case and r["result"]]

    def med(peer, case, f):
        vals = []
        for r in results(peer, case):
            try:
                vals.append(f(r))
            except (KeyError, TypeError, ZeroDivisionError):
                pass
        return stats(vals)

    def lat(peer, case):
        return [r.get("latency_ms") or {} for r in results(peer, case)]

    cases = {r["case"] for r in rows}
    rps = lambda r: r["requests_per_sec"] if r["requests"] else None
    trips = lambda r: r["round_trips_per_sec"] if r["round_trips"] else None

    cpu = lambda r: r.get("server_cpu_us_per_unit")

    # Proxy: req/s, the proxy's CPU per request (the probes beside the
    # proxies) and the latency distribution.
    if "proxy" in cases:
        peers = [("corepin glommio", "corepin"), ("corepin uring", "corepin-uring"), ("nginx", "nginx"),
                 ("Pushpin", "pushpin"), ("raw io_uring probe", "probe-uring"), ("epoll probe", "probe-epoll"),
                 ("glommio probe", "probe-glommio"), ("no proxy (baseline)", "direct")]
        fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.6))
        bars(a, ["keep-alive GETs"], [(n, [med(p, "proxy", rps)]) for n, p in peers],
             "proxy: requests/s (median, min–max)", "req/s")
        bars(b, ["keep-alive GETs"], [(n, [med(p, "proxy", cpu)]) for n, p in peers if p != "direct"],
             "proxy: its CPU per request", "µs (log)", log=True, fmt="{:,.1f}")
        percentiles(c, [(n, lat(p, "proxy")) for n, p in peers if p != "direct"],
                    "proxy: latency distribution")
        save(fig, outdir, "compare-proxy.svg")

    # Fan-out: last delivery by size, and the latency distribution at the largest.
    sizes = sorted({int(c[4:]) for c in cases if c.startswith("one-")})
    if sizes:
        peers = [("corepin glommio", "corepin"), ("corepin uring", "corepin-uring"), ("Pushpin", "pushpin"),
                 ("Pushpin as shipped", "pushpin-shipped"), ("nchan", "nchan")]
        last = lambda r: r["first_publish_to_last_delivery_ms"] if r["delivered"] else None
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
        bars(a, [f"{n:,} streams" for n in sizes],
             [(name, [med(p, f"one-{n}", last) for n in sizes]) for name, p in peers],
             "one publish: first publish → last delivery", "ms (log)", log=True, fmt="{:,.0f}")
        big = sizes[-1]
        percentiles(b, [(name, lat(p, f"one-{big}")) for name, p in peers],
                    f"one publish to {big:,} streams: delivery latency")
        save(fig, outdir, "compare-fanout.svg")

    # Throughput: sustained deliveries/s and WebSocket echo round trips/s.
    if "sustained-10k" in cases or "ws-echo" in cases:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
        rate = lambda r: r["deliveries_per_sec"] if r["delivered"] else None
        bars(a, ["10k streams × 200 publishes"],
             [(n, [med(p, "sustained-10k", rate)]) for n, p in
              [("corepin glommio", "corepin"), ("corepin uring", "corepin-uring"), ("Pushpin", "pushpin"),
               ("Pushpin as shipped", "pushpin-shipped"), ("nchan", "nchan")]],
             "sustained fan-out: deliveries/s", "deliveries/s (log)", log=True)
        bars(b, ["passthrough", "WebSocket-over-HTTP"],
             [("corepin glommio", [med("corepin", "ws-echo", trips), med("corepin-over-http", "ws-echo", trips)]),
              ("corepin uring", [med("corepin-uring", "ws-echo", trips), None]),
              ("Pushpin", [med("pushpin", "ws-echo", trips), med("pushpin-over-http", "ws-echo", trips)]),
              ("nginx", [med("nginx", "ws-echo", trips), None]),
              ("no proxy (baseline)", [med("direct", "ws-echo", trips), None])],
             "WebSocket echo: round trips/s (50 connections)", "round trips/s")
        save(fig, outdir, "compare-throughput.svg")

    # Memory per idle subscriber.
    msizes = sorted({int(c[5:]) for c in cases if c.startswith("idle-")})
    if msizes:
        kib = lambda r: r["kib_per_subscriber"] if r["hold"].get("subscribed") else None
        fig, a = plt.subplots(1, 1, figsize=(6, 3.2))
        bars(a, [f"{n:,}" for n in msizes],
             [(name, [med(p, f"idle-{n}", kib) for n in msizes]) for name, p in
              [("corepin glommio", "corepin"), ("corepin uring", "corepin-uring"), ("Pushpin", "pushpin"),
               ("nchan", "nchan")]],
             "RSS per idle stream subscriber", "KiB", fmt="{:.1f}")
        a.set_xlabel("idle subscribers")
        save(fig, outdir, "compare-memory.svg")

    # TLS: req/s and server CPU per request for each handshake mode.
    tls = [("tls-keepalive", "keep-alive"), ("tls-resumed", "resumed handshake"),
           ("tls-full", "full handshake"), ("tls-ws-echo", "wss echo")]
    if any(c in cases for c, _ in tls):
        peers = [("corepin", "corepin"), ("Pushpin", "pushpin"), ("nginx", "nginx")]
        rate = lambda r: r.get("requests_per_sec") or r.get("round_trips_per_sec")
        cpu = lambda r: r.get("server_cpu_us_per_unit")
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
        bars(a, [l for _, l in tls], [(n, [med(p, c, rate) for c, _ in tls]) for n, p in peers],
             "TLS: requests (round trips)/s", "per second (log)", log=True)
        bars(b, [l for _, l in tls], [(n, [med(p, c, cpu) for c, _ in tls]) for n, p in peers],
             "TLS: server CPU per request (round trip)", "µs (log)", log=True, fmt="{:,.1f}")
        save(fig, outdir, "compare-tls.svg")

    # The publish path: publishes/s and server CPU per publish.
    pub = [("publish-wrk8", "wrk, 8 conns"), ("publish-wrk8-pipelined", "wrk, pipelined"),
           ("publish-load8", "corepin-load, 8"), ("closed-2000x1", "closed loop, 2,000×1"),
           ("rooms-max", "rooms, max")]
    if any(c in cases for c, _ in pub):
        peers = [("corepin", "corepin"), ("Pushpin", "pushpin"), ("nchan", "nchan")]
        cpu = lambda r: r.get("server_cpu_us_per_publish")
        fig, a = plt.subplots(1, 1, figsize=(8, 3.4))
        bars(a, [l for _, l in pub], [(n, [med(p, c, cpu) for c, _ in pub]) for n, p in peers],
             "publish path: server CPU per publish", "µs (log)", log=True, fmt="{:,.1f}")
        save(fig, outdir, "compare-publish.svg")


# ------------------------------------------------------- uring_corepin.txt

URING_NAMES = {
    "nginx": "nginx",
    "glommio": "corepin glommio",
    "uring": "corepin uring",
    "uring-b": "corepin uring, glommio accept",
    "uproxy": "raw io_uring probe",
}


def uring(path, outdir, b_name=None):
    lines = []
    for line in open(path):
        if line.startswith("section="):
            lines.append(dict(kv.split("=", 1) for kv in line.split() if "=" in kv))
    names = dict(URING_NAMES)
    if b_name:
        names["uring-b"] = b_name

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    def med(section, name, key, c=None):
        return stats([num(d.get(key)) for d in lines
                      if d["section"] == section and d["name"] == name and (c is None or d.get("c") == c)])

    present = lambda s: [n for n in names if any(d["section"] == s and d["name"] == n for d in lines)]

    if any(d["section"] in ("proxy", "ws", "fanout", "memory") for d in lines):
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), gridspec_kw={"width_ratios": [2, 1, 1, 1]})
        cs = sorted({d["c"] for d in lines if d["section"] == "proxy"}, key=int)
        bars(axes[0], [f"c={c}" for c in cs],
             [(names[n], [med("proxy", n, "cpu_us", c) for c in cs]) for n in present("proxy")],
             "proxy: CPU per request", "µs", fmt="{:.1f}")
        bars(axes[1], ["50 connections"],
             [(names[n], [med("ws", n, "cpu_us")]) for n in present("ws")],
             "WebSocket echo: CPU per round trip", "µs", fmt="{:.1f}")
        bars(axes[2], ["one channel"],
             [(names[n], [med("fanout", n, "cpu_us")]) for n in present("fanout")],
             "fan-out: CPU per delivery", "µs", fmt="{:.2f}")
        bars(axes[3], ["idle streams"],
             [(names[n], [med("memory", n, "kib")]) for n in present("memory")],
             "RSS per idle subscriber", "KiB", fmt="{:.2f}")
        save(fig, outdir, "uring-cpu.svg")

    if present("churn"):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        ns = present("churn")
        bars(axes[0], ["a new connection per request"],
             [(names[n], [med("churn", n, "cpu_us")]) for n in ns],
             "churn: CPU per request (= per connection)", "µs", fmt="{:.1f}")
        bars(axes[1], ["a new connection per request"],
             [(names[n], [med("churn", n, "rps")]) for n in ns],
             "churn: requests/s", "req/s")
        percentiles(axes[2], [(names[n], [{k: num(d.get(k)) for k in ("p50", "p99", "p999", "max")}
                                          for d in lines if d["section"] == "churn" and d["name"] == n])
                              for n in ns],
                    "churn: latency distribution")
        save(fig, outdir, "uring-churn.svg")


def main(argv):
    if len(argv) < 4 or argv[1] not in ("compare", "uring"):
        sys.exit(__doc__)
    kind, src, outdir = argv[1], argv[2], argv[3]
    os.makedirs(outdir, exist_ok=True)
    if kind == "compare":
        compare(src, outdir)
    else:
        uring(src, outdir, os.environ.get("B_NAME"))


if __name__ == "__main__":
    main(sys.argv)
