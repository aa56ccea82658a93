# shellcheck shell=bash
# PostgreSQL for scripts/services: Debian's packages, a cluster of its own under .stack/postgres; TLS on the same port.
# Sourced by scripts/services, which sets the paths and versions these use.

# ======================================================================================
# PostgreSQL: Debian packages, a private cluster in .stack/postgres
# ======================================================================================
PG_BASE="$STACK/postgres"
PG_LOG="$LOG_DIR/postgres.log"

pg_settings() {
    PG_PORT="${POSTGRES_PORT:-5433}"
    PG_APP_USER="${POSTGRES_USER:-finpulse}"
    PG_APP_DB="${POSTGRES_DB:-finpulse}"
    PG_APP_PASSWORD="${POSTGRES_PASSWORD:-}"
    # Resolve a symlinked .stack/postgres (see pg_prepare_base) to its real location.
    PG_REAL="$(readlink -f "$PG_BASE" 2>/dev/null || echo "$PG_BASE")"
    PG_DATA="$PG_REAL/data"
    PG_SOCKET_DIR="$PG_REAL/run"
    # The server user: PostgreSQL refuses to run as root, so root uses the `postgres`
    # system account (created by the Debian package); anyone else runs it as themselves.
    if is_root; then PG_OS_USER=postgres; else PG_OS_USER="$(id -un)"; fi
}

# Highest installed major version's bin dir, e.g. /usr/lib/postgresql/15/bin.
pg_find_bin() {
    local d
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
    done
    return 1
}

# Run a command as the server user (a no-op wrapper when not root).
as_pg() {
    # From /: the server user may not be allowed into the caller's cwd (psql warns).
    if is_root; then (cd / && runuser -u "$PG_OS_USER" -- "$@"); else "$@"; fi
}

pg_provision() {
    if ! PG_BIN="$(pg_find_bin)"; then
        if is_root && command -v apt-get >/dev/null; then
            # Tell Debian's postgresql-common not to create and start its own
            # "main" cluster on 5432: we only want the binaries.
            apt_install postgresql-common
            if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
                sed -i -E 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
                    /etc/postgresql-common/createcluster.conf
            fi
        fi
        apt_install postgresql
        PG_BIN="$(pg_find_bin)" || die "postgres: installed the postgresql package but found no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
    fi
    if is_root && ! id -u postgres >/dev/null 2>&1; then
        log_info "postgres: creating the 'postgres' system user to run the server"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

# Make .stack/postgres exist and be usable by the server user. As root, the `postgres`
# user must be able to reach it; a checkout under a private directory (e.g. /root with
# mode 700) is out of its reach, so the cluster then lives under /var/lib/finpulse-stack
# and .stack/postgres is a symlink to it (down/status follow the link).
pg_prepare_base() {
    mkdir -p "$STACK"
    if is_root; then
        if [[ ! -e "$PG_BASE" ]]; then
            if runuser -u "$PG_OS_USER" -- test -x "$STACK"; then
                mkdir -p "$PG_BASE"
            else
                local ext
                ext="/var/lib/finpulse-stack/$(printf '%s' "$FINPULSE_ROOT" | sha256sum | cut -c1-12)/postgres"
                log_info "postgres: user '$PG_OS_USER' cannot reach $STACK (a parent dir is private);" \
                    "keeping the cluster in $ext, linked from $PG_BASE"
                mkdir -p "$ext"
                ln -sfn "$ext" "$PG_BASE"
            fi
            pg_settings
        fi
        chown -R "$PG_OS_USER:" "$PG_REAL"
        runuser -u "$PG_OS_USER" -- test -w "$PG_REAL" ||
            die "postgres: user '$PG_OS_USER' cannot write $PG_REAL; make its parent directories traversable (chmod o+x) or run as a non-root user"
    else
        mkdir -p "$PG_BASE"
    fi
    as_pg mkdir -p "$PG_SOCKET_DIR"
    chmod 700 "$PG_SOCKET_DIR" # only the server user (and root) may use the socket
}

pg_running() { [[ -f "$PG_DATA/PG_VERSION" ]] && as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }

# Copy the server certificate and key from .stack/tls into the data dir, owned by the
# server user with mode 600 (PostgreSQL refuses a key others can read). Sets
# PG_TLS_CHANGED=1 when a file was (re)placed, so a running server must reload.
pg_tls_install() {
    local src dst
    PG_TLS_CHANGED=0
    for src in server.pem:server.crt server.key:server.key; do
        dst="$PG_DATA/${src#*:}"
        src="$TLS_DIR/${src%%:*}"
        if ! cmp -s "$src" "$dst" 2>/dev/null; then
            if is_root; then
                install -m 600 -o "$PG_OS_USER" -g "$(id -gn "$PG_OS_USER")" "$src" "$dst"
            else
                install -m 600 "$src" "$dst"
            fi
            PG_TLS_CHANGED=1
        fi
    done
}

pg_write_config() {
    # Our settings live in their own file, included once from postgresql.conf, and are
    # rewritten on every start so changes (e.g. POSTGRES_PORT) apply. PG_CONFIG_CHANGED
    # says whether the file's content changed.
    local conf
    conf="$(pg_config_text)"
    PG_CONFIG_CHANGED=0
    if [[ "$(as_pg cat "$PG_DATA/finpulse.conf" 2>/dev/null)" != "$conf" ]]; then
        printf '%s\n' "$conf" | as_pg tee "$PG_DATA/finpulse.conf" >/dev/null
        PG_CONFIG_CHANGED=1
    fi
    grep -qF "include 'finpulse.conf'" "$PG_DATA/postgresql.conf" ||
        printf "\n# Local-stack settings (scripts/services)\ninclude 'finpulse.conf'\n" |
        as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

# The content of finpulse.conf (see pg_write_config).
pg_config_text() {
    cat <<EOF
# Generated by scripts/services; edits are overwritten on the next \`up\`.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 100
shared_buffers = 256MB
# Durability stays on: the tests check that committed data survives.
fsync = on
synchronous_commit = on
full_page_writes = on
# No replication or archiving on a test box: minimal WAL is faster for bulk loads.
wal_level = minimal
max_wal_senders = 0
archive_mode = off
# Log to stderr, which pg_ctl's caller redirects into .stack/log/postgres.log.
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
# TLS on the same port, optional: clients choose (sslmode). The certificate comes from
# the local CA in .stack/tls (pg_tls_install copies it here); pg_hba's "host" lines
# accept SCRAM password logins with and without TLS.
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
}

postgres_start() {
    pg_settings
    [[ -n "$PG_APP_PASSWORD" ]] || die "postgres: POSTGRES_PASSWORD is empty; set it in .env"
    pg_provision
    pg_prepare_base
    if pg_running; then
        log_info "postgres: already running (pid $(postgres_pid))"
        # A server started before TLS was set up, or before .stack/tls was remade, picks
        # the new settings up on a reload (ssl and its files are reloadable).
        pg_tls_install
        pg_write_config
        if [[ "$PG_TLS_CHANGED$PG_CONFIG_CHANGED" != 00 ]]; then
            log_info "postgres: TLS files or settings changed; reloading the server"
            as_pg "$PG_BIN/pg_ctl" reload -D "$PG_DATA" >/dev/null || fail_service postgres "pg_ctl reload failed"
        fi
        return 0
    fi
    if port_open 127.0.0.1 "$PG_PORT"; then
        die "postgres: port $PG_PORT is already in use by a process this script did not start"
    fi
    mkdir -p "$LOG_DIR"
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        log_info "postgres: initdb $PG_DATA ($("$PG_BIN/postgres" --version))"
        # peer auth on the private socket (admin tasks as the server user), passwords
        # (SCRAM) on TCP, where the application connects.
        as_pg "$PG_BIN/initdb" -D "$PG_DATA" --username="$PG_OS_USER" \
            --encoding=UTF8 --locale=C --auth-local=peer --auth-host=scram-sha-256 \
            >>"$PG_LOG" 2>&1 || fail_service postgres "initdb failed"
    fi
    pg_tls_install
    pg_write_config
    log_info "postgres: starting on 127.0.0.1:$PG_PORT (TLS optional)"
    printf '\n===== %s scripts/services: starting postgres =====\n' "$(date -Is)" >>"$PG_LOG"
    # No `pg_ctl -l`: the server user may be unable to open .stack/log; our shell opens
    # the log and the server inherits it as stdout/stderr. setsid detaches the server
    # from this shell's session like the other services.
    as_pg setsid "$PG_BIN/pg_ctl" start -D "$PG_DATA" -w -t "$READY_TIMEOUT" >>"$PG_LOG" 2>&1 </dev/null ||
        fail_service postgres "pg_ctl start failed"
}

postgres_pid() { head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null; }

# Create the application role and database if missing; (re)set the password from the
# environment every time so .env stays the source of truth. Idempotent.
pg_bootstrap() {
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -d postgres \
        -v user="$PG_APP_USER" -v pw="$PG_APP_PASSWORD" -v db="$PG_APP_DB" >/dev/null <<'EOF'
SELECT format('CREATE ROLE %I LOGIN', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'user', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
-- A login role with no rights of its own: tests grant it only what the README's least-privilege
-- GRANTs give, and run ingest, replay and verify as it.
SELECT 'CREATE ROLE finpulse_ingest LOGIN'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'finpulse_ingest') \gexec
ALTER ROLE finpulse_ingest WITH LOGIN PASSWORD 'finpulse_ingest';
EOF
}

postgres_wait_ready() {
    pg_settings
    local deadline=$((SECONDS + READY_TIMEOUT)) bootstrapped=0
    while ((SECONDS < deadline)); do
        pg_running || fail_service postgres "the server is not running"
        if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2; then
            if [[ "$bootstrapped" == 0 ]]; then
                pg_bootstrap || fail_service postgres "creating role/database $PG_APP_USER/$PG_APP_DB failed"
                bootstrapped=1
            fi
            # The real check: the application's login over TCP with its password.
            if PGPASSWORD="$PG_APP_PASSWORD" PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At \
                -h 127.0.0.1 -p "$PG_PORT" -U "$PG_APP_USER" -d "$PG_APP_DB" -c 'SELECT 1' >/dev/null 2>&1; then
                return 0
            fi
        fi
        sleep 0.5
    done
    fail_service postgres "psql login as $PG_APP_USER on 127.0.0.1:$PG_PORT did not succeed within ${READY_TIMEOUT}s"
}

# TLS readiness, after postgres_wait_ready: the application's password login with
# sslmode=verify-full (host name localhost checked against the certificate, trusting only
# .stack/tls/ca.pem) must get a TLS session, and one with sslmode=disable must still work.
# Retried briefly: after a reload the server applies new TLS settings asynchronously.
postgres_secure_ready() {
    pg_settings
    local deadline=$((SECONDS + 15)) tls="" plain="" out=""
    while ((SECONDS < deadline)); do
        tls="$(PGPASSWORD="$PG_APP_PASSWORD" PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At \
            "host=localhost port=$PG_PORT dbname=$PG_APP_DB user=$PG_APP_USER sslmode=verify-full sslrootcert=$TLS_CA" \
            -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>&1)" || tls="failed: $tls"
        plain="$(PGPASSWORD="$PG_APP_PASSWORD" PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At \
            "host=127.0.0.1 port=$PG_PORT dbname=$PG_APP_DB user=$PG_APP_USER sslmode=disable" \
            -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>&1)" || plain="failed: $plain"
        [[ "$tls" == t && "$plain" == f ]] && return 0
        out="sslmode=verify-full: ${tls:-no answer}; sslmode=disable: ${plain:-no answer}"
        sleep 0.5
    done
    fail_service postgres "TLS check as $PG_APP_USER on localhost:$PG_PORT (sslrootcert $TLS_CA) failed: $out"
}

postgres_stop() {
    pg_settings
    PG_BIN="$(pg_find_bin)" || { log_info "postgres: not installed"; return 0; }
    if pg_running; then
        log_info "postgres: stopping (pg_ctl stop -m fast, pid $(postgres_pid))"
        as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null
        log_info "postgres: stopped"
    else
        log_info "postgres: not running"
    fi
}

postgres_status() {
    pg_settings
    local up=0 pid=""
    PG_BIN="$(pg_find_bin)" && pg_running && { up=1; pid="$(postgres_pid)"; }
    print_status postgres "$up" "127.0.0.1:$PG_PORT (db $PG_APP_DB, user $PG_APP_USER; socket dir $PG_SOCKET_DIR)" \
        "$pid" "$PG_LOG" "$PG_DATA" \
        "TLS on the same port (optional; sslmode=verify-full with host=localhost, sslrootcert $TLS_CA)"
    [[ "$up" == 1 ]]
}
