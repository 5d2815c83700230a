#!/usr/bin/env bash
# Run every test. Installs what is missing (the wasm32-wasip2 target; the Python,
# JavaScript and C guest toolchains), builds every Wasm component from source, then
# runs the whole workspace's tests, including the cross-language conformance suite,
# then builds and tests a project of `mneme new` in every language.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-guest-toolchains.sh
scripts/build-components.sh
scripts/build-polyglot.sh
cargo build -p mneme --bins
cargo test --workspace "$@"
# What `mneme new` writes, in every language: built, tested, deployed.
scripts/test-scaffolds.sh
