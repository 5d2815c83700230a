#!/usr/bin/env bash
# Build the non-Rust examples from source into target/components-polyglot/:
#   bank-account-python.wasm  bank-account-js.wasm  bank-account-c.wasm   (entities)
#   account-balances-python.wasm                                         (projection, with python)
# The toolchains come from scripts/install-guest-toolchains.sh; a missing one is
# an error (nothing is skipped). Prints each component's imports at the end.
#   scripts/build-polyglot.sh [python|js|c ...]     (default: all three)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(python js c)
for lang in "${langs[@]}"; do
  script="$root/examples/bank-account-$lang/build.sh"
  [ -x "$script" ] || { echo "build-polyglot: no such example: bank-account-$lang" >&2; exit 1; }
  echo "==> bank-account-$lang"
  start=$SECONDS
  "$script"
  echo "    done in $((SECONDS - start)) s"
done

examples=()
for lang in "${langs[@]}"; do examples+=("bank-account-$lang"); done
if [[ " ${langs[*]} " == *" python "* ]]; then
  echo "==> account-balances-python"
  start=$SECONDS
  "$root/examples/account-balances-python/build.sh"
  echo "    done in $((SECONDS - start)) s"
  examples+=(account-balances-python)
fi

command -v wasm-tools >/dev/null || { echo "build-polyglot: wasm-tools missing (scripts/install-guest-toolchains.sh)" >&2; exit 1; }
status=0
for example in "${examples[@]}"; do
  wasm="${CARGO_TARGET_DIR:-$root/target}/components-polyglot/$example.wasm"
  imports="$(wasm-tools component wit "$wasm" | sed -n 's/^ *import \([^;]*\);.*/\1/p' | tr '\n' ' ')"
  echo "$example: $(du -h "$wasm" | cut -f1), imports: $imports"
  # mneme links no WASI: a component importing WASI would fail to instantiate.
  case "$imports" in
    *wasi:*) echo "build-polyglot: error: $example imports WASI" >&2; status=1 ;;
  esac
done
exit $status
