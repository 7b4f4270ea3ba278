#!/usr/bin/env bash
# One-command demo of fhirgate with real parts around it:
#   - the test authorization server on 127.0.0.1:9000 (and a second one issuing opaque
#     tokens on 127.0.0.1:9002) and the upstream FHIR server (sekmet-fhir with synthetic
#     patients) on 127.0.0.1:8091   (scripts/stack.sh)
#   - fhirgate built in release mode and started with its built-in default configuration
#     (listen 127.0.0.1:8080, admin 127.0.0.1:8081, audit file fhirgate-audit.jsonl in
#     its working folder .work/demo/)
#   - a small SMART client (Python fhirclient) that prints what was allowed and refused
#
#   scripts/demo.sh           run the demo, then stop everything
#   scripts/demo.sh --keep    leave everything running to try it by hand
#   scripts/demo.sh stop      stop what a --keep run left running
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

export IDP_PORT=9000 FHIR_PORT=8091 GATEWAY_PORT=8080
export IDP_AUDIENCE="http://127.0.0.1:8080/fhir"
export IDP_URL="http://127.0.0.1:9000"
export FHIRGATE_URL="http://127.0.0.1:8080/fhir"
ADMIN_URL="http://127.0.0.1:8081"
DEMO_DIR="$WORK_DIR/demo"
GATEWAY_BIN="$FHIRGATE_ROOT/target/release/fhirgate"
GATEWAY_PID="$DEMO_DIR/fhirgate.pid"
GATEWAY_LOG="$DEMO_DIR/fhirgate.log"
export FHIRGATE_AUDIT="$DEMO_DIR/fhirgate-audit.jsonl"

KEEP=0
case "${1:-}" in
  "") ;;
  --keep) KEEP=1 ;;
  stop)
    stop_pidfile "$GATEWAY_PID" fhirgate "fhirgate"
    "$FHIRGATE_ROOT/scripts/stack.sh" down
    exit 0 ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (use --keep, stop or --help)" ;;
esac

stop_all() {
  local rc=$?
  set +e
  if [[ $KEEP -eq 1 && $rc -eq 0 ]]; then
    section "left running (--keep)"
    echo "  FHIR base through the gateway: $FHIRGATE_URL   (admin $ADMIN_URL/healthz)"
    echo "  authorization server:          $IDP_URL"
    echo "  opaque-token issuer:           http://127.0.0.1:${IDP2_PORT:-9002}  (not trusted by the default configuration)"
    echo "  get a token:  scripts/get-token.sh --patient ID patient-app patient-secret 'patient/*.rs'"
    echo "  audit trail:  $FHIRGATE_AUDIT"
    echo "  stop it all:  scripts/demo.sh stop"
    exit 0
  fi
  section "stopping"
  stop_pidfile "$GATEWAY_PID" fhirgate "fhirgate"
  "$FHIRGATE_ROOT/scripts/stack.sh" down
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

section "1/4 authorization server and FHIR server"
"$FHIRGATE_ROOT/scripts/stack.sh" up

section "2/4 build fhirgate (release)"
started=$SECONDS
cargo build --release -p fhirgate 2>&1 | tail -n 3
[[ -x "$GATEWAY_BIN" ]] || die "build produced no $GATEWAY_BIN"
log "built in $((SECONDS - started))s"

section "3/4 start fhirgate with its default configuration"
mkdir -p "$DEMO_DIR"
if pid_alive "$GATEWAY_PID" "fhirgate"; then
  log "fhirgate already running (pid $(cat "$GATEWAY_PID")); restarting it with the fresh build"
  stop_pidfile "$GATEWAY_PID" fhirgate "fhirgate"
fi
if port_busy 8080 || port_busy 8081; then
  die "port 8080 or 8081 is in use by another process; stop it and run the demo again"
fi
: >"$GATEWAY_LOG"
(
  cd "$DEMO_DIR"
  exec setsid "$GATEWAY_BIN" serve </dev/null >>"$GATEWAY_LOG" 2>&1
) &
echo $! >"$GATEWAY_PID"
wait_http "$ADMIN_URL/healthz" 60 "$(cat "$GATEWAY_PID")" "$GATEWAY_LOG" fhirgate
"$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "$ADMIN_URL/readyz" --timeout 30 \
  || log "fhirgate is up but not ready yet (see $GATEWAY_LOG)"
log "fhirgate listening on $FHIRGATE_URL (log $GATEWAY_LOG)"

section "4/4 a SMART app talks to the gateway"
CLIENT_VENV="$(ensure_venv test "$FHIRGATE_ROOT/e2e/requirements.txt")"
"$CLIENT_VENV/bin/python" "$FHIRGATE_ROOT/e2e/demo/demo_client.py"
