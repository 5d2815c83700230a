#!/usr/bin/env bash
# Build {{name}}.wasm from {{module}}.py with componentize-py (pip install componentize-py==0.25.1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v componentize-py >/dev/null || { echo "componentize-py not found: pip install componentize-py==0.25.1" >&2; exit 1; }
# --stub-wasi: every WASI import becomes a trapping stub, so the component imports
# only mneme:entity/host (mneme gives guests no WASI and refuses components that import it).
componentize-py -d "$here/wit" -w entity componentize --stub-wasi -p "$here" -o "$here/{{name}}.wasm.tmp" {{module}}
mv "$here/{{name}}.wasm.tmp" "$here/{{name}}.wasm"
echo "built $here/{{name}}.wasm"
