# Shared set-up for scripts/test, scripts/demo and scripts/bench (sourced, not run).
# Creates .venv, installs fleetpki with its test extras when pyproject.toml changed,
# and installs the Debian packages the tests and the demo use when they are missing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

log() { printf '==> %s\n' "$*" >&2; }

ensure_debs() {
    local missing=()
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
    command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
    [ -x /usr/bin/time ] || missing+=(time)  # scripts/bench: the one-shot CLI's CPU
    if [ "${FLEETPKI_DEBS:-test}" = "test" ]; then
        # the relying parties operators run, for the interoperability tests
        command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
        command -v certtool >/dev/null 2>&1 || missing+=(gnutls-bin)
        command -v node >/dev/null 2>&1 || missing+=(nodejs)
        command -v keytool >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
        command -v faketime >/dev/null 2>&1 || missing+=(faketime)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
            log "missing Debian packages: ${missing[*]} (install them with apt-get as root)"
            return 1
        fi
        local SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        log "installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_venv() {
    if [ "${FLEETPKI_SKIP_SETUP:-}" = "1" ] && [ -x "$PY" ]; then
        return 0
    fi
    if [ ! -x "$PY" ]; then
        log "creating virtualenv in $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.fleetpki-installed"
    local want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "installing fleetpki and its test dependencies into .venv"
        "$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
        "$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[test]" 2>&1 \
            | grep -v -E '^(WARNING: Location|  )' >&2 || true
        "$PY" -c "import pki, cryptography, sqlalchemy, click, rich, pytest" \
            || { log "installation failed"; return 1; }
        echo "$want" > "$stamp"
    fi
}

# "1y" -> "+365d" (libfaketime's relative offset); y = 365 days, w, d, h, m, s as in fleetpki
faketime_offset() {
    local text="$1" number unit
    number="${text%[ywdhms]}"
    unit="${text#"$number"}"
    case "$unit" in
        y) echo "+$((number * 365))d" ;;
        w) echo "+$((number * 7))d" ;;
        d|h|m|s) echo "+${number}${unit}" ;;
        *) log "--shift takes a number with y, w, d, h, m or s (e.g. 1y)"; return 2 ;;
    esac
}

# the thread-safe variant: the tests' processes run threads (paho, moto, the daemon)
faketime_library() {
    local lib
    for lib in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1 \
               /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
        [ -e "$lib" ] && { echo "$lib"; return 0; }
    done
    log "libfaketime is missing (Debian package faketime)"
    return 1
}
