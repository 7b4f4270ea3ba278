#!/usr/bin/env bash
# Writes a CycloneDX SBOM (JSON, spec 1.5) of the fhirgate release build into a folder:
#
#   scripts/sbom.sh OUT_DIR [--features otlp]
#
# The SBOM lists every crate compiled into target/release/fhirgate for this machine's target
# with the given features (build-time crates included, development-only ones not), with
# versions, licences, crates.io package URLs and checksums. It is made from Cargo.lock and
# Cargo.toml by cargo-cyclonedx (installed when missing); nothing is built. Its timestamp
# is the last commit's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FHIRGATE_ROOT"

usage() { printf 'usage: %s OUT_DIR [--features FEATURES]\n' "$0" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
OUT_DIR="$1"
shift
FEATURES=()
case "${1:-}" in
  "") ;;
  --features) [[ $# -eq 2 ]] || usage; FEATURES=(--features "$2") ;;
  *) usage ;;
esac

ensure_cargo_tool cyclonedx cargo-cyclonedx 0.5.9
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
# The workspace's members: the version of fhirgate, and each member's folder.
mapfile -t MEMBERS < <(cargo metadata --no-deps --format-version 1 | "$PYTHON" -c '
import json, os, sys
packages = json.load(sys.stdin)["packages"]
print(next(p["version"] for p in packages if p["name"] == "fhirgate"))
for p in packages:
    print(os.path.dirname(p["manifest_path"]))')
[[ -n "${MEMBERS[0]:-}" ]] || die "cargo metadata did not name the fhirgate package"
NAME="fhirgate-${MEMBERS[0]}.cdx"

# cargo-cyclonedx writes an SBOM beside every member's Cargo.toml; fhirgate's (which holds
# fhirgate-policy as a component) is moved out, the others removed.
SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)" \
  cargo cyclonedx --manifest-path crates/fhirgate/Cargo.toml --format json --spec-version 1.5 \
    --override-filename "$NAME" -qq "${FEATURES[@]}"
mv "crates/fhirgate/$NAME.json" "$OUT_DIR/$NAME.json"
for member in "${MEMBERS[@]:1}"; do
  rm -f "$member/$NAME.json"
done

COMPONENTS="$("$PYTHON" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["components"]))' "$OUT_DIR/$NAME.json")"
log "wrote $OUT_DIR/$NAME.json ($COMPONENTS components)"
