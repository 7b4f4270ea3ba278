# Shared helpers for fhirgate's scripts. Source it; do not run it.
# shellcheck shell=bash

FHIRGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK_DIR="${FHIRGATE_WORK:-$FHIRGATE_ROOT/.work}"
PYTHON="${PYTHON:-python3}"

log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }
die() { printf '%s error: %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; exit 1; }
section() { printf '\n==== %s ====\n' "$*"; }

require_tools() {
  command -v "$PYTHON" >/dev/null 2>&1 || die "python3 is required (set PYTHON= to another interpreter)"
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "Python 3.9 or later is required ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || die "Python's venv/ensurepip modules are missing (Debian: apt-get install python3-venv)"
}

# Debian's redis-server, for the shared rate-limit tests; installed when missing.
require_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  local sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  log "installing redis-server (Debian package)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    >"$WORK_DIR/apt-redis.log" 2>&1 \
    || { $sudo apt-get update >>"$WORK_DIR/apt-redis.log" 2>&1 \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
              >>"$WORK_DIR/apt-redis.log" 2>&1; } \
    || die "redis-server could not be installed (log: $WORK_DIR/apt-redis.log)"
}

# ensure_cargo_tool COMMAND CRATE VERSION: `cargo install --locked CRATE --version VERSION`
# when `cargo COMMAND` is missing, compiled in $WORK_DIR/cargo-tools (never the project's
# target/). cargo-deny takes about 3 minutes of CPU (8 on 2 busy cores), cargo-cyclonedx
# about 2.5; once installed they are reused.
ensure_cargo_tool() {
  local command="$1" crate="$2" version="$3"
  cargo "$command" --version >/dev/null 2>&1 && return 0
  mkdir -p "$WORK_DIR"
  log "installing $crate $version (cargo install; first time takes minutes)"
  local started=$SECONDS
  if ! CARGO_TARGET_DIR="$WORK_DIR/cargo-tools" cargo install --locked "$crate" --version "$version" \
      >"$WORK_DIR/install-$crate.log" 2>&1; then
    tail -n 30 "$WORK_DIR/install-$crate.log" >&2
    die "cargo install $crate failed (full log: $WORK_DIR/install-$crate.log)"
  fi
  log "installed $crate in $((SECONDS - started))s"
}

require_node() {
  command -v node >/dev/null 2>&1 || die "Node.js 20 or later is required (node not found)"
  command -v npm >/dev/null 2>&1 || die "npm is required (not found)"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [[ "$major" -ge 20 ]] || die "Node.js 20 or later is required (found $(node --version))"
}

sha256_of() { "$PYTHON" -c 'import hashlib,sys; h=hashlib.sha256()
for p in sys.argv[1:]: h.update(open(p,"rb").read())
print(h.hexdigest())' "$@"; }

# ensure_venv NAME REQUIREMENTS_FILE: create $WORK_DIR/venv-NAME and install the
# requirements unless the stamp says this exact file is already installed.
# Prints the venv path on stdout.
ensure_venv() {
  local name="$1" req="$2"
  local venv="$WORK_DIR/venv-$name"
  local want
  want="$(sha256_of "$req")-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ -x "$venv/bin/python" && -f "$venv/.requirements.stamp" && "$(cat "$venv/.requirements.stamp")" == "$want" ]]; then
    printf '%s\n' "$venv"
    return 0
  fi
  mkdir -p "$WORK_DIR"
  if [[ ! -x "$venv/bin/python" ]]; then
    log "creating venv $venv"
    "$PYTHON" -m venv "$venv" || die "could not create venv $venv"
  fi
  log "installing $(realpath --relative-to="$FHIRGATE_ROOT" "$req") into $venv (first time may take minutes)"
  local started=$SECONDS
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" >"$venv/pip-install.log" 2>&1; then
    tail -n 30 "$venv/pip-install.log" >&2
    die "pip install -r $req failed (full log: $venv/pip-install.log)"
  fi
  printf '%s' "$want" >"$venv/.requirements.stamp"
  log "installed $(basename "$(dirname "$req")")/$(basename "$req") in $((SECONDS - started))s"
  printf '%s\n' "$venv"
}

# ensure_node_modules DIR: npm ci in DIR unless node_modules matches package-lock.json.
ensure_node_modules() {
  local dir="$1"
  require_node
  [[ -f "$dir/package-lock.json" ]] || die "$dir/package-lock.json is missing"
  local want stamp="$dir/node_modules/.fhirgate-lock.sha256"
  want="$(sha256_of "$dir/package-lock.json")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "npm ci in $(realpath --relative-to="$FHIRGATE_ROOT" "$dir")"
  local started=$SECONDS
  if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >"$WORK_DIR/npm-ci.log" 2>&1; then
    tail -n 30 "$WORK_DIR/npm-ci.log" >&2
    die "npm ci failed in $dir (full log: $WORK_DIR/npm-ci.log)"
  fi
  printf '%s' "$want" >"$stamp"
  log "npm ci done in $((SECONDS - started))s"
}

# pid_alive PIDFILE [PATTERN]: true when PIDFILE names a live process whose command
# line contains PATTERN (guards against a recycled pid).
pid_alive() {
  local pidfile="$1" pattern="${2:-}"
  [[ -f "$pidfile" ]] || return 1
  local pid
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -n "$pattern" && -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern" || return 1
  fi
  return 0
}

# stop_pidfile PIDFILE NAME [PATTERN]: stop exactly the process recorded in PIDFILE.
stop_pidfile() {
  local pidfile="$1" name="$2" pattern="${3:-}"
  if ! pid_alive "$pidfile" "$pattern"; then
    [[ -f "$pidfile" ]] && log "$name: not running (removing stale $(basename "$pidfile"))"
    rm -f "$pidfile"
    return 0
  fi
  local pid
  pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop on TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$pidfile"
  log "$name stopped (pid $pid)"
}

# port_busy PORT: true when something accepts connections on 127.0.0.1:PORT.
port_busy() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(0.5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

# wait_http URL TIMEOUT PID LOGFILE NAME: wait for URL to answer 200; on failure print
# the log tail and die.
wait_http() {
  local url="$1" timeout="$2" pid="$3" logfile="$4" name="$5"
  local rc=0
  "$PYTHON" "$FHIRGATE_ROOT/scripts/httpcheck.py" wait "$url" --timeout "$timeout" --pid "$pid" || rc=$?
  if [[ $rc -ne 0 ]]; then
    printf '\n---- last lines of %s ----\n' "$logfile" >&2
    tail -n 40 "$logfile" >&2 || true
    printf -- '---- end of %s ----\n' "$logfile" >&2
    die "$name did not come up at $url"
  fi
}
