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
# Each round also measures the origin alone, for scale.
# Installs Debian's hey, nginx, openssl and curl when missing. Prints a markdown table
# (p50, p99 per variant and round) and the largest p99 difference from "up"; raw output is
# kept in $FHIRGATE_WORK/bench-audit-sink/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
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
rm -rf "$OUT"
mkdir -p "$OUT"

bench_install hey nginx openssl curl

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

# ------------------------------------------------------------------ gateway
cat >"$OUT/fhirgate.yaml" <<YAML
listen: "127.0.0.1:$GATEWAY_PORT"
admin_listen: "127.0.0.1:$ADMIN_PORT"
upstream:
  url: "http://127.0.0.1:$ORIGIN_PORT/fhir"
  public_base_path: "/fhir"
$(bench_issuer_yaml "$ORIGIN_PORT")
audit:
  spool: { path: "$OUT/spool" }
  sinks:
    audit-fhir:
      fhir: { url: "http://127.0.0.1:$SINK_PORT/fhir", batch: 100, timeout: 2s, backoff_max: 2s }
YAML

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

# The origin alone, for scale: what the load generator and nginx take without the gateway.
run_direct() {
  local url="http://127.0.0.1:$ORIGIN_PORT/fhir/Patient/pat-A"
  hey -z "${SECONDS_PER_RUN}s" -c "$WORKERS" -q $((RATE / WORKERS)) "$url" >"$OUT/hey-direct-$1.txt"
}

for round in $(seq 1 "$ROUNDS"); do
  log "round $round: origin direct"
  run_direct "$round"
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
for round in $(seq 1 "$ROUNDS"); do
  f="$OUT/hey-direct-$round.txt"
  rps=$(awk '$1 == "Requests/sec:" {printf "%.0f", $2}' "$f")
  echo "| (origin direct, no gateway) | $round | $rps | $(pct "$f" 50) | $(pct "$f" 99) | | |"
done
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
