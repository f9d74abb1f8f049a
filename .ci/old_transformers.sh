#!/usr/bin/env bash
# The shipped model files on the oldest transformers this package claims (pyproject's floor), in a venv of their own
# that shares the rest of the environment. Usage: bash .ci/old_transformers.sh [VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-5.4.0}"
venv="${TMPDIR:-/tmp}/hf-vit-d2l-transformers-$version"
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
# transformers' [kernels] extra pins the kernels release that version was written for; the shared environment's
# newer kernels (a requirement of newer transformers) breaks an older transformers' kernel mapping at import.
"$venv/bin/python" -m pip install -q "transformers[kernels]==$version"
modules="$(mktemp -d)"
trap 'rm -rf "$modules"' EXIT
HF_HUB_OFFLINE=1 HF_MODULES_CACHE="$modules" TRANSFORMERS_VERBOSITY=error "$venv/bin/python" -I .ci/old_transformers.py
