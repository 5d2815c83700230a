#!/usr/bin/env bash
# What `mneme new` writes, tested as a new user would use it, in every language:
# write the project, build its component with its own build.sh, run its own
# testkit test, then deploy the .wasm as is to a real `mneme serve` and send it a
# command. A missing toolchain is a failure, never a skip
# (scripts/install-guest-toolchains.sh installs them).
#   scripts/test-scaffolds.sh [rust|python|js|c ...]     (default: all four)
# Shares $CARGO_TARGET_DIR (default: target/) with the workspace, so the testkit
# and the SDK are not compiled again (but for Rust, whose project is made from
# the sources built into the binary, as a user outside a checkout gets it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
export CARGO_TARGET_DIR="$target"

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(rust python js c)

cargo build -p mneme --bin mneme
mneme="$target/debug/mneme"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
export MNEME_SERVER="http://127.0.0.1:$port"
"$mneme" serve --data "$work/data" --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  curl -sf "$MNEME_SERVER/ready" >/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done

for lang in "${langs[@]}"; do
  name="counter-$lang"
  dir="$work/$name"
  echo "==> mneme new --lang $lang $name"
  start=$SECONDS
  if [ "$lang" = rust ]; then
    # As from a binary installed anywhere: the SDK and the testkit built into it,
    # written out under a fresh XDG_DATA_HOME (no checkout named).
    (unset MNEME_SRC; XDG_DATA_HOME="$work/xdg" "$mneme" new --lang "$lang" --dir "$dir" "$name")
    grep -q "path = \"$work/xdg/mneme/src/" "$dir/Cargo.toml" \
      || { echo "test-scaffolds: $name does not use the built-in sources" >&2; cat "$dir/Cargo.toml" >&2; exit 1; }
  else
    "$mneme" new --lang "$lang" --dir "$dir" --mneme-src "$root" "$name"
  fi
  (cd "$dir" && ./build.sh)
  if [ "$lang" = rust ]; then
    (cd "$dir" && cargo test --quiet)
  else
    (cd "$dir/test" && cargo test --quiet)
  fi
  "$mneme" deploy "$name" "$dir/$name.wasm"
  reply="$("$mneme" send --json "$name" c1 '{"type":"Increment","by":2}')"
  case "$reply" in
    *'"value":2'*) ;;
    *) echo "test-scaffolds: $name answered $reply, not {\"value\":2}" >&2; cat "$work/server.log" >&2; exit 1 ;;
  esac
  echo "    $name: built, tested, deployed, answered in $((SECONDS - start)) s"
done
