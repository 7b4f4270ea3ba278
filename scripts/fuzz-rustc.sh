#!/usr/bin/env bash
# RUSTC_WORKSPACE_WRAPPER of scripts/fuzz.sh: compiles fhirgate's own crates with libFuzzer's
# coverage instrumentation (flags stable rustc accepts) and `--cfg fuzzing`, and the fuzz
# binaries with their debug information stripped (symbols kept for backtraces). Cargo runs
# it for workspace crates only, so the dependencies are the ones `cargo test` already built.
# Build scripts are left alone: they are not linked with libFuzzer.
set -euo pipefail
rustc="$1"
shift
name=""
previous=""
for arg in "$@"; do
  [[ "$previous" == --crate-name ]] && name="$arg"
  previous="$arg"
done
case "$name" in
  build_script_*) exec "$rustc" "$@" ;;
esac
flags=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  --cfg fuzzing
  -Cdebug-assertions
  -Coverflow-checks
)
case " $* " in
  *" --crate-type bin "*) flags+=(-Cstrip=debuginfo) ;;
esac
exec "$rustc" "$@" "${flags[@]}"
