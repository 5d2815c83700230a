#!/usr/bin/env bash
# HTTP load from an out-of-process generator (wrk, Debian package `wrk`): starts a
# release `mneme serve` on a fresh data directory, opens 10k accounts, then runs
# 64 keep-alive connections of deposits. Compare with the in-process rows of
# scripts/bench.sh (same machine, same run conditions).
#   scripts/bench-wrk.sh [connections] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-64}
secs=${2:-8}
command -v wrk >/dev/null || { echo "bench-wrk: install wrk (apt-get install wrk)" >&2; exit 1; }
scripts/build-components.sh >/dev/null
cargo build --release -p mneme --bins
data=$(mktemp -d)
port=18091
target/release/mneme serve --data "$data" --components target/components --listen 127.0.0.1:$port --watch-secs 0 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 0.1; done
wrk -t1 -c64 -d4s -s bench/wrk/create.lua http://127.0.0.1:$port >/dev/null
wrk -t1 -c"$conns" -d"${secs}s" --latency -s bench/wrk/deposit.lua http://127.0.0.1:$port
