"""One result line of a WebSocket echo round for the bench scripts.

Usage: ws_echo_line.py PREFIX ROUND NAME NS_BEFORE NS_AFTER LOAD JSON
PREFIX is put first (e.g. "section=ws" or ""); NS_* are the server's CPU
nanoseconds before and after the round; JSON is `corepin-load ws-echo`'s
summary. Prints key=value fields, CPU microseconds per round trip included.
"""
import json
import sys

prefix, r, n, n0, n1, load, text = sys.argv[1:]
try:
    d = json.loads(text)
except ValueError:
    d = {}
trips = d.get("round_trips") or 0
us = (int(n1) - int(n0)) / 1e3 / trips if trips else float("nan")
fields = [prefix] if prefix else []
fields += [
    f"round={r}",
    f"name={n}",
    "c=50",
    f"rps={d.get('round_trips_per_sec', float('nan')):.0f}",
    f"trips={trips}",
    f"cpu_us={us:.2f}",
    f"failed={d.get('handshake_failures')}",
    f"closed={d.get('closed')}",
    f"load={load}",
]
print(" ".join(fields))
