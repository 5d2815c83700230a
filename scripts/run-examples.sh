#!/usr/bin/env bash
# Start mneme with the example entities and projection on the embedded store.
#   scripts/run-examples.sh [extra `mneme serve` flags]
# Data goes to ./mneme-data; the server listens on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-components.sh
cargo build --release -p mneme --bins
exec target/release/mneme serve --data mneme-data --components target/components "$@"
