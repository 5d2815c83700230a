#!/usr/bin/env bash
# Run every test: builds the Wasm components from source first (installing the
# wasm32-wasip2 target if needed), then the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-components.sh
cargo build -p mneme --bins
cargo test --workspace "$@"
