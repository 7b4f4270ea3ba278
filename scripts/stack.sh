#!/usr/bin/env bash
# Bring the real third-party parts around fhirgate up or down: the test authorization
# servers (e2e/idp, oidc-provider: one issuing JWT access tokens, a second one issuing
# opaque tokens that fhirgate checks by introspection) and the upstream FHIR R4 server
# (sekmet-fhir) loaded with the synthetic data in e2e/data, and a second, empty sekmet-fhir
# that takes the gateway's AuditEvents. Everything listens on 127.0.0.1 only.
#
#   scripts/stack.sh up|down|status|restart
#
# Environment (defaults are the demo's; the tests use 19000/19002/18091/18080):
#   IDP_PORT=9000  IDP2_PORT=9002  FHIR_PORT=8091  AUDIT_FHIR_PORT=8092  GATEWAY_PORT=8080
#   IDP_AUDIENCE   audience of issued tokens, both issuers (http://127.0.0.1:$GATEWAY_PORT/fhir)
#   IDP_ALG        RS256 (default) or ES256
#   STACK_TIMEOUT  seconds to wait for each server to answer (180)
#   FHIRGATE_WORK  work folder for venvs, logs, pid files and state (.work)
#
# Logs, pid files and state live in $FHIRGATE_WORK; `down` stops exactly the processes
# that `up` started (by pid). `up` when already up leaves the running servers alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IDP_PORT="${IDP_PORT:-9000}"
IDP2_PORT="${IDP2_PORT:-9002}"
FHIR_PORT="${FHIR_PORT:-8091}"
AUDIT_FHIR_PORT="${AUDIT_FHIR_PORT:-8092}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
IDP_AUDIENCE="${IDP_AUDIENCE:-http://127.0.0.1:$GATEWAY_PORT/fhir}"
IDP_ALG="${IDP_ALG:-RS256}"
STACK_TIMEOUT="${STACK_TIMEOUT:-180}"

IDP_URL="http://127.0.0.1:$IDP_PORT"
IDP2_URL="http://127.0.0.1:$IDP2_PORT"
FHIR_BASE="http://127.0.0.1:$FHIR_PORT/fhir"
AUDIT_FHIR_BASE="http://127.0.0.1:$AUDIT_FHIR_PORT/fhir"

IDP_DIR="$FHIRGATE_ROOT/e2e/idp"
DATA_DIR="$FHIRGATE_ROOT/e2e/data"
IDP_PID="$WORK_DIR/idp-$IDP_PORT.pid"
IDP_LOG="$WORK_DIR/idp-$IDP_PORT.log"
IDP_STATE="$WORK_DIR/idp-state-$IDP_PORT"
IDP2_PID="$WORK_DIR/idp-$IDP2_PORT.pid"
IDP2_LOG="$WORK_DIR/idp-$IDP2_PORT.log"
IDP2_STATE="$WORK_DIR/idp-state-$IDP2_PORT"
FHIR_PID="$WORK_DIR/fhir-$FHIR_PORT.pid"
FHIR_LOG="$WORK_DIR/fhir-$FHIR_PORT.log"
FHIR_RUN="$WORK_DIR/fhir-$FHIR_PORT"
AUDIT_FHIR_PID="$WORK_DIR/fhir-$AUDIT_FHIR_PORT.pid"
AUDIT_FHIR_LOG="$WORK_DIR/fhir-$AUDIT_FHIR_PORT.log"
AUDIT_FHIR_RUN="$WORK_DIR/fhir-$AUDIT_FHIR_PORT"
IDP_PATTERN="server.mjs"
FHIR_PATTERN="sekmet"

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

check_port_free() {
  local port="$1" name="$2"
  if port_busy "$port"; then
    die "port $port is already in use by another process, so $name cannot start there (choose another with the environment, e.g. ${name^^}_PORT)"
  fi
}

# start_idp NAME PORT PIDFILE LOGFILE STATEDIR TOKEN_FORMAT (jwt | opaque)
start_idp() {
  local name="$1" port="$2" pidfile="$3" logfile="$4" state="$5" format="$6"
  local url="http://127.0.0.1:$port"
  if pid_alive "$pidfile" "$IDP_PATTERN"; then
    log "$name: already running (pid $(cat "$pidfile")) at $url"
    return 0
  fi
  rm -f "$pidfile"
  ensure_node_modules "$IDP_DIR"
  check_port_free "$port" "$name"
  mkdir -p "$state"
  log "$name: starting on $url ($format access tokens, audience $IDP_AUDIENCE, log $logfile)"
  (
    cd "$IDP_DIR"
    IDP_PORT="$port" IDP_AUDIENCE="$IDP_AUDIENCE" IDP_ALG="$IDP_ALG" IDP_STATE_DIR="$state" \
      IDP_TOKEN_FORMAT="$format" exec setsid node server.mjs </dev/null >>"$logfile" 2>&1
  ) &
  echo $! >"$pidfile"
}

# start_fhir NAME PORT PIDFILE LOGFILE RUNDIR: a sekmet-fhir with a fresh database each
# start (the clinical data set is exactly what e2e/data holds; the audit server starts empty)
start_fhir() {
  local name="$1" port="$2" pidfile="$3" logfile="$4" run="$5"
  local base="http://127.0.0.1:$port/fhir"
  if pid_alive "$pidfile" "$FHIR_PATTERN"; then
    log "$name: already running (pid $(cat "$pidfile")) at $base"
    return 0
  fi
  rm -f "$pidfile"
  local venv
  venv="$(ensure_venv fhir "$FHIRGATE_ROOT/e2e/fhir/requirements.txt")"
  check_port_free "$port" "$name"
  rm -rf "$run"
  mkdir -p "$run"
  log "$name: starting on $base (log $logfile)"
  (
    cd "$run"
    SEKMET_BASE_URL="$base" SEKMET_PORT="$port" \
      exec setsid "$venv/bin/sekmet" serve -c "$FHIRGATE_ROOT/e2e/fhir/settings.yaml" \
      --host 127.0.0.1 --port "$port" </dev/null >>"$logfile" 2>&1
  ) &
  echo $! >"$pidfile"
}

patient_refs() {
  "$PYTHON" -c 'import json,sys; print(" ".join("Patient/" + p["id"] for p in json.load(open(sys.argv[1]))["patients"]))' \
    "$DATA_DIR/index.json"
}

load_data() {
  # shellcheck disable=SC2046
  if "$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" exists "$FHIR_BASE" $(patient_refs); then
    log "data: already loaded"
    return 0
  fi
  log "data: loading $(ls "$DATA_DIR"/bundles/*.json | wc -l) transaction bundles into $FHIR_BASE"
  local bundles
  bundles=("$DATA_DIR"/bundles/*.json)
  "$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" load "$FHIR_BASE" "${bundles[@]}" \
    || die "loading the data into $FHIR_BASE failed (server log: $FHIR_LOG)"
}

cmd_up() {
  local started=$SECONDS
  require_tools
  require_node
  mkdir -p "$WORK_DIR"
  [[ "$IDP2_PORT" != "$IDP_PORT" ]] || die "IDP2_PORT must differ from IDP_PORT ($IDP_PORT)"
  start_idp idp "$IDP_PORT" "$IDP_PID" "$IDP_LOG" "$IDP_STATE" jwt
  start_idp idp2 "$IDP2_PORT" "$IDP2_PID" "$IDP2_LOG" "$IDP2_STATE" opaque
  start_fhir fhir "$FHIR_PORT" "$FHIR_PID" "$FHIR_LOG" "$FHIR_RUN"
  start_fhir audit-fhir "$AUDIT_FHIR_PORT" "$AUDIT_FHIR_PID" "$AUDIT_FHIR_LOG" "$AUDIT_FHIR_RUN"
  wait_http "$IDP_URL/.well-known/openid-configuration" "$STACK_TIMEOUT" "$(cat "$IDP_PID")" "$IDP_LOG" idp
  log "idp: ready at $IDP_URL (JWT access tokens)"
  wait_http "$IDP2_URL/.well-known/openid-configuration" "$STACK_TIMEOUT" "$(cat "$IDP2_PID")" "$IDP2_LOG" idp2
  log "idp2: ready at $IDP2_URL (opaque access tokens, introspection)"
  wait_http "$FHIR_BASE/metadata" "$STACK_TIMEOUT" "$(cat "$FHIR_PID")" "$FHIR_LOG" fhir
  log "fhir: ready at $FHIR_BASE"
  wait_http "$AUDIT_FHIR_BASE/metadata" "$STACK_TIMEOUT" "$(cat "$AUDIT_FHIR_PID")" "$AUDIT_FHIR_LOG" audit-fhir
  log "audit-fhir: ready at $AUDIT_FHIR_BASE (AuditEvents)"
  load_data
  cat >"$WORK_DIR/stack-$IDP_PORT-$FHIR_PORT.env" <<EOF
IDP_URL=$IDP_URL
IDP2_URL=$IDP2_URL
IDP_AUDIENCE=$IDP_AUDIENCE
FHIR_DIRECT=$FHIR_BASE
AUDIT_FHIR=$AUDIT_FHIR_BASE
EOF
  log "stack up in $((SECONDS - started))s: idp $IDP_URL, idp2 $IDP2_URL, fhir $FHIR_BASE, audit-fhir $AUDIT_FHIR_BASE, token audience $IDP_AUDIENCE"
}

cmd_down() {
  stop_pidfile "$IDP_PID" idp "$IDP_PATTERN"
  stop_pidfile "$IDP2_PID" idp2 "$IDP_PATTERN"
  stop_pidfile "$FHIR_PID" fhir "$FHIR_PATTERN"
  stop_pidfile "$AUDIT_FHIR_PID" audit-fhir "$FHIR_PATTERN"
}

cmd_status() {
  local rc=0
  if pid_alive "$IDP_PID" "$IDP_PATTERN"; then
    echo "idp:  running (pid $(cat "$IDP_PID")) $IDP_URL  log $IDP_LOG"
  else
    echo "idp:  stopped"; rc=3
  fi
  if pid_alive "$IDP2_PID" "$IDP_PATTERN"; then
    echo "idp2: running (pid $(cat "$IDP2_PID")) $IDP2_URL  log $IDP2_LOG"
  else
    echo "idp2: stopped"; rc=3
  fi
  if pid_alive "$FHIR_PID" "$FHIR_PATTERN"; then
    echo "fhir: running (pid $(cat "$FHIR_PID")) $FHIR_BASE  log $FHIR_LOG"
  else
    echo "fhir: stopped"; rc=3
  fi
  if pid_alive "$AUDIT_FHIR_PID" "$FHIR_PATTERN"; then
    echo "audit-fhir: running (pid $(cat "$AUDIT_FHIR_PID")) $AUDIT_FHIR_BASE  log $AUDIT_FHIR_LOG"
  else
    echo "audit-fhir: stopped"; rc=3
  fi
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  restart) cmd_down; cmd_up ;;
  -h|--help|help) usage 0 ;;
  *) usage 2 >&2 ;;
esac
