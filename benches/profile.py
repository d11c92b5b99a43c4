#!/usr/bin/env python3
"""Where corepin's CPU goes per publish, from `perf script` output.

Each sample's stack is walked from the leaf towards the root; the first
frame that matches a rule names the sample's category (so a sample in the
kernel's TCP code under a wake-socket send counts as the wake-up, and one
in the executor's sleep counts as parking). With the CPU time the run cost
per publish, each category's share becomes microseconds per publish.

Usage: perf script -i perf.data | profile.py CPU_US_PER_PUBLISH [TITLE]
"""
import re
import sys

# (category, frame patterns), checked for each frame from the leaf up; the
# first rule any frame matches wins, so more specific rules come first.
RULES = [
    ("cross-core hand-off: wake socket send/receive", [r"\bunix_stream_(sendmsg|recvmsg|read_generic)\b"]),
    ("executor parking: membarrier, sleep, wake-up", [
        r"\b__x64_sys_membarrier\b", r"\bio_cqring_wait\b", r"\bschedule_hrtimeout", r"\bfinish_task_switch",
        r"\bsmp_call_function", r"\bmembarrier\b"]),
    ("TCP send: answers and deliveries (loopback receive included)", [r"\btcp_sendmsg\b", r"\b__tcp_push_pending_frames\b"]),
    ("TCP receive: requests", [r"\btcp_recvmsg\b", r"\b__x64_sys_recvfrom\b"]),
    ("io_uring: submit, poll, complete, cancel", [r"\bio_uring", r"\bio_submit_sqes\b", r"\bio_poll", r"\btctx_task_work",
                                                  r"\bio_async_cancel\b", r"\bio_timeout", r"\b__io_", r"\bio_issue_sqe\b"]),
    ("JSON parsing (publish items)", [r"corepin::codec::publish", r"serde_json::", r"serde_path_to_error", r"<serde"]),
    ("HTTP parsing and the control API", [r"corepin::codec::http1", r"\bhttparse::", r"corepin::control::", r"corepin::buf::"]),
    ("bus: routing, queues, sequencing, encoding", [r"corepin::bus::", r"crossbeam_channel::", r"corepin::codec::response", r"corepin::codec::chunked"]),
    ("delivery: subscriptions, plans, subscriber tasks", [r"corepin::subs::", r"corepin::conn::grip", r"corepin::shard::Shard::drain"]),
    ("executor: glommio task scheduling", [r"\bglommio::", r"corepin::shard::"]),
    ("memory allocation", [r"\b(malloc|free|cfree|realloc|calloc|_int_malloc|_int_free|_int_realloc|malloc_consolidate|__rdl_alloc|__rust_alloc|__rust_dealloc)\b"]),
    ("other kernel: syscall entry/exit, interrupts", [r"\[kernel\.kallsyms\]"]),
]
COMPILED = [(name, [re.compile(p) for p in pats]) for name, pats in RULES]


def category(frames):
    for name, pats in COMPILED:
        for f in frames:
            if any(p.search(f) for p in pats):
                return name
    return "other user space (libc, vdso, unresolved)"


def main():
    per_pub = float(sys.argv[1])
    title = sys.argv[2] if len(sys.argv) > 2 else ""
    counts, total, frames = {}, 0, []
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                c = category(frames)
                counts[c] = counts.get(c, 0) + 1
                total += 1
            frames = []
            continue
        if line.startswith("\t") or line.startswith(" "):
            frames.append(line.strip())
    if frames:
        c = category(frames)
        counts[c] = counts.get(c, 0) + 1
        total += 1
    if not total:
        print("no samples")
        return
    if title:
        print(f"{title}: {per_pub:.1f} µs of CPU per publish, {total} samples")
    print("| where | share | µs per publish |")
    print("|---|---:|---:|")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {100.0 * n / total:.1f}% | {per_pub * n / total:.1f} |")


main()
