#!/usr/bin/env python3
"""The disk's own sync latency, measured beside a benchmark run: every 10 ms,
append 4 KiB to FILE and fdatasync it, for SECS seconds; then print how many,
p50, p99 and max. A reply that waits for its events to be durable cannot come
back faster than the slowest sync of the run, so the max here is the floor
under any durable store's max latency on this disk over the same seconds.

    scripts/sync-probe.py FILE SECS
"""
import os
import sys
import time

path, secs = sys.argv[1], float(sys.argv[2])
block = b"\0" * 4096
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
took = []
end = time.monotonic() + secs
try:
    while time.monotonic() < end:
        t = time.perf_counter()
        os.write(fd, block)
        os.fdatasync(fd)
        took.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.01)
finally:
    os.close(fd)
    os.unlink(path)
if not took:
    sys.exit("sync-probe: no sync completed")
took.sort()
q = lambda p: took[min(len(took) - 1, int(p * len(took)))]
print(f"raw fdatasync beside the run (4 KiB every 10 ms) n={len(took)}  "
      f"p50 {q(0.5):.2f} ms  p99 {q(0.99):.2f} ms  max {took[-1]:.2f} ms")
