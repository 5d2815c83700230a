#!/usr/bin/env python3
"""Summarise mneme's histograms from a /metrics text on stdin: count, mean, and the
p50/p99/p99.9/max bucket bounds of command latency, time in a shard's queue, guest call time, journal write
(sync) time and events per write. Used by scripts/bench-wrk.sh.
  metrics-summary.py [BEFORE] < AFTER   # with BEFORE (an earlier /metrics text of the same
                                        # process): only what was observed in between"""
import re
import sys

FAMILIES = [
    ("mneme_command_seconds", "command (accepted -> outcome)", "ms"),
    ("mneme_command_queue_seconds", "shard queue (accepted -> taken up)", "ms"),
    ("mneme_guest_call_seconds", "guest call", "ms"),
    ("mneme_journal_write_seconds", "journal write (append + sync)", "ms"),
    ("mneme_journal_write_events", "events per write", ""),
]
LINE = re.compile(r'^(\w+)_(bucket|sum|count)(?:\{(.*)\})? (\S+)$')


def parse(text):
    """{family: {"buckets": {le: n}, "sum": x, "count": n}}, summed over labels."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        name, part, labels, value = m.groups()
        h = out.setdefault(name, {"buckets": {}, "sum": 0.0, "count": 0.0})
        if part == "bucket":
            le = re.search(r'le="([^"]+)"', labels or "").group(1)
            bound = float("inf") if le == "+Inf" else float(le)
            h["buckets"][bound] = h["buckets"].get(bound, 0.0) + float(value)
        else:
            h[part] += float(value)
    return out


def quantile(h, q):
    total = h["count"]
    for bound in sorted(h["buckets"]):
        if h["buckets"][bound] >= q * total:
            return bound
    return float("inf")


def show(v, unit):
    if v == float("inf"):
        return "inf"
    return f"{v * 1000:.2f} ms" if unit == "ms" else f"{v:g}"


def minus(after, before):
    """The observations of `after` that `before` does not hold (histograms only grow)."""
    for name, h in after.items():
        b = before.get(name)
        if not b:
            continue
        h["buckets"] = {k: v - b["buckets"].get(k, 0.0) for k, v in h["buckets"].items()}
        h["sum"] -= b["sum"]
        h["count"] -= b["count"]
    return after


hist = parse(sys.stdin.read())
if len(sys.argv) > 1:
    with open(sys.argv[1]) as f:
        hist = minus(hist, parse(f.read()))
for name, what, unit in FAMILIES:
    h = hist.get(name)
    if not h or h["count"] == 0:
        continue
    mean = h["sum"] / h["count"]
    qs = "  ".join(f"p{int(q * 1000) / 10:g} <= {show(quantile(h, q), unit)}" for q in (0.5, 0.99, 0.999))
    qs += f"  max <= {show(quantile(h, 1.0), unit)}"
    print(f"{what:32} n={int(h['count'])}  mean {show(mean, unit)}  {qs}")
