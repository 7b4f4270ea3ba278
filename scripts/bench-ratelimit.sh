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
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$FHIRGATE_ROOT"

ROUNDS="${1:-3}"
SECONDS_PER_RUN="${2:-10}"
OUT="$WORK_DIR/bench-ratelimit"
ORIGIN_PORT=18291
GATEWAY_PORT=18280
ADMIN_PORT=18281
REDIS_PORT=18279
mkdir -p "$OUT"

bench_install wrk nginx redis-server openssl curl

declare -a PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  bench_cleanup
}
trap cleanup EXIT

log "building fhirgate (release)"
cargo build --release -p fhirgate >"$OUT/build.log" 2>&1 || die "build failed (log: $OUT/build.log)"
BIN="$FHIRGATE_ROOT/target/release/fhirgate"

bench_origin "$ORIGIN_PORT"
TOKEN="$(bench_token)"

# ------------------------------------------------------------------ gateway variants
config() {
  local name="$1" limits="$2"
  cat >"$OUT/$name.yaml" <<YAML
listen: "127.0.0.1:$GATEWAY_PORT"
admin_listen: "127.0.0.1:$ADMIN_PORT"
upstream:
  url: "http://127.0.0.1:$ORIGIN_PORT/fhir"
  public_base_path: "/fhir"
$(bench_issuer_yaml "$ORIGIN_PORT")
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
