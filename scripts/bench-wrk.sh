#!/usr/bin/env bash
# HTTP load from an out-of-process generator (wrk, Debian package `wrk`): starts a
# release `mneme serve` on a fresh data directory, opens 10k accounts (or
# $MNEME_ACCOUNTS), then runs 64 keep-alive connections of deposits. Compare with the
# in-process rows of scripts/bench.sh (same machine, same run conditions).
#   scripts/bench-wrk.sh [connections] [seconds] [round-robin|random]
# `random` sends each deposit to a uniformly random account (the tail-latency case:
# a command may wait behind its entity's write in flight).
# MNEME_BIN names another `mneme` binary to measure (e.g. an earlier build), with
# MNEME_COMPONENTS its components directory. MNEME_SERVE_ARGS adds flags to
# `mneme serve`, e.g. "--journal postgres --postgres-url URL" (a fresh database).
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-64}
secs=${2:-8}
keys=${3:-round-robin}
case "$keys" in
  round-robin) script=bench/wrk/deposit.lua ;;
  random) script=bench/wrk/deposit-random.lua ;;
  *) echo "bench-wrk: keys must be round-robin or random" >&2; exit 2 ;;
esac
command -v wrk >/dev/null || { echo "bench-wrk: install wrk (apt-get install wrk)" >&2; exit 1; }
bin=${MNEME_BIN:-target/release/mneme}
components=${MNEME_COMPONENTS:-target/components}
if [ -z "${MNEME_BIN:-}" ]; then
  scripts/build-components.sh >/dev/null
  cargo build --release -p mneme --bins
fi
data=$(mktemp -d)
# The bank account alone (the components directory also holds the example projection,
# which would follow the deposits).
mkdir "$data.components"
cp "$components/bank-account.wasm" "$data.components/"
port=$((20000 + RANDOM % 20000))
"$bin" serve --data "$data" --components "$data.components" --listen 127.0.0.1:$port --watch-secs 0 ${MNEME_SERVE_ARGS:-} &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data" "$data.metrics" "$data.components" "$data.sync" "$data.sync-probe"' EXIT
ready=no
for _ in $(seq 600); do
  if curl -sf -m 1 http://127.0.0.1:$port/health >/dev/null; then ready=yes; break; fi
  sleep 0.1
done
[ $ready = yes ] || { echo "bench-wrk: the server did not become ready within 60 s" >&2; exit 1; }
accounts=${MNEME_ACCOUNTS:-10000}
wrk -t1 -c64 -d$(( 4 * (accounts + 9999) / 10000 ))s -s bench/wrk/create.lua http://127.0.0.1:$port >/dev/null
curl -sf http://127.0.0.1:$port/metrics > "$data.metrics"
# The disk's own sync latency over the same seconds, on the data directory's file
# system: the floor under the max latency of a reply that waits for its sync.
python3 scripts/sync-probe.py "$data.sync-probe" "$secs" > "$data.sync" &
probe=$!
wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$script" http://127.0.0.1:$port
wait $probe
cat "$data.sync"
# Where the time went, from the server's own histograms (the deposits only, not the
# create phase): command latency inside the server, time in a shard's queue and in
# the guest, the journal's sync, events per write. Quantiles are bucket upper bounds.
curl -sf http://127.0.0.1:$port/metrics | python3 scripts/metrics-summary.py "$data.metrics"
