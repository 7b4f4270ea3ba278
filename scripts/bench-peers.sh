#!/usr/bin/env bash
# fhirgate side by side with the reverse-proxy peers (nginx, HAProxy, HAProxy + JWT, Caddy)
# in one run of the peers harness: fhirgate's release build is added as two more targets,
# `fhirgate` (RS256 tokens) and `fhirgate-es256`, each with full SMART enforcement and its
# audit trail on (spool + JSON lines). Results go to $FHIRGATE_WORK/bench-peers/<time>/,
# never into the harness's folder. docs/PERFORMANCE.md records the runs.
#
#   scripts/bench-peers.sh [HARNESS OPTIONS...]     e.g. --reps 3 --endpoints patient,search
#                                                   --token-pool   --loadgen oha --rate 2000
# Environment: PEERS_SH (the harness, default ../shared/bench/peers.sh next to the checkout),
# PORT_BASE (default 28080: clear of the test stack's ports), FHIRGATE_WORK.
# Installs Debian's wrk, nginx, haproxy and caddy when missing (the harness needs them), and
# oha from crates.io for `--loadgen oha`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$FHIRGATE_ROOT"

PEERS_SH="${PEERS_SH:-$FHIRGATE_ROOT/../shared/bench/peers.sh}"
[[ -x "$PEERS_SH" ]] || die "the peers harness is not at $PEERS_SH (set PEERS_SH)"
export PORT_BASE="${PORT_BASE:-28080}"
GW_PORT=$((PORT_BASE + 10))
GW_ES_PORT=$((PORT_BASE + 12))
OUT="$WORK_DIR/bench-peers/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"

bench_install wrk nginx haproxy caddy
[[ " $* " == *" oha "* ]] && bench_install_oha
log "building fhirgate (release)"
cargo build --release -p fhirgate --bin fhirgate >"$OUT/build.log" 2>&1 || die "build failed (log: $OUT/build.log)"

gateway="$FHIRGATE_ROOT/bench/peers-gateway.sh"
"$PEERS_SH" --out "$OUT" \
  --extra "fhirgate=http://127.0.0.1:$GW_PORT,auth=rs256" \
  --extra-cmd "fhirgate=$gateway $GW_PORT $((GW_PORT + 1)) $OUT/fhirgate" \
  --extra "fhirgate-es256=http://127.0.0.1:$GW_ES_PORT,auth=es256" \
  --extra-cmd "fhirgate-es256=$gateway $GW_ES_PORT $((GW_ES_PORT + 1)) $OUT/fhirgate-es256" \
  "$@"
log "results: $OUT"
