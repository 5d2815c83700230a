#!/usr/bin/env bash
# Build the Python bank-account entity into a WebAssembly component:
#   target/components-polyglot/ (under $CARGO_TARGET_DIR if set): bank-account-python.wasm
# Needs componentize-py (scripts/install-guest-toolchains.sh installs it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${CARGO_TARGET_DIR:-$root/target}/components-polyglot/bank-account-python.wasm"

if ! command -v componentize-py >/dev/null 2>&1; then
  echo "error: componentize-py not found on PATH; run scripts/install-guest-toolchains.sh (or: pip install componentize-py)" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
# --stub-wasi: every WASI import becomes a trapping stub inside the component, so
# the component imports nothing but mneme:entity/host (mneme links no WASI).
componentize-py -d "$root/wit/entity.wit" -w entity-with-fast-paths \
  componentize --stub-wasi -p "$here" -o "$out.tmp" bank_account
mv "$out.tmp" "$out"
echo "built $out"
