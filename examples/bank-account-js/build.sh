#!/usr/bin/env bash
# Build the JavaScript bank-account entity into a WebAssembly component:
#   target/components-polyglot/ (under $CARGO_TARGET_DIR if set): bank-account-js.wasm
# Needs node and this directory's npm packages (scripts/install-guest-toolchains.sh
# installs them with `npm install`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${CARGO_TARGET_DIR:-$root/target}/components-polyglot/bank-account-js.wasm"

if ! command -v node >/dev/null 2>&1; then
  echo "error: node not found on PATH; install Node.js >= 18 (scripts/install-guest-toolchains.sh)" >&2
  exit 1
fi
if [ ! -f "$here/node_modules/@bytecodealliance/componentize-js/package.json" ]; then
  echo "error: ComponentizeJS is not installed in $here/node_modules; run scripts/install-guest-toolchains.sh (or: npm install --prefix $here)" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
node "$here/build.mjs" "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
