#!/usr/bin/env bash
# Coverage-guided runs of the fuzz targets with the stable toolchain (docs/FUZZING.md).
#
#   scripts/fuzz.sh [TARGET...]     every target of fuzz/Cargo.toml when none is named
#
# Builds fuzz/ with libFuzzer's coverage instrumentation using only flags stable rustc
# accepts (no sanitizer, so no nightly and no RUSTC_BOOTSTRAP): scripts/fuzz-rustc.sh, as
# cargo's RUSTC_WORKSPACE_WRAPPER, adds them to fhirgate's own crates, so the dependencies are
# the uninstrumented ones `cargo test` has already built in target/ and only the workspace is
# compiled again (beside, not over, its ordinary build). Each target then runs for
# FUZZ_SECONDS from its seeds in fuzz/corpus/<target>/, FUZZ_JOBS at a time; what it adds to
# the corpus goes to $WORK_DIR/fuzz/corpus/<target>/ (the seeds are never written), a crash to
# $WORK_DIR/fuzz/artifacts/<target>/. Prints the executions of each target; exits non-zero
# when the build fails or any target finds a crash or an invariant failure.
#
# Environment: FUZZ_SECONDS (default 10), FUZZ_PROFILE (dev, the default, or release),
# FUZZ_JOBS (targets run at once, default 2), FHIRGATE_WORK (work folder, default .work).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

SECONDS_EACH="${FUZZ_SECONDS:-10}"
PROFILE="${FUZZ_PROFILE:-dev}"
JOBS="${FUZZ_JOBS:-2}"
OUT="$WORK_DIR/fuzz"
case "$PROFILE" in
  dev) BIN_DIR="$FHIRGATE_ROOT/target/debug" ;;
  release) BIN_DIR="$FHIRGATE_ROOT/target/release" ;;
  *) die "FUZZ_PROFILE is dev or release, not $PROFILE" ;;
esac

if [[ $# -gt 0 ]]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^fhirgate-fuzz$')
fi
mkdir -p "$OUT"

log "building ${#TARGETS[@]} fuzz targets (instrumented, $PROFILE)"
started=$SECONDS
bins=()
for target in "${TARGETS[@]}"; do bins+=(--bin "$target"); done
if ! CARGO_INCREMENTAL=0 RUSTC_WORKSPACE_WRAPPER="$FHIRGATE_ROOT/scripts/fuzz-rustc.sh" \
  cargo build -p fhirgate-fuzz "${bins[@]}" --profile "$PROFILE" >"$OUT/build.log" 2>&1; then
  tail -n 30 "$OUT/build.log" >&2
  die "fuzz build failed (log: $OUT/build.log)"
fi
log "built in $((SECONDS - started))s"

# run_target NAME: one run of FUZZ_SECONDS; its output in $OUT/NAME.log, its exit status in
# $OUT/NAME.rc.
run_target() {
  local target="$1" args=() corpora=("$OUT/corpus/$target") rc=0
  mkdir -p "$OUT/corpus/$target" "$OUT/artifacts/$target"
  if [[ -f "fuzz/dicts/$target.dict" ]]; then args+=("-dict=fuzz/dicts/$target.dict"); fi
  if [[ -d "fuzz/corpus/$target" ]]; then
    corpora+=("fuzz/corpus/$target")
  else
    log "$target: no seeds in fuzz/corpus/$target"
  fi
  "$BIN_DIR/$target" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
    -artifact_prefix="$OUT/artifacts/$target/" "${args[@]}" "${corpora[@]}" \
    >"$OUT/$target.log" 2>&1 || rc=$?
  echo "$rc" >"$OUT/$target.rc"
}

log "running each target for ${SECONDS_EACH}s, $JOBS at a time"
started=$SECONDS
for target in "${TARGETS[@]}"; do
  rm -f "$OUT/$target.rc"
  while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do wait -n || true; done
  run_target "$target" &
done
wait

failed=0
for target in "${TARGETS[@]}"; do
  rc="$(cat "$OUT/$target.rc" 2>/dev/null || echo '?')"
  log_file="$OUT/$target.log"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_file" | tail -n 1)"
  coverage="$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$log_file" | tail -n 1)"
  if [[ $rc == 0 ]]; then
    printf '  %-22s ok      %10s executions, %6s coverage points\n' "$target" "${runs:-?}" "${coverage:-?}"
  else
    printf '  %-22s FAILED  exit %s (log: %s)\n' "$target" "$rc" "$log_file"
    grep -A 1 -m 3 -E 'panicked|^==[0-9]+== ERROR|Test unit written|No such file' "$log_file" \
      | sed 's/^/      /' || true
    failed=1
  fi
done
log "ran in $((SECONDS - started))s"
exit "$failed"
