#!/usr/bin/env bash
# Resident memory of fhirgate (release) holding many distinct verified tokens: a static origin
# (nginx) behind the gateway, then COUNT requests, each with a token of its own (ES256, own
# jti), sent by scripts/token_flood.py. Prints the gateway's RSS after start, after a warm-up
# of 1,000 tokens and after COUNT more (the verified-token cache holds up to 100,000 for at
# most 5 minutes, so after the flood it holds them all).
#
#   scripts/bench-token-memory.sh [COUNT]     (default 100000)
#
# Installs Debian's nginx and curl when missing; PyJWT and cryptography come from the test
# venv (e2e/requirements.txt). Raw output in $FHIRGATE_WORK/bench-token-memory/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$FHIRGATE_ROOT"

COUNT="${1:-100000}"
OUT="$WORK_DIR/bench-token-memory"
ORIGIN_PORT=18491
GATEWAY_PORT=18480
ADMIN_PORT=18481
rm -rf "$OUT"
mkdir -p "$OUT"

bench_install nginx curl
VENV="$(ensure_venv test "$FHIRGATE_ROOT/e2e/requirements.txt")"
log "building fhirgate (release)"
cargo build --release -p fhirgate --bin fhirgate >"$OUT/build.log" 2>&1 || die "build failed (log: $OUT/build.log)"

declare -a PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  bench_cleanup
}
trap cleanup EXIT

bench_origin "$ORIGIN_PORT"
# The flood's tokens are ES256, signed with the ec-a test key.
printf '{"keys":[%s,%s]}' "$(cat "$BENCH_FIXTURES/rsa-a.jwk.json")" "$(cat "$BENCH_FIXTURES/ec-a.jwk.json")" \
  >"$OUT/www/jwks.json"

cat >"$OUT/fhirgate.yaml" <<YAML
listen: "127.0.0.1:$GATEWAY_PORT"
admin_listen: "127.0.0.1:$ADMIN_PORT"
upstream:
  url: "http://127.0.0.1:$ORIGIN_PORT/fhir"
  public_base_path: "/fhir"
issuers:
  - issuer: "https://idp.bench"
    audience: "https://gw.bench/fhir"
    jwks_uri: "http://127.0.0.1:$ORIGIN_PORT/jwks.json"
    algorithms: ["ES256"]
audit:
  spool: { path: "$OUT/spool" }
  sinks:
    trail:
      jsonl: { path: "$OUT/audit.jsonl" }
YAML

"$FHIRGATE_ROOT/target/release/fhirgate" serve --config "$OUT/fhirgate.yaml" >"$OUT/fhirgate.log" 2>&1 &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
"$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "http://127.0.0.1:$ADMIN_PORT/readyz" --timeout 30 >/dev/null \
  || die "the gateway did not become ready (log: $OUT/fhirgate.log)"

rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$GATEWAY_PID/status"; }
flood() {
  "$VENV/bin/python" "$FHIRGATE_ROOT/scripts/token_flood.py" "http://127.0.0.1:$GATEWAY_PORT/fhir/Patient/pat-A" \
    "$1" "$BENCH_FIXTURES/ec-a.pem" ec-a https://idp.bench https://gw.bench/fhir | tee -a "$OUT/flood.log"
}

START_RSS="$(rss)"
flood 1000
sleep 2
WARM_RSS="$(rss)"
flood "$COUNT"
sleep 2
END_RSS="$(rss)"
printf '\n| point | RSS MiB |\n|---|---:|\n'
printf '| started | %s |\n| after 1,000 tokens | %s |\n| after %s more tokens | %s |\n' \
  "$START_RSS" "$WARM_RSS" "$COUNT" "$END_RSS"
