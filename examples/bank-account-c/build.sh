#!/usr/bin/env bash
# Build the C bank-account entity into a WebAssembly component:
#   target/components-polyglot/ (under $CARGO_TARGET_DIR if set): bank-account-c.wasm
# Needs clang-19 + wasm-ld-19 + the wasm32 compiler-rt builtins + the wasi-libc
# sysroot (Debian packages), wit-bindgen and wasm-tools; all installed by
# scripts/install-guest-toolchains.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${CARGO_TARGET_DIR:-$root/target}/components-polyglot/bank-account-c.wasm"
work="${CARGO_TARGET_DIR:-$root/target}/polyglot-build/c"
export PATH="$HOME/.cargo/bin:$PATH"
CC="${CC:-clang-19}"

missing=()
for tool in "$CC" wit-bindgen wasm-tools; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: missing ${missing[*]}; run scripts/install-guest-toolchains.sh" >&2
  exit 1
fi

rm -rf "$work"
mkdir -p "$work" "$(dirname "$out")"
# 1. C bindings for the `entity` world: entity.h, entity.c and the component type
#    (custom section) that `wasm-tools component new` reads.
wit-bindgen c "$root/wit/v0.1" --world entity --out-dir "$work/bindings" >/dev/null
# 2. A core module. wasm32-wasi only for the sysroot's malloc/string functions,
#    which import nothing; the reactor model has no main. Nothing that does I/O is
#    linked, so the module imports only mneme:entity/host.
"$CC" --target=wasm32-wasi -mexec-model=reactor -O2 -std=c11 -Wall -Wextra \
  -Wno-unused-parameter -Wno-missing-field-initializers \
  -I "$work/bindings" \
  "$here/bank_account.c" "$work/bindings/entity.c" "$work/bindings/entity_component_type.o" \
  -Wl,--strip-debug -o "$work/bank-account-c.core.wasm"
if wasm-tools print "$work/bank-account-c.core.wasm" | grep -q '(import "wasi_'; then
  echo "error: the core module imports WASI functions:" >&2
  wasm-tools print "$work/bank-account-c.core.wasm" | grep '(import "wasi_' >&2
  exit 1
fi
# 3. The component (no WASI adapter needed).
wasm-tools component new "$work/bank-account-c.core.wasm" -o "$out.tmp"
wasm-tools validate "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
