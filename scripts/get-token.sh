#!/usr/bin/env bash
# Fetch an access token from the test authorization server.
#   scripts/get-token.sh [--patient ID] [--resource URI] [--json|--claims] CLIENT SECRET 'SCOPE ...'
# e.g. scripts/get-token.sh --patient bc909b9d-90f8-5eff-9c0e-9e286939c396 patient-app patient-secret 'patient/*.rs'
# The server is $IDP_URL, else http://127.0.0.1:${IDP_PORT:-9000}.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/get_token.py" "$@"
