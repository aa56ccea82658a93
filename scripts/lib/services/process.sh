# shellcheck shell=bash
# Process helpers of scripts/services: ports, pid files, starting detached, stopping, status lines, stored secrets.
# Sourced by scripts/services, which sets the paths and versions these use.

# ======================================================================================
# generic helpers
# ======================================================================================

# True when something accepts TCP connections on host:port.
port_open() {
    timeout 2 bash -c ": >/dev/tcp/$1/$2" 2>/dev/null
}

# Echo the pid from a pid file when that process is alive AND is ours: its command line
# must contain $2 (an absolute path under .stack/). This guards against stale pid files
# whose pid was reused by an unrelated process, which `down` must never kill.
our_pid() {
    local pidfile="$1" marker="$2" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
    echo "$pid"
}

# Start a command detached from this shell (own session, so Ctrl-C or the end of the
# calling job does not take it down), stdout/stderr appended to a log file. The child
# writes its own pid before exec'ing, so the pid file names the real server process.
start_detached() {
    local pidfile="$1" logfile="$2"
    shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016 # $$, $0 and $@ are expanded by the inner bash
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >>"$logfile" 2>&1 </dev/null &
    local i
    for i in $(seq 50); do
        [[ -s "$pidfile" ]] && return 0
        sleep 0.1
    done
    die "could not start $1; see $logfile"
}

# SIGTERM a process, wait for it to exit (graceful shutdown), SIGKILL after a grace time.
stop_pid() {
    local pid="$1" name="$2" grace="${3:-60}" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq $((grace * 5))); do
        kill -0 "$pid" 2>/dev/null || return 0
        # Exited but not yet reaped by init (a zombie): gone as far as we care.
        [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 0
        sleep 0.2
    done
    log_warn "$name (pid $pid) did not stop within ${grace}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Fail `up` with a pointer to the service log.
fail_service() {
    local name="$1" msg="$2"
    log_error "$name: $msg"
    log_error "$name: see the log file $LOG_DIR/$name.log (last lines below)"
    tail -n 25 "$LOG_DIR/$name.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    exit 1
}

# Print one status block. Args: name running(0/1) address pid log data [secured]
print_status() {
    local state="not running"
    [[ "$2" == 1 ]] && state="running"
    printf '%-9s %-12s %s\n' "$1" "$state" "$3"
    [[ -z "${7:-}" ]] || printf '          secured: %s\n' "$7"
    printf '          pid:  %s\n' "${4:--}"
    printf '          log:  %s\n' "$5"
    printf '          data: %s\n' "$6"
}

# Echo a secret kept in file $1, generating it (48 hex chars) on first use. The file and
# its directory are private (mode 600/700); the secret never changes afterwards.
stored_secret() {
    local file="$1"
    if [[ ! -s "$file" ]]; then
        mkdir -p "$(dirname "$file")"
        chmod 700 "$(dirname "$file")"
        if ! (umask 077 && openssl rand -hex 24 >"$file.tmp"); then
            die "could not write the secret file $file"
        fi
        mv -f "$file.tmp" "$file"
    fi
    chmod 600 "$file"
    tr -d '[:space:]' <"$file"
}
