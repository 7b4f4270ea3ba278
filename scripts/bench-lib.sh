# Shared by the benchmark scripts (sourced after lib.sh): Debian tools, a static FHIR origin
# served by nginx, and a signed patient token for it.
#
#   bench_install TOOL...            install missing Debian packages (log in $OUT/apt.log)
#   bench_install_oha                oha (crates.io, `cargo install`) into $WORK_DIR/tools when
#                                    it is not on PATH, and puts it on PATH
#   bench_origin PORT                nginx on 127.0.0.1:PORT serving /fhir/Patient/pat-A and
#                                    /jwks.json (the rsa-a test key) from $OUT/www
#   bench_token                      prints an RS256 token of issuer https://idp.bench,
#                                    audience https://gw.bench/fhir, patient pat-A, 1 h
#   bench_issuer_yaml ORIGIN_PORT    the `issuers:` section trusting that token
# Each script sets OUT before sourcing this and calls bench_cleanup from its EXIT trap.

BENCH_FIXTURES="$FHIRGATE_ROOT/crates/fhirgate/tests/fixtures"

bench_install() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  log "installing ${missing[*]} (Debian packages)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    >"$OUT/apt.log" 2>&1 || die "could not install ${missing[*]} (log: $OUT/apt.log)"
}

bench_install_oha() {
  export PATH="$WORK_DIR/tools/bin:$PATH"
  command -v oha >/dev/null 2>&1 && return 0
  log "installing oha (cargo install; first time takes minutes)"
  cargo install --locked --root "$WORK_DIR/tools" oha >"$OUT/oha-install.log" 2>&1 \
    || die "could not install oha (log: $OUT/oha-install.log)"
}

bench_origin() {
  local port="$1"
  mkdir -p "$OUT/www/fhir/Patient"
  printf '{"keys":[%s]}' "$(cat "$BENCH_FIXTURES/rsa-a.jwk.json")" >"$OUT/www/jwks.json"
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
    listen 127.0.0.1:$port;
    root $OUT/www;
    location /fhir/ { default_type "application/fhir+json"; }
    location = /jwks.json { default_type "application/json"; }
  }
}
NGINX
  nginx -c "$OUT/nginx.conf"
  "$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "http://127.0.0.1:$port/jwks.json" --timeout 20 >/dev/null
}

bench_token() {
  b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
  local now header payload signature
  now=$(date +%s)
  header=$(printf '{"alg":"RS256","kid":"rsa-a","typ":"JWT"}' | b64url)
  payload=$(printf '{"iss":"https://idp.bench","aud":"https://gw.bench/fhir","sub":"user-1","client_id":"bench-app","iat":%d,"exp":%d,"scope":"launch/patient patient/*.rs","patient":"pat-A"}' \
    "$now" "$((now + 3600))" | b64url)
  signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$BENCH_FIXTURES/rsa-a.pem" | b64url)
  printf '%s.%s.%s' "$header" "$payload" "$signature"
}

bench_issuer_yaml() {
  cat <<YAML
issuers:
  - issuer: "https://idp.bench"
    audience: "https://gw.bench/fhir"
    jwks_uri: "http://127.0.0.1:$1/jwks.json"
    algorithms: ["RS256"]
YAML
}

bench_cleanup() {
  [[ -f "$OUT/nginx.pid" ]] && kill "$(cat "$OUT/nginx.pid")" 2>/dev/null || true
}
