#!/usr/bin/env bash
# Build {{name}}.wasm (rustup target add wasm32-wasip2).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --profile wasm --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-$here/target}/wasm32-wasip2/wasm/{{crate}}.wasm" "$here/{{name}}.wasm"
echo "built $here/{{name}}.wasm"
