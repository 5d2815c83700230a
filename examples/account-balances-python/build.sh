#!/usr/bin/env bash
# Build the Python account-balances projection into a WebAssembly component:
#   target/components-polyglot/ (under $CARGO_TARGET_DIR if set): account-balances-python.wasm
# Needs componentize-py (scripts/install-guest-toolchains.sh installs it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${CARGO_TARGET_DIR:-$root/target}/components-polyglot/account-balances-python.wasm"

if ! command -v componentize-py >/dev/null 2>&1; then
  echo "error: componentize-py not found on PATH; run scripts/install-guest-toolchains.sh (or: pip install componentize-py)" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
# The `projection` world of wit/projection.wit. --stub-wasi: every WASI import
# becomes a trapping stub inside the component, so it imports nothing but
# mneme:projection/view and mneme:projection/host (mneme links no WASI).
componentize-py -d "$root/wit/projection.wit" -w projection \
  componentize --stub-wasi -p "$here" -o "$out.tmp" account_balances
mv "$out.tmp" "$out"
echo "built $out"
