#!/usr/bin/env bash
# Run the benchmark: every figure next to its same-run baseline (BENCHMARKS.md).
#   scripts/bench.sh [--quick] [--only NAME]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-components.sh >/dev/null
cargo build --release -p mneme-bench -p mneme
exec target/release/mneme-bench "$@"
