#!/usr/bin/env bash
# Build {{name}}.wasm from {{name}}.js with ComponentizeJS (npm install, Node.js >= 18).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v node >/dev/null || { echo "node not found: install Node.js >= 18" >&2; exit 1; }
if [ ! -f "$here/node_modules/@bytecodealliance/componentize-js/package.json" ]; then
  npm install --prefix "$here" --no-audit --no-fund --loglevel=error
fi
node "$here/build.mjs" "$here/{{name}}.wasm.tmp"
mv "$here/{{name}}.wasm.tmp" "$here/{{name}}.wasm"
echo "built $here/{{name}}.wasm"
