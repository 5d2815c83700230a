#!/usr/bin/env bash
# The long forms of the reliability suites (RELIABILITY.md), in release mode:
#   crash suite      MNEME_CRASH_KILLS kills of a real `mneme serve` (default 100)
#   model test       PROPTEST_CASES random sequences (default 1000)
#   HTTP fuzzing     MNEME_FUZZ_CASES generated requests (default 20000)
#   corruption       MNEME_CORRUPTION_TRIALS byte flips (default 500), torn writes at every byte
# Each prints its tally. Builds the components and the binary first.
# Usage: scripts/reliability.sh [crash|model|fuzz|corruption]...   (all by default)
set -euo pipefail
cd "$(dirname "$0")/.."

suites=("$@")
if [[ ${#suites[@]} -eq 0 ]]; then
    suites=(crash model fuzz corruption)
fi

scripts/build-components.sh
cargo build -p mneme --bins --release

status=0
for suite in "${suites[@]}"; do
    case "$suite" in
        crash)
            MNEME_CRASH_KILLS="${MNEME_CRASH_KILLS:-100}" \
                cargo test -p mneme-tests --release --test crash -- --nocapture || status=1
            ;;
        model)
            PROPTEST_CASES="${PROPTEST_CASES:-1000}" \
                cargo test -p mneme-tests --release --test model -- --nocapture || status=1
            ;;
        fuzz)
            PROPTEST_CASES="${MNEME_FUZZ_CASES:-20000}" \
                cargo test -p mneme-tests --release --test fuzz_http -- --nocapture || status=1
            ;;
        corruption)
            MNEME_CORRUPTION_TRIALS="${MNEME_CORRUPTION_TRIALS:-500}" MNEME_TORN_EVERY_BYTE=1 \
                cargo test -p mneme-tests --release --test corruption -- --nocapture || status=1
            ;;
        *)
            echo "unknown suite: $suite (crash, model, fuzz or corruption)" >&2
            exit 2
            ;;
    esac
done
exit $status
