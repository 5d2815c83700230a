#!/usr/bin/env bash
# Run every test. Installs what is missing (the wasm32-wasip2 target; the Python,
# JavaScript and C guest toolchains; PostgreSQL), builds every Wasm component from
# source, starts a private PostgreSQL (scripts/start-postgres.sh), then runs the
# whole workspace's tests, including the cross-language conformance suite; the
# semantics, conformance, crash and projection suites once more on the PostgreSQL
# journal; and builds and tests a project of `mneme new` in every language.
set -euo pipefail
cd "$(dirname "$0")/.."

# A whole run leaves about 4 GB in the target dir; a disk that fills up on the way
# shows only as a linker crash (signal 7), so say it first.
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
free_mb=$(df -Pm "$target" | awk 'NR == 2 { print $4 }')
if [ "$free_mb" -lt 6000 ]; then
  echo "warning: $free_mb MB free for $target; a whole test run needs about 4 GB (more with guest toolchains to install)" >&2
fi

scripts/install-guest-toolchains.sh
scripts/build-components.sh
scripts/build-polyglot.sh
cargo build -p mneme --bins
MNEME_TEST_POSTGRES_URL=$(scripts/start-postgres.sh)
export MNEME_TEST_POSTGRES_URL
cargo test --workspace "$@"
MNEME_TEST_JOURNAL=postgres MNEME_CRASH_KILLS=5 cargo test -p mneme-tests --test semantics --test conformance --test crash --test projections "$@"
# What `mneme new` writes, in every language: built, tested, deployed.
scripts/test-scaffolds.sh
