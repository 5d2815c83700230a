#!/usr/bin/env bash
# Build {{name}}.wasm from {{module}}.c: clang-19 (wasm32-wasi, reactor), wit-bindgen's
# C generator and wasm-tools (Debian: clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc;
# cargo install wit-bindgen-cli wasm-tools).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
CC="${CC:-clang-19}"
for tool in "$CC" wit-bindgen wasm-tools; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
work="$here/build"
rm -rf "$work" && mkdir -p "$work"
wit-bindgen c "$here/wit" --world entity --out-dir "$work/bindings" >/dev/null
"$CC" --target=wasm32-wasi -mexec-model=reactor -O2 -std=c11 -Wall -Wextra \
  -Wno-unused-parameter -Wno-missing-field-initializers -I "$work/bindings" -I "$here" \
  "$here/{{module}}.c" "$work/bindings/entity.c" "$work/bindings/entity_component_type.o" \
  -Wl,--strip-debug -o "$work/core.wasm"
# Only allocation and string functions of libc: no WASI import, no adapter needed.
if wasm-tools print "$work/core.wasm" | grep -q '(import "wasi_'; then
  echo "error: the core module imports WASI functions (use no I/O functions)" >&2
  exit 1
fi
wasm-tools component new "$work/core.wasm" -o "$here/{{name}}.wasm"
echo "built $here/{{name}}.wasm"
