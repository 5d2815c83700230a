#!/usr/bin/env bash
# Builds the Wasm components from source:
#   target/components/{bank-account,bank-account-v2,blog-post,task-manager}.wasm   (example entities)
#   target/components/account-balances.wasm                         (example projection)
#   target/test-components/{faulty,hostile,faulty-projection}.wasm  (test-only)
#   target/test-components/faulty-projection-v2.wasm                 (the same, view-version 2)
#   target/test-components/entity-v01.wasm                           (test-only, built
#                                      against the earlier WIT 0.1.0, which must keep running)
#   target/test-components/projection-v010.wasm                      (test-only, built against
#                                      mneme:projection@0.1.0, before `feed`: must keep running)
#   target/test-components/{uses-wasi,wrong-world,wrong-replay,wrong-decide,wrong-feed}.wasm (test-only,
#                                      built to be refused at deploy: WASI, WIT 0.3.0, a mistyped
#                                      `replay`, `decide` or `feed`)
# Runnable from any directory. Installs the wasm32-wasip2 target if it is missing
# (no rust-toolchain.toml: the active toolchain is used as is).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=wasm32-wasip2
PROFILE=wasm

if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi

cargo build --profile "$PROFILE" --target "$TARGET" \
    -p bank-account -p bank-account-v2 -p blog-post -p task-manager -p account-balances \
    -p faulty -p hostile -p uses-wasi -p wrong-world -p wrong-fast-path -p faulty-projection -p entity-v01 \
    -p projection-v010

# Cargo's target dir may be moved with CARGO_TARGET_DIR.
target_dir="${CARGO_TARGET_DIR:-target}"
out_dir="$target_dir/$TARGET/$PROFILE"
mkdir -p "$target_dir/components" "$target_dir/test-components"

# A component starts with "\0asm" and the component-model version/layer
# 0x0d 0x00 0x01 0x00; a core module (version 1) would mean the linker did not
# produce a component.
check_component() {
    local file=$1 header
    header=$(head -c 8 "$file" | od -An -tx1 | tr -d ' \n')
    if [[ "$header" != "0061736d0d000100" ]]; then
        echo "error: $file is not a WebAssembly component (header: $header)" >&2
        exit 1
    fi
    if command -v wasm-tools >/dev/null 2>&1; then
        wasm-tools validate --features component-model "$file"
    fi
}

install_component() {
    local crate=$1 dest=$2
    local src="$out_dir/${crate//-/_}.wasm"
    check_component "$src"
    cp "$src" "$dest"
    printf '  %-40s %8d bytes\n' "$dest" "$(wc -c <"$dest")"
}

echo "Built components:"
for crate in bank-account bank-account-v2 blog-post task-manager account-balances; do
    install_component "$crate" "$target_dir/components/$crate.wasm"
done
for crate in faulty hostile uses-wasi wrong-world faulty-projection entity-v01 projection-v010; do
    install_component "$crate" "$target_dir/test-components/$crate.wasm"
done
install_component wrong-fast-path "$target_dir/test-components/wrong-replay.wasm"
# The same crates again with a feature: different components.
cargo build --profile "$PROFILE" --target "$TARGET" -p wrong-fast-path --features decide
install_component wrong-fast-path "$target_dir/test-components/wrong-decide.wasm"
cargo build --profile "$PROFILE" --target "$TARGET" -p wrong-fast-path --features feed
install_component wrong-fast-path "$target_dir/test-components/wrong-feed.wasm"
cargo build --profile "$PROFILE" --target "$TARGET" -p faulty-projection --features view-version-2
install_component faulty-projection "$target_dir/test-components/faulty-projection-v2.wasm"
