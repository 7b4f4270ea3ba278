#!/usr/bin/env bash
# Runs fhirgate (release) as a target of the peers harness: renders bench/peers-fhirgate.yaml.in
# with the harness's origin, JWKS, issuer and audience (BENCH_* in the environment the harness
# gives an --extra-cmd) and the given ports, then becomes the gateway process, so the harness
# counts this PID's CPU and stops it at the end.
#
#   bench/peers-gateway.sh PORT ADMIN_PORT WORK_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="$1" admin="$2" work="$3"
: "${BENCH_ORIGIN_URL:?run by the peers harness (BENCH_ORIGIN_URL is not set)}"
rm -rf "$work"
mkdir -p "$work"
sed -e "s|@GATEWAY_PORT@|$port|" -e "s|@ADMIN_PORT@|$admin|" \
    -e "s|@ORIGIN_URL@|$BENCH_ORIGIN_URL|" -e "s|@JWKS_URL@|$BENCH_JWKS_URL|" \
    -e "s|@ISSUER@|$BENCH_ISSUER|" -e "s|@AUDIENCE@|$BENCH_AUDIENCE|" -e "s|@WORK@|$work|" \
    "$here/peers-fhirgate.yaml.in" >"$work/fhirgate.yaml"
exec "${FHIRGATE_BIN:-$here/../target/release/fhirgate}" serve --config "$work/fhirgate.yaml"
