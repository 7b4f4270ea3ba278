#!/usr/bin/env bash
# Clinical request latency through fhirgate (release build) while its FHIR audit sink is up,
# never answers, or refuses connections, measured side by side in one run: a static origin
# (nginx) behind the gateway, a fixed request rate in front (hey), the rounds interleaved so
# that drift in the machine's load spreads over every variant. The gateway's records go to
# the spool first and to the sink from there, so the sink's state should not show in the
# clinical requests' latency.
#
#   scripts/bench-audit-sink.sh [ROUNDS] [SECONDS] [RATE]   (defaults: 3 rounds, 15 s, 1000/s)
#
# Installs Debian's hey, nginx, openssl and curl when missing. Prints a markdown table
# (p50, p99 per variant and round) and the largest p99 difference from "up"; raw output is
# kept in $FHIRGATE_WORK/bench-audit-sink/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

ROUNDS="${1:-3}"
SECONDS_PER_RUN="${2:-15}"
RATE="${3:-1000}"
WORKERS=20
OUT="$WORK_DIR/bench-audit-sink"
ORIGIN_PORT=18391
GATEWAY_PORT=18380
ADMIN_PORT=18381
SINK_PORT=18392
FIXTURES="$FHIRGATE_ROOT/crates/fhirgate/tests/fixtures"
rm -rf "$OUT"
mkdir -p "$OUT"

install_missing() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  log "installing ${missing[*]} (Debian packages)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    >"$OUT/apt.log" 2>&1 || die "could not install ${missing[*]} (log: $OUT/apt.log)"
}
install_missing hey nginx openssl curl

declare -a PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f "$OUT/nginx.pid" ]] && kill "$(cat "$OUT/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT

log "building fhirgate (release)"
cargo build --release -p fhirgate >"$OUT/build.log" 2>&1 || die "build failed (log: $OUT/build.log)"
BIN="$FHIRGATE_ROOT/target/release/fhirgate"

# ------------------------------------------------------------------ origin
mkdir -p "$OUT/www/fhir/Patient"
printf '{"keys":[%s]}' "$(cat "$FIXTURES/rsa-a.jwk.json")" >"$OUT/www/jwks.json"
cat >"$OUT/www/fhir/Patient/pat-A" <<'JSON'
{"resourceType":"Patient","id":"pat-A","meta":{"versionId":"1"},"name":[{"family":"Benchmark","given":["Synthetic"]}],"gender":"other","birthDate":"1970-01-01"}
JSON
cat >"$OUT/nginx.conf" <<NGINX
worker_processes 1;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $OUT/www;
    location /fhir/ { default_type "application/fhir+json"; }
    location = /jwks.json { default_type "application/json"; }
  }
}
NGINX
nginx -c "$OUT/nginx.conf"

# ------------------------------------------------------------------ token
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","kid":"rsa-a","typ":"JWT"}' | b64url)
payload=$(printf '{"iss":"https://idp.bench","aud":"https://gw.bench/fhir","sub":"user-1","client_id":"bench-app","iat":%d,"exp":%d,"scope":"launch/patient patient/*.rs","patient":"pat-A"}' \
  "$now" "$((now + 3600))" | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$FIXTURES/rsa-a.pem" | b64url)
TOKEN="$header.$payload.$signature"

# ------------------------------------------------------------------ gateway
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
    algorithms: ["RS256"]
audit:
  spool: { path: "$OUT/spool" }
  sinks:
    audit-fhir:
      fhir: { url: "http://127.0.0.1:$SINK_PORT/fhir", batch: 100, timeout: 2s, backoff_max: 2s }
YAML
"$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "http://127.0.0.1:$ORIGIN_PORT/jwks.json" --timeout 20 >/dev/null

# start_sink up|silent|refused: the sink's state for one run
SINK_PID=""
start_sink() {
  case "$1" in
    up) "$PYTHON" "$FHIRGATE_ROOT/scripts/audit_sink_stub.py" ack "$SINK_PORT" & SINK_PID=$! ;;
    silent) "$PYTHON" "$FHIRGATE_ROOT/scripts/audit_sink_stub.py" silent "$SINK_PORT" & SINK_PID=$! ;;
    refused) SINK_PID="" ;;
  esac
  [[ -z "$SINK_PID" ]] || PIDS+=("$SINK_PID")
  sleep 0.5
}

metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v name="$1" '$1 == name {print $2}'; }

run_variant() {
  local name="$1" round="$2"
  rm -rf "$OUT/spool"
  start_sink "$name"
  "$BIN" serve --config "$OUT/fhirgate.yaml" 2>"$OUT/gateway-$name-$round.log" &
  local pid=$!
  "$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "http://127.0.0.1:$ADMIN_PORT/readyz" --timeout 20 >/dev/null \
    || die "gateway ($name) did not get ready (log: $OUT/gateway-$name-$round.log)"
  local url="http://127.0.0.1:$GATEWAY_PORT/fhir/Patient/pat-A"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$url")
  [[ "$status" == 200 ]] || die "gateway ($name) answered $status instead of 200"
  hey -z 2s -c "$WORKERS" -q $((RATE / WORKERS)) -H "Authorization: Bearer $TOKEN" "$url" >/dev/null
  hey -z "${SECONDS_PER_RUN}s" -c "$WORKERS" -q $((RATE / WORKERS)) -H "Authorization: Bearer $TOKEN" "$url" \
    >"$OUT/hey-$name-$round.txt"
  sleep 1.2
  {
    echo "unshipped $(metric 'fhirgate_audit_unshipped_records{sink="audit-fhir"}')"
    echo "oldest_age $(metric 'fhirgate_audit_oldest_unshipped_age_seconds{sink="audit-fhir"}')"
    echo "records $(metric fhirgate_audit_records_total)"
  } >"$OUT/metrics-$name-$round.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [[ -n "$SINK_PID" ]]; then kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; fi
  grep -q "\[200\]" "$OUT/hey-$name-$round.txt" || die "no 200 answers in $OUT/hey-$name-$round.txt"
  if grep -A5 "Status code distribution" "$OUT/hey-$name-$round.txt" | grep -v "\[200\]" | grep -q "\["; then
    die "answers other than 200 in $OUT/hey-$name-$round.txt"
  fi
}

for round in $(seq 1 "$ROUNDS"); do
  for name in up silent refused; do
    log "round $round: sink $name"
    run_variant "$name" "$round"
  done
done

# hey prints "  99% in 0.0012 secs"
pct() { awk -v p="$2%" '$1 == p && $2 == "in" {printf "%.2f", $3 * 1000}' "$1"; }
echo
echo "fixed rate $RATE requests/s ($WORKERS workers), $SECONDS_PER_RUN s per run, $ROUNDS rounds; latency in ms"
echo
echo "| sink | round | requests/s | p50 | p99 | unshipped at end | oldest unshipped (s) |"
echo "|---|---|---|---|---|---|---|"
for name in up silent refused; do
  for round in $(seq 1 "$ROUNDS"); do
    f="$OUT/hey-$name-$round.txt"
    rps=$(awk '$1 == "Requests/sec:" {printf "%.0f", $2}' "$f")
    unshipped=$(awk '$1 == "unshipped" {print $2}' "$OUT/metrics-$name-$round.txt")
    age=$(awk '$1 == "oldest_age" {print $2}' "$OUT/metrics-$name-$round.txt")
    echo "| $name | $round | $rps | $(pct "$f" 50) | $(pct "$f" 99) | $unshipped | $age |"
  done
done
echo
for name in silent refused; do
  worst=0
  for round in $(seq 1 "$ROUNDS"); do
    d=$(awk -v a="$(pct "$OUT/hey-$name-$round.txt" 99)" -v b="$(pct "$OUT/hey-up-$round.txt" 99)" 'BEGIN {printf "%.2f", a - b}')
    worst=$(awk -v a="$d" -v b="$worst" 'BEGIN {print (a > b) ? a : b}')
  done
  echo "largest p99 difference, sink $name vs up in the same round: $worst ms (target: at most 5 ms)"
done
