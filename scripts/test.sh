#!/usr/bin/env bash
# Run every test of fhirgate from a clean clone:
#   1. cargo test --workspace (installs Debian's redis-server first when missing), and the
#      criterion benchmarks compiled (cargo check --benches; never timed here)
#   2. cargo deny check licenses bans sources (deny.toml; installs cargo-deny when missing)
#   3. fuzz every target for FUZZ_SECONDS (default 10) each, coverage-guided, from its seeds
#      (scripts/fuzz.sh: an instrumented build in target/fuzz with the stable toolchain)
#   4. install the end-to-end tools (npm ci, Python venvs) when missing
#   5. bring up the two authorization servers and the upstream FHIR server (test ports)
#   6. build fhirgate (debug) and start it with e2e/fhirgate-e2e.yaml
#   7. run the end-to-end suite (pytest e2e/tests)
# The gateway and the stack are stopped on exit, also after a failure. Exits non-zero
# when any phase failed.
#
# Environment: PYTEST_ARGS (extra pytest arguments), SKIP_CARGO_TEST=1 (skip phase 1),
# SKIP_DENY=1 (skip phase 2), SKIP_FUZZ=1 (skip phase 3; SKIP_FUZZ_BUILD=1 is read too),
# FUZZ_SECONDS (run time of each fuzz target), FHIRGATE_WORK (work folder, default .work).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

export IDP_PORT=19000 IDP2_PORT=19002 FHIR_PORT=18091 AUDIT_FHIR_PORT=18092 GATEWAY_PORT=18080
export IDP_AUDIENCE="http://127.0.0.1:$GATEWAY_PORT/fhir"
export FHIRGATE_URL="http://127.0.0.1:$GATEWAY_PORT/fhir"
export FHIRGATE_ADMIN="http://127.0.0.1:18081"
export FHIR_DIRECT="http://127.0.0.1:$FHIR_PORT/fhir"
export AUDIT_FHIR="http://127.0.0.1:$AUDIT_FHIR_PORT/fhir"
export IDP_URL="http://127.0.0.1:$IDP_PORT"
export IDP2_URL="http://127.0.0.1:$IDP2_PORT"
export FHIRGATE_BIN="$FHIRGATE_ROOT/target/debug/fhirgate"
export FHIRGATE_CONFIG="$FHIRGATE_ROOT/e2e/fhirgate-e2e.yaml"
export FHIRGATE_AUDIT="$FHIRGATE_ROOT/.work/e2e-audit.jsonl"
export FHIRGATE_LOG_FILE="$WORK_DIR/fhirgate-e2e.log"
export FHIRGATE_VALIDATOR_PYTHON="$WORK_DIR/venv-validator/bin/python"
# the refusal bodies of crates/fhirgate/tests/outcomes.rs, validated by e2e/tests/test_formats.py
export FHIRGATE_OUTCOME_SAMPLES="$WORK_DIR/outcome-samples"
GATEWAY_PID="$WORK_DIR/fhirgate-e2e.pid"

declare -a RESULTS=()
FAILED=0
record() { RESULTS+=("$(printf '%-28s %s' "$1" "$2")"); [[ "$2" == ok* ]] || FAILED=1; }

cleanup() {
  local rc=$?
  set +e
  section "stop"
  stop_pidfile "$GATEWAY_PID" fhirgate "fhirgate"
  "$FHIRGATE_ROOT/scripts/stack.sh" down
  section "summary"
  local line
  for line in "${RESULTS[@]}"; do printf '  %s\n' "$line"; done
  if [[ $rc -ne 0 || $FAILED -ne 0 ]]; then
    printf '\nFAILED (logs in %s)\n' "$WORK_DIR"
    [[ $rc -ne 0 ]] || rc=1
  else
    printf '\nall tests passed\n'
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK_DIR"
rm -rf "$FHIRGATE_OUTCOME_SAMPLES"   # written afresh by phase 1, or absent when it is skipped

# ---------------------------------------------------------------- 1. unit tests
section "1/7 cargo test --workspace"
if [[ "${SKIP_CARGO_TEST:-0}" == 1 ]]; then
  record "cargo test" "ok (skipped: SKIP_CARGO_TEST=1)"
else
  started=$SECONDS
  require_redis   # the shared rate-limit tests start their own redis-server
  if cargo test --workspace 2>&1 | tee "$WORK_DIR/cargo-test.log"; then
    record "cargo test" "ok ($((SECONDS - started))s)"
  else
    record "cargo test" "FAILED (log: $WORK_DIR/cargo-test.log)"
  fi
  # The criterion benchmarks are compiled, never timed, here (docs/PERFORMANCE.md).
  started=$SECONDS
  if cargo check --workspace --benches >"$WORK_DIR/bench-check.log" 2>&1; then
    record "benchmarks compile" "ok ($((SECONDS - started))s)"
  else
    record "benchmarks compile" "FAILED (log: $WORK_DIR/bench-check.log)"
  fi
fi

# ---------------------------------------------------------------- 2. supply chain
# Licences, banned and duplicate crates, and sources (docs/SUPPLY-CHAIN.md). The advisories
# check needs the RustSec database from GitHub and is not run here.
section "2/7 cargo deny check licenses bans sources"
if [[ "${SKIP_DENY:-0}" == 1 ]]; then
  record "cargo deny" "ok (skipped: SKIP_DENY=1)"
else
  started=$SECONDS
  ensure_cargo_tool deny cargo-deny 0.20.2
  if cargo deny check licenses bans sources >"$WORK_DIR/cargo-deny.log" 2>&1; then
    record "cargo deny" "ok ($((SECONDS - started))s)"
  else
    grep -E '^(error|warning)' "$WORK_DIR/cargo-deny.log" | sort | uniq -c | head -n 30
    record "cargo deny" "FAILED (log: $WORK_DIR/cargo-deny.log)"
  fi
fi

# ---------------------------------------------------------------- 3. fuzz targets
# Every target for a few seconds with libFuzzer's coverage guidance (docs/FUZZING.md): a crash
# or an invariant failure fails the phase and leaves the input in .work/fuzz/artifacts/. The
# instrumented build compiles the dependencies again, in target/fuzz; the long runs are
# documented in docs/FUZZING.md.
section "3/7 fuzz targets (${FUZZ_SECONDS:-10}s each)"
if [[ "${SKIP_FUZZ:-${SKIP_FUZZ_BUILD:-0}}" == 1 ]]; then
  record "fuzz" "ok (skipped: SKIP_FUZZ=1)"
else
  started=$SECONDS
  if "$FHIRGATE_ROOT/scripts/fuzz.sh" 2>&1 | tee "$WORK_DIR/fuzz.log"; then
    record "fuzz" "ok ($((SECONDS - started))s)"
  else
    record "fuzz" "FAILED (log: $WORK_DIR/fuzz.log)"
  fi
fi

# ---------------------------------------------------------------- 4. tools
section "4/7 install end-to-end tools"
started=$SECONDS
require_tools
require_node
ensure_node_modules "$FHIRGATE_ROOT/e2e/idp"
TEST_VENV="$(ensure_venv test "$FHIRGATE_ROOT/e2e/requirements.txt")"
ensure_venv validator "$FHIRGATE_ROOT/e2e/validator/requirements.txt" >/dev/null
ensure_venv fhir "$FHIRGATE_ROOT/e2e/fhir/requirements.txt" >/dev/null
record "install tools" "ok ($((SECONDS - started))s)"

# ---------------------------------------------------------------- 5. stack
section "5/7 stack up (idp :$IDP_PORT, idp2 :$IDP2_PORT, fhir :$FHIR_PORT)"
started=$SECONDS
# a fresh upstream database each run: restart whatever a previous run left behind
"$FHIRGATE_ROOT/scripts/stack.sh" down >/dev/null 2>&1 || true
if ! "$FHIRGATE_ROOT/scripts/stack.sh" up; then
  record "stack up" "FAILED"
  exit 1
fi
record "stack up" "ok ($((SECONDS - started))s)"

# ---------------------------------------------------------------- 6. gateway
section "6/7 build and start fhirgate"
started=$SECONDS
if ! cargo build -p fhirgate 2>&1 | tee "$WORK_DIR/cargo-build.log" | tail -n 3; then
  record "cargo build -p fhirgate" "FAILED (log: $WORK_DIR/cargo-build.log)"
  exit 1
fi
[[ -x "$FHIRGATE_BIN" ]] || { record "cargo build -p fhirgate" "FAILED (no $FHIRGATE_BIN)"; exit 1; }
stop_pidfile "$GATEWAY_PID" fhirgate "fhirgate"
if port_busy "$GATEWAY_PORT" || port_busy 18081; then
  record "start fhirgate" "FAILED (port $GATEWAY_PORT or 18081 in use)"
  exit 1
fi
rm -f "$FHIRGATE_AUDIT"
: >"$FHIRGATE_LOG_FILE"
log "starting $FHIRGATE_BIN serve --config e2e/fhirgate-e2e.yaml (log $FHIRGATE_LOG_FILE, level debug)"
# Debug logging on for the whole session: test_zz_secrets checks that even then no token,
# secret or patient name reaches the log.
(
  FHIRGATE_LOG="${FHIRGATE_LOG:-debug}" exec setsid "$FHIRGATE_BIN" serve --config "$FHIRGATE_CONFIG" </dev/null >>"$FHIRGATE_LOG_FILE" 2>&1
) &
echo $! >"$GATEWAY_PID"
wait_http "$FHIRGATE_ADMIN/healthz" 60 "$(cat "$GATEWAY_PID")" "$FHIRGATE_LOG_FILE" fhirgate
if ! "$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "$FHIRGATE_ADMIN/readyz" --timeout 30; then
  log "fhirgate: /readyz did not answer 200 within 30s (the suite checks it too)"
fi
record "start fhirgate" "ok ($((SECONDS - started))s)"

# ---------------------------------------------------------------- 7. e2e
section "7/7 end-to-end tests (pytest e2e/tests)"
started=$SECONDS
rc=0
# shellcheck disable=SC2086
"$TEST_VENV/bin/python" -m pytest -q -p no:cacheprovider e2e/tests ${PYTEST_ARGS:-} || rc=$?
if [[ $rc -eq 0 ]]; then
  record "e2e tests" "ok ($((SECONDS - started))s)"
elif [[ $rc -eq 5 ]]; then
  record "e2e tests" "FAILED (no tests collected)"
else
  record "e2e tests" "FAILED (pytest exit $rc; gateway log $FHIRGATE_LOG_FILE)"
fi
