#!/usr/bin/env bash
# How fast `fhirgate audit query` (release build) answers over a synthetic trail of a
# million records, and whether it answers right: the records of one patient in the last 24
# hours, compared with an independent computation in Python over the same files.
#
#   scripts/bench-audit-query.sh [RUNS] [RECORDS]     (defaults: 7 runs, 1000000 records)
#
# The trail (scripts/audit_trail.py, seed 42) spans the last 48 hours for 2,000 synthetic
# patients: a main file and two rotated files, a few records delivered twice and a few lines
# cut short. Everything is kept in $FHIRGATE_WORK/bench-audit-query/. Timings are wall
# times with the files in the page cache (after one warm-up run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

RUNS="${1:-7}"
RECORDS="${2:-1000000}"
PATIENT="pat-00042"
OUT="$WORK_DIR/bench-audit-query"
TRAIL="$OUT/trail"
mkdir -p "$OUT"
command -v "$PYTHON" >/dev/null 2>&1 || die "python3 is required (set PYTHON= to another interpreter)"

log "building fhirgate (release)"
cargo build --release -p fhirgate >"$OUT/build.log" 2>&1 || die "build failed (log: $OUT/build.log)"
# A copy, so that another build into the same target folder cannot change it mid-run.
cp "${CARGO_TARGET_DIR:-$FHIRGATE_ROOT/target}/release/fhirgate" "$OUT/fhirgate"
BIN="$OUT/fhirgate"

log "generating $RECORDS records over the last 48 hours"
"$PYTHON" "$FHIRGATE_ROOT/scripts/audit_trail.py" generate --out "$TRAIL" --records "$RECORDS" \
  --patients 2000 --hours 48 --seed 42 >"$OUT/files.txt"
mapfile -t FILES <"$OUT/files.txt"
TRAIL_BYTES=$(cat "${FILES[@]}" | wc -c)
TRAIL_LINES=$(cat "${FILES[@]}" | wc -l)

now_ms() { date +%s%3N; }
rfc3339_of_ms() { "$PYTHON" -c 'import sys,time; ms=int(sys.argv[1]); print(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms//1000)) + ".%03dZ" % (ms%1000))' "$1"; }

# ------------------------------------------------------------------ correctness
DAY_MS=$((24 * 3600 * 1000))
SINCE_MS=$(( $(now_ms) - DAY_MS ))
SINCE=$(rfc3339_of_ms "$SINCE_MS")
log "checking --patient $PATIENT --since $SINCE against Python"
"$BIN" audit query --trail "$TRAIL/audit.jsonl" --patient "$PATIENT" --since "$SINCE" --format json \
  >"$OUT/answer-absolute.jsonl" 2>"$OUT/answer-absolute.err"
CHECK_ABSOLUTE=$("$PYTHON" "$FHIRGATE_ROOT/scripts/audit_trail.py" check --patient "$PATIENT" \
  --since "$SINCE_MS" --answer "$OUT/answer-absolute.jsonl" "${FILES[@]}") \
  || die "absolute --since: $CHECK_ABSOLUTE"

# ------------------------------------------------------------------ timings
# time_runs NAME ARGS...: RUNS timed runs after one warm-up; wall ms per run in $OUT/NAME.ms
time_runs() {
  local name="$1"; shift
  "$BIN" audit query --trail "$TRAIL/audit.jsonl" "$@" >/dev/null 2>&1
  : >"$OUT/$name.ms"
  local i start end
  for i in $(seq 1 "$RUNS"); do
    start=$(now_ms)
    "$BIN" audit query --trail "$TRAIL/audit.jsonl" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    end=$(now_ms)
    echo "$((end - start)) $start $end" >>"$OUT/$name.ms"
  done
}
summary() {
  sort -n "$OUT/$1.ms" | awk '{ms[NR]=$1} END {printf "min %d ms, median %d ms", ms[1], ms[int((NR+1)/2)]}'
}

log "timing --patient $PATIENT --since 24h ($RUNS runs)"
time_runs patient-24h --patient "$PATIENT" --since 24h --format json
read -r _ LAST_START LAST_END < <(tail -n 1 "$OUT/patient-24h.ms")
CHECK_RELATIVE=$("$PYTHON" "$FHIRGATE_ROOT/scripts/audit_trail.py" check --patient "$PATIENT" \
  --since "$((LAST_START - DAY_MS))" --slack-ms "$((LAST_END - LAST_START + 1000))" \
  --answer "$OUT/patient-24h.out" "${FILES[@]}") \
  || die "--since 24h: $CHECK_RELATIVE"

log "timing --patient $PATIENT over the whole trail ($RUNS runs)"
time_runs patient-all --patient "$PATIENT" --format json
log "timing --since 24h alone, every line parsed ($RUNS runs)"
time_runs since-24h --since 24h --format json

section "fhirgate audit query, $(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "trail: $TRAIL_LINES lines, $((TRAIL_BYTES / 1000000)) MB in ${#FILES[@]} files, $((TRAIL_BYTES / TRAIL_LINES)) bytes a line"
echo "answer: $(wc -l <"$OUT/patient-24h.out") records for $PATIENT in the last 24 hours"
echo "stderr: $(tr '\n' ' ' <"$OUT/patient-24h.err")"
echo "check (absolute --since): $CHECK_ABSOLUTE"
echo "check (--since 24h):      $CHECK_RELATIVE"
echo
echo "| query | records out | wall time ($RUNS runs) |"
echo "|---|---|---|"
echo "| --patient $PATIENT --since 24h | $(wc -l <"$OUT/patient-24h.out") | $(summary patient-24h) |"
echo "| --patient $PATIENT | $(wc -l <"$OUT/patient-all.out") | $(summary patient-all) |"
echo "| --since 24h | $(wc -l <"$OUT/since-24h.out") | $(summary since-24h) |"
