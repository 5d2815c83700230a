#!/usr/bin/env bash
# Install the toolchains that build the non-Rust example entities
# (examples/bank-account-{python,js,c}; see scripts/build-polyglot.sh):
#
#   C           clang-19, wasm-ld-19, the wasm32 compiler-rt builtins and the
#               wasi-libc sysroot (Debian packages), wit-bindgen (C generator) and
#               wasm-tools (cargo install --locked, into ~/.cargo/bin)
#   Python      componentize-py (pip --user, into ~/.local/bin, or the active
#               virtualenv / pyenv)
#   JavaScript  ComponentizeJS (npm install in examples/bank-account-js, versions pinned
#               by its package-lock.json); needs Node.js >= 18
#
# Idempotent: whatever is already installed at the pinned version is skipped.
# Debian/Ubuntu only for the system packages; runs as root (CI) or with sudo.
# Each step prints how long it took.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_VERSION=0.63.0
COMPONENTIZE_PY_VERSION=0.25.1
LLVM=19
APT_PACKAGES=(clang-$LLVM lld-$LLVM libclang-rt-$LLVM-dev-wasm32 wasi-libc)

export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"

die() { echo "install-guest-toolchains: error: $*" >&2; exit 1; }
step_start=0
step() { step_start=$SECONDS; echo "==> $*"; }
done_step() { echo "    done in $((SECONDS - step_start)) s"; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: cannot install ${APT_PACKAGES[*]}"
  sudo_cmd=(sudo)
fi

# ---------------------------------------------------------------- system packages
need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v npm >/dev/null || need_apt+=(npm)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "apt-get install ${need_apt[*]}"
  command -v apt-get >/dev/null || die "apt-get not found: install ${need_apt[*]} with your package manager"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  done_step
else
  echo "==> system packages: already installed (${APT_PACKAGES[*]}, node, python3, pip)"
fi
command -v clang-$LLVM >/dev/null || die "clang-$LLVM is still missing after apt-get"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "Node.js >= 18 needed (found $(node --version))"

# ---------------------------------------------------------------- cargo tools
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"

# cargo_tool <binary> <crate> <version> <cargo install flags...>
cargo_tool() {
  local bin=$1 crate=$2 version=$3
  shift 3
  if "$bin" --version 2>/dev/null | grep -q " $version\b"; then
    echo "==> $crate $version: already installed"
    return
  fi
  step "cargo install $crate $version"
  # Build tools, run on small inputs: a quicker build (no LTO, less
  # optimisation, more codegen units) instead of the slowest, fastest binary.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install --locked --quiet "$crate" --version "$version" "$@"
  done_step
}
# Only the subcommands and the generator the examples use (fewer crates to build).
cargo_tool wasm-tools wasm-tools "$WASM_TOOLS_VERSION" \
  --no-default-features --features component,validate,print,parse,strip,metadata
cargo_tool wit-bindgen wit-bindgen-cli "$WIT_BINDGEN_VERSION" \
  --no-default-features --features c

# ---------------------------------------------------------------- componentize-py
if componentize-py --version 2>/dev/null | grep -q " $COMPONENTIZE_PY_VERSION\b"; then
  echo "==> componentize-py $COMPONENTIZE_PY_VERSION: already installed"
else
  step "pip install componentize-py==$COMPONENTIZE_PY_VERSION"
  pip_flags=(--quiet --disable-pip-version-check)
  # Inside a virtualenv or a pyenv Python, install there; else into ~/.local.
  if [ -z "${VIRTUAL_ENV:-}" ] && [ "$(python3 -c 'import sys; print(sys.prefix.startswith("/usr"))')" = True ]; then
    pip_flags+=(--user)
  fi
  # Debian's python3 refuses pip installs outside a venv (PEP 668) unless told;
  # a --user install does not touch the system's packages.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install "${pip_flags[@]}" "componentize-py==$COMPONENTIZE_PY_VERSION"
  hash -r
  command -v componentize-py >/dev/null || die "componentize-py was installed but is not on PATH (looked in $HOME/.local/bin too)"
  done_step
fi

# ---------------------------------------------------------------- ComponentizeJS
js="$root/examples/bank-account-js"
want_js="$(node -p "require('$js/package-lock.json').packages['node_modules/@bytecodealliance/componentize-js'].version")"
have_js="$(node -p "try { require('$js/node_modules/@bytecodealliance/componentize-js/package.json').version } catch { '' }")"
if [ "$have_js" = "$want_js" ]; then
  echo "==> ComponentizeJS $want_js: already installed"
else
  step "npm install (ComponentizeJS $want_js) in examples/bank-account-js"
  # `npm install` with the committed package-lock.json (and --no-save, so the lock
  # is not rewritten) rather than `npm ci`: npm 11 rejects this lock in `npm ci`
  # for lacking entries of optional packages of other platforms.
  npm install --prefix "$js" --no-save --no-audit --no-fund --loglevel=error
  done_step
fi

echo "guest toolchains ready:"
echo "  $(clang-$LLVM --version | head -n1)"
echo "  $(wasm-tools --version)"
echo "  $(wit-bindgen --version)"
echo "  $(componentize-py --version)"
echo "  node $(node --version), componentize-js $want_js"
