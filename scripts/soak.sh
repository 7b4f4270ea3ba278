#!/usr/bin/env bash
# Soak test: fhirgate (release build) between the real authorization server and the real FHIR
# server of the end-to-end stack, driven for a long time at a fixed rate with a mix of allowed
# reads and searches, refused reads (another patient, a missing scope) and bad tokens, with
# tokens fetched anew from the authorization server every minute (docs/SOAK.md).
#
#   scripts/soak.sh [--minutes N | --seconds N] [--rate R] [--warmup S] [--report FILE]
#
#   --minutes N   how long to drive the gateway (10)
#   --seconds N   the same in seconds, for a short smoke run
#   --rate R      requests per second, scheduled whatever the answers take (50)
#   --warmup S    seconds before latency is counted and memory first read (60, at most a
#                 tenth of the run for runs under ten minutes)
#   --report FILE where the report goes (.work/soak-<time>/report.md)
#
# Environment: the ports of scripts/stack.sh, with the soak's own defaults so that it never
# meets the tests' (19000/19002/18091/18092/18080) or the demo's:
#   IDP_PORT=29000 IDP2_PORT=29002 FHIR_PORT=28091 AUDIT_FHIR_PORT=28092 GATEWAY_PORT=28080
#   ADMIN_PORT=28081
#   FHIRGATE_BIN  the gateway to run (default: target/release/fhirgate, built first)
#   FHIRGATE_WORK work folder for venvs, logs and state (.work)
#
# Exits 0 when every answer had its expected status and no request failed. The stack and the
# gateway are stopped on exit, by the pids this script recorded.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

SECONDS_TO_RUN=600
RATE=50
WARMUP=""
REPORT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) SECONDS_TO_RUN=$(( $2 * 60 )); shift 2 ;;
    --seconds) SECONDS_TO_RUN="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --report) REPORT="$2"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$SECONDS_TO_RUN" =~ ^[0-9]+$ && "$SECONDS_TO_RUN" -gt 0 ]] || die "the duration must be a positive whole number"
if [[ -z "$WARMUP" ]]; then
  WARMUP=60
  (( SECONDS_TO_RUN >= 600 )) || WARMUP=$(( SECONDS_TO_RUN / 10 ))
fi

export IDP_PORT="${IDP_PORT:-29000}" IDP2_PORT="${IDP2_PORT:-29002}" FHIR_PORT="${FHIR_PORT:-28091}"
export AUDIT_FHIR_PORT="${AUDIT_FHIR_PORT:-28092}" GATEWAY_PORT="${GATEWAY_PORT:-28080}"
ADMIN_PORT="${ADMIN_PORT:-28081}"
for port in "$IDP_PORT" "$IDP2_PORT" "$FHIR_PORT" "$AUDIT_FHIR_PORT" "$GATEWAY_PORT" "$ADMIN_PORT"; do
  case "$port" in
    19000|19002|18091|18092|18080|18081) die "port $port belongs to scripts/test.sh; the soak uses its own" ;;
  esac
done
export IDP_AUDIENCE="http://127.0.0.1:$GATEWAY_PORT/fhir"

OUT="$WORK_DIR/soak-$(date -u +%Y%m%dT%H%M%SZ)"
REPORT="${REPORT:-$OUT/report.md}"
GATEWAY_PID="$WORK_DIR/fhirgate-soak-$GATEWAY_PORT.pid"
mkdir -p "$OUT"

cleanup() {
  local rc=$?
  set +e
  stop_pidfile "$GATEWAY_PID" fhirgate "fhirgate"
  "$FHIRGATE_ROOT/scripts/stack.sh" down
  log "logs and audit trail in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

require_tools
if [[ -z "${FHIRGATE_BIN:-}" ]]; then
  FHIRGATE_BIN="$FHIRGATE_ROOT/target/release/fhirgate"
  log "building fhirgate (release)"
  cargo build --release -p fhirgate >"$OUT/cargo-build.log" 2>&1 \
    || die "cargo build --release failed (log: $OUT/cargo-build.log)"
fi
[[ -x "$FHIRGATE_BIN" ]] || die "no gateway at $FHIRGATE_BIN"

"$FHIRGATE_ROOT/scripts/stack.sh" up

cat >"$OUT/fhirgate.yaml" <<YAML
listen: "127.0.0.1:$GATEWAY_PORT"
admin_listen: "127.0.0.1:$ADMIN_PORT"
upstream:
  url: "http://127.0.0.1:$FHIR_PORT/fhir"
  public_base_path: "/fhir"
  connect_timeout: "2s"
  response_timeout: "30s"
issuers:
  - issuer: "http://127.0.0.1:$IDP_PORT"
    audience: "$IDP_AUDIENCE"
    algorithms: ["RS256", "ES256"]
    leeway: "5s"
audit:
  spool:
    path: "$OUT/audit-spool"
  sinks:
    trail:
      jsonl:
        path: "$OUT/audit.jsonl"
YAML
port_busy "$GATEWAY_PORT" && die "port $GATEWAY_PORT is in use"
port_busy "$ADMIN_PORT" && die "port $ADMIN_PORT is in use"
log "starting $FHIRGATE_BIN on :$GATEWAY_PORT (log $OUT/fhirgate.log)"
(
  FHIRGATE_LOG="${FHIRGATE_LOG:-warn}" exec setsid "$FHIRGATE_BIN" serve --config "$OUT/fhirgate.yaml" \
    </dev/null >>"$OUT/fhirgate.log" 2>&1
) &
echo $! >"$GATEWAY_PID"
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 60 "$(cat "$GATEWAY_PID")" "$OUT/fhirgate.log" fhirgate

describe="$(basename "$FHIRGATE_BIN") at $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ "$FHIRGATE_BIN" == */release/* ]] || describe="$describe (not a release build)"
log "driving the gateway for ${SECONDS_TO_RUN}s at ${RATE}/s (warm-up ${WARMUP}s)"
rc=0
"$PYTHON" "$FHIRGATE_ROOT/scripts/soak_load.py" \
  --base "http://127.0.0.1:$GATEWAY_PORT/fhir" --idp "http://127.0.0.1:$IDP_PORT" \
  --index "$FHIRGATE_ROOT/e2e/data/index.json" --pid "$(cat "$GATEWAY_PID")" \
  --seconds "$SECONDS_TO_RUN" --warmup "$WARMUP" --rate "$RATE" \
  --report "$REPORT" --gateway-desc "$describe" || rc=$?
log "report: $REPORT"
[[ $rc -eq 0 ]] || log "FAILED: unexpected statuses or failed requests (see the report)"
exit "$rc"
