#!/usr/bin/env bash
# Regenerate the committed synthetic data set in e2e/data (deterministic: the same
# generator version and seeds give the same bytes). Uses a throwaway venv in .work/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_tools
venv="$(ensure_venv gen "$FHIRGATE_ROOT/e2e/data/requirements-gen.txt")"
"$venv/bin/python" "$FHIRGATE_ROOT/e2e/data/generate.py" --out "$FHIRGATE_ROOT/e2e/data"
