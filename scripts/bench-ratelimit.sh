#!/usr/bin/env bash
# Requests per second through fhirgate (release build) without rate limits, with a rule in
# memory and with the same rule in Redis, measured side by side in one run: a static origin
# (nginx) behind the gateway, wrk in front, the rounds interleaved so that drift in the
# machine's load spreads over every variant.
#
#   scripts/bench-ratelimit.sh [ROUNDS] [SECONDS]     (defaults: 3 rounds of 10 s)
#
# Installs Debian's wrk, nginx, redis-server, openssl and curl when missing. Prints a
# markdown table; the raw wrk output is kept in $FHIRGATE_WORK/bench-ratelimit/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

ROUNDS="${1:-3}"
SECONDS_PER_RUN="${2:-10}"
OUT="$WORK_DIR/bench-ratelimit"
ORIGIN_PORT=18291
GATEWAY_PORT=18280
ADMIN_PORT=18281
REDIS_PORT=18279
FIXTURES="$FHIRGATE_ROOT/crates/fhirgate/tests/fixtures"
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
install_missing wrk nginx redis-server openssl curl

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

# ------------------------------------------------------------------ gateway variants
config() {
  local name="$1" limits="$2"
  cat >"$OUT/$name.yaml" <<YAML
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
  spool: { path: "$OUT/audit-$name.spool" }
  sinks: { trail: { jsonl: { path: "$OUT/audit-$name.jsonl" } } }
$limits
YAML
}
RULE='  rules:
    - { name: per-client, key: [client_id, subject], rate: 100000000, per: 1s, burst: 100000000 }'
config none ""
config memory "rate_limits:
$RULE"
config redis "rate_limits:
  redis: { url: \"redis://127.0.0.1:$REDIS_PORT\", failure_mode: closed }
$RULE"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
"$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "http://127.0.0.1:$ORIGIN_PORT/jwks.json" --timeout 20 >/dev/null

run_variant() {
  local name="$1" round="$2"
  "$BIN" serve --config "$OUT/$name.yaml" 2>"$OUT/gateway-$name.log" &
  local pid=$!
  "$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "http://127.0.0.1:$ADMIN_PORT/readyz" --timeout 20 >/dev/null \
    || die "gateway ($name) did not get ready (log: $OUT/gateway-$name.log)"
  local url="http://127.0.0.1:$GATEWAY_PORT/fhir/Patient/pat-A"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$url")
  [[ "$status" == 200 ]] || die "gateway ($name) answered $status instead of 200"
  wrk -t1 -c50 -d2s -H "Authorization: Bearer $TOKEN" "$url" >/dev/null
  wrk -t1 -c50 -d"${SECONDS_PER_RUN}s" --latency -H "Authorization: Bearer $TOKEN" "$url" \
    >"$OUT/wrk-$name-$round.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq 1 "$ROUNDS"); do
  for name in none memory redis; do
    log "round $round: $name"
    run_variant "$name" "$round"
  done
done

echo
echo "| variant | requests/s per round | p50 latency (last round) | p99 latency (last round) |"
echo "|---|---|---|---|"
for name in none memory redis; do
  rps=$(grep -h "Requests/sec" "$OUT"/wrk-"$name"-*.txt | awk '{printf "%s%.0f", sep, $2; sep=", "}')
  p50=$(grep -h " 50% " "$OUT/wrk-$name-$ROUNDS.txt" | awk '{print $2}')
  p99=$(grep -h " 99% " "$OUT/wrk-$name-$ROUNDS.txt" | awk '{print $2}')
  echo "| $name | $rps | $p50 | $p99 |"
done
