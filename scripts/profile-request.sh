#!/usr/bin/env bash
# The gateway's cost per request, counted in a way the machine's other load does not move:
# the release gateway with the peers harness's configuration (bench/peers-fhirgate.yaml.in:
# JWKS keys, patient/ scopes, compartment checks, the audit spool and a JSON lines sink) in
# front of a small local origin serving the harness's fixtures, sent identical requests with
# one fixed token.
#
#   scripts/profile-request.sh [--endpoint patient|search] [--requests N] [--warmup W]
#                              [--connections C] [--mode callgrind|syscalls|cpu]
#                              [--alg rs256|es256] [--cpus LIST] [--no-build]
#
# Modes:
#   callgrind  (default) the gateway runs under valgrind's callgrind; after W warm-up
#              requests the counters are zeroed, N requests are sent, and the instructions
#              the whole process executed meanwhile (every thread: runtime, audit spool and
#              shipper) are divided by N. User space only; the profile is kept for
#              callgrind_annotate.
#   syscalls   the gateway runs under strace -f -c: system calls per request, by name, over
#              the W + N requests (a startup's few hundred calls are included; use N >> W).
#              Tracing slows every call, so timers fire more often per request than untraced.
#   cpu        user and system CPU time of the gateway per request from /proc (noisy on a
#              busy machine; for comparison with the harness's figure only).
#
# Defaults: --endpoint patient --requests 2000 --warmup 200 --connections 1 --alg rs256
# --cpus 1 (0 on a one-CPU machine): the gateway pinned to one CPU as the peers harness pins
# the proxy under test (its runtime then has one worker thread); --cpus all leaves it unpinned.
# Results and the rendered configuration go to $FHIRGATE_WORK/profile/<time>-<endpoint>/.
# Environment: BENCH_DIR (the peers harness's folder, default ../shared/bench next to the
# checkout), FHIRGATE_BIN (default target/release/fhirgate).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

endpoint=patient requests=2000 warmup=200 connections=1 mode=callgrind alg=rs256 build=1
cpus=$(( $(nproc) > 1 ? 1 : 0 ))
while [[ $# -gt 0 ]]; do
  case "$1" in
    --endpoint) endpoint="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --alg) alg="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) die "unknown option $1 (--help)" ;;
  esac
done
case "$endpoint" in
  patient) path="/fhir/Patient/123" ;;
  search) path="/fhir/Observation?patient=123" ;;
  *) die "--endpoint is patient or search" ;;
esac
case "$mode" in
  callgrind) command -v valgrind >/dev/null || die "valgrind is required (apt-get install valgrind)" ;;
  syscalls) command -v strace >/dev/null || die "strace is required (apt-get install strace)" ;;
  cpu) ;;
  *) die "--mode is callgrind, syscalls or cpu" ;;
esac

BENCH_DIR="${BENCH_DIR:-$FHIRGATE_ROOT/../shared/bench}"
[[ -d "$BENCH_DIR/fixtures" ]] || die "the harness's fixtures are not in $BENCH_DIR (set BENCH_DIR)"
token="$BENCH_DIR/keys/token-$alg.jwt"
[[ -f "$token" ]] || die "no token $token"
BIN="${FHIRGATE_BIN:-$FHIRGATE_ROOT/target/release/fhirgate}"
OUT="$WORK_DIR/profile/$(date +%Y%m%d-%H%M%S)-$endpoint-$mode"
mkdir -p "$OUT"
if [[ "$build" -eq 1 ]]; then
  log "building fhirgate (release)"
  cargo build --release -p fhirgate --bin fhirgate >"$OUT/build.log" 2>&1 \
    || die "build failed (log: $OUT/build.log)"
fi

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
origin_port="$(free_port)" gateway_port="$(free_port)" admin_port="$(free_port)"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

peer="$FHIRGATE_ROOT/scripts/profile_peer.py"
"$PYTHON" "$peer" origin "$origin_port" "$BENCH_DIR/fixtures" "$BENCH_DIR/keys/jwks.json" \
  >"$OUT/origin.log" 2>&1 &
pids+=($!)

sed -e "s|@GATEWAY_PORT@|$gateway_port|" -e "s|@ADMIN_PORT@|$admin_port|" \
    -e "s|@ORIGIN_URL@|http://127.0.0.1:$origin_port|" \
    -e "s|@JWKS_URL@|http://127.0.0.1:$origin_port/.well-known/jwks.json|" \
    -e "s|@ISSUER@|https://auth.bench.test/|" -e "s|@AUDIENCE@|https://fhir.bench.test/fhir|" \
    -e "s|@WORK@|$OUT/gateway|" \
    "$FHIRGATE_ROOT/bench/peers-fhirgate.yaml.in" >"$OUT/fhirgate.yaml"
mkdir -p "$OUT/gateway"
for _ in $(seq 100); do grep -q ready "$OUT/origin.log" 2>/dev/null && break; sleep 0.1; done

pin=()
[[ "$cpus" == all ]] || pin=(taskset -c "$cpus")
case "$mode" in
  callgrind)
    "${pin[@]}" valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$OUT/callgrind.out" \
      "$BIN" serve --config "$OUT/fhirgate.yaml" >"$OUT/gateway.log" 2>&1 &
    ;;
  syscalls)
    "${pin[@]}" strace -f -c -o "$OUT/strace.txt" \
      "$BIN" serve --config "$OUT/fhirgate.yaml" >"$OUT/gateway.log" 2>&1 &
    ;;
  cpu)
    "${pin[@]}" "$BIN" serve --config "$OUT/fhirgate.yaml" >"$OUT/gateway.log" 2>&1 &
    ;;
esac
gateway=$!
pids+=("$gateway")

url="http://127.0.0.1:$gateway_port$path"
for _ in $(seq 600); do
  curl -fs -o /dev/null "http://127.0.0.1:$admin_port/readyz" && break
  kill -0 "$gateway" 2>/dev/null || die "the gateway stopped (log: $OUT/gateway.log)"
  sleep 0.1
done
curl -fs -o /dev/null "http://127.0.0.1:$admin_port/readyz" || die "the gateway is not ready (log: $OUT/gateway.log)"

send() { "$PYTHON" "$peer" load "$url" "$token" "$1" "$connections" >/dev/null; }
cpu_ticks() { awk '{ print $14, $15 }' "/proc/$gateway/stat"; }

log "$endpoint: $warmup warm-up requests, then $requests measured ($connections connection(s), $mode)"
send "$warmup"
case "$mode" in
  callgrind)
    callgrind_control -z "$gateway" >/dev/null 2>&1
    send "$requests"
    callgrind_control -d "$gateway" >/dev/null 2>&1
    dump="$(ls -t "$OUT"/callgrind.out.* 2>/dev/null | head -1)"
    [[ -n "$dump" ]] || die "callgrind wrote no dump"
    total="$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")"
    echo "endpoint=$endpoint requests=$requests connections=$connections instructions=$total per_request=$((total / requests))" \
      | tee "$OUT/result.txt"
    log "profile: callgrind_annotate $dump"
    ;;
  syscalls)
    send "$requests"
    # strace writes its summary when the traced gateway exits.
    kill -TERM "$(pgrep -P "$gateway")"
    wait "$gateway" 2>/dev/null || true
    total=$((warmup + requests))
    awk -v n="$total" '
      /^-+/ { rule++; next }
      rule == 1 && $4 / n >= 0.01 { printf "%-16s %8.2f\n", $NF, $4 / n }
      rule == 2 { printf "%-16s %8.2f\n", "total", $4 / n; exit }' "$OUT/strace.txt" \
      | tee "$OUT/result.txt"
    ;;
  cpu)
    read -r user_before system_before <<<"$(cpu_ticks)"
    send "$requests"
    read -r user_after system_after <<<"$(cpu_ticks)"
    per_request() { echo $(( ($1) * 1000000 / $(getconf CLK_TCK) / requests )); }
    echo "endpoint=$endpoint requests=$requests connections=$connections" \
      "user_us_per_request=$(per_request "user_after - user_before")" \
      "system_us_per_request=$(per_request "system_after - system_before")" \
      | tee "$OUT/result.txt"
    ;;
esac
log "results: $OUT"
