#!/usr/bin/env bash
# The quick gates, run before the slow suite: formatting (rustfmt.toml) and clippy
# with warnings as errors, over every crate and target of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

for component in rustfmt clippy; do
    rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
