# shellcheck shell=bash
# Shared helpers for the scripts in scripts/. Source it, do not run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# It only defines variables and functions; nothing runs at source time, so every script
# decides itself whether it needs .env, the venv, and so on.

# Repository root, found from this file's location so scripts work from any cwd.
FINPULSE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
export FINPULSE_ROOT
FINPULSE_VENV="$FINPULSE_ROOT/.venv"
# Touched by scripts/setup after a successful install; the venv is stale when
# pyproject.toml is newer than it (dependencies may have changed).
FINPULSE_VENV_STAMP="$FINPULSE_VENV/.finpulse-setup-stamp"

# --- logging -------------------------------------------------------------------------
# Everything goes to stderr so stdout stays usable for machine-readable output.
_finpulse_tag() { printf '[%s]' "${FINPULSE_LOG_TAG:-$(basename "$0")}"; }
log_info() { printf '%s %s\n' "$(_finpulse_tag)" "$*" >&2; }
log_warn() { printf '%s WARNING: %s\n' "$(_finpulse_tag)" "$*" >&2; }
log_error() { printf '%s ERROR: %s\n' "$(_finpulse_tag)" "$*" >&2; }
die() {
    log_error "$*"
    exit 1
}

# --- .env ----------------------------------------------------------------------------
# Create .env from the committed template when missing, so a fresh clone works
# without a manual step. An existing .env is never touched (it may hold secrets).
ensure_env_file() {
    local env_file="$FINPULSE_ROOT/.env" example="$FINPULSE_ROOT/.env.example"
    [[ -f "$env_file" ]] && return 0
    [[ -f "$example" ]] || die "neither .env nor .env.example exists in $FINPULSE_ROOT"
    cp "$example" "$env_file"
    chmod 600 "$env_file" # it is meant to hold passwords and keys
    log_info "created .env from .env.example"
}

# Export KEY=VALUE lines of a dotenv file (default: .env) into the environment.
# Variables that are already set - even to an empty value - win over the file, so CI
# and the caller's shell can override anything. The file is parsed, not sourced: a
# dotenv file is data, and values such as keys with '/' or '=' must not be evaluated.
load_env() {
    local file="${1:-$FINPULSE_ROOT/.env}" line key value
    [[ -f "$file" ]] || return 0
    while IFS= read -r line || [[ -n "$line" ]]; do
        line="${line%$'\r'}"
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        line="${line#"${line%%[![:space:]]*}"}" # trim leading blanks
        line="${line#export }"
        [[ "$line" == *=* ]] || continue
        key="${line%%=*}"
        key="${key%"${key##*[![:space:]]}"}" # trim trailing blanks
        value="${line#*=}"
        value="${value#"${value%%[![:space:]]*}"}"
        [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        # Strip one pair of matching surrounding quotes.
        if [[ ${#value} -ge 2 && ( "$value" == \"*\" || "$value" == \'*\' ) ]]; then
            value="${value:1:${#value}-2}"
        fi
        [[ -v "$key" ]] && continue
        export "$key=$value"
    done <"$file"
}

# --- Python virtualenv ---------------------------------------------------------------
# True when .venv exists, its interpreter runs, and it was set up after the last change
# to pyproject.toml.
venv_is_fresh() {
    [[ -x "$FINPULSE_VENV/bin/python" && -f "$FINPULSE_VENV_STAMP" ]] || return 1
    "$FINPULSE_VENV/bin/python" -c 'pass' >/dev/null 2>&1 || return 1
    if [[ -f "$FINPULSE_ROOT/pyproject.toml" && "$FINPULSE_ROOT/pyproject.toml" -nt "$FINPULSE_VENV_STAMP" ]]; then
        return 1
    fi
    return 0
}

# Run scripts/setup when the venv is missing or stale; cheap no-op otherwise.
ensure_venv() {
    venv_is_fresh && return 0
    "$FINPULSE_ROOT/scripts/setup"
}

# --- misc ----------------------------------------------------------------------------
is_root() { [[ "$(id -u)" -eq 0 ]]; }

# apt-get install the given Debian packages (running apt-get update first, since a fresh
# machine has no package lists). Only possible as root; otherwise explain and fail.
apt_install() {
    if ! is_root; then
        die "missing: $*. Install the Debian package(s) '$*' (needs root), then re-run."
    fi
    command -v apt-get >/dev/null || die "missing: $* and apt-get is not available to install it"
    log_info "installing Debian package(s): $* (apt-get update first)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Seconds since the epoch with milliseconds, for timing messages.
now_s() { date +%s.%N | cut -c1-14; }
elapsed_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1fs", b - a }'; }
