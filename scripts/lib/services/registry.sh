# shellcheck shell=bash
# The schema registry of the local stack: scripts/lib/schema_registry.py, a stand-in that serves the
# Confluent Schema Registry API (not Confluent's registry itself: compose.yaml runs that for Docker
# users). Plain HTTP on $REGISTRY_PORT; HTTPS with basic auth (user finpulse) on $REGISTRY_SECURE_PORT.
# Sourced by scripts/services, which sets the paths these use. It runs in .venv (fastavro and protobuf
# check the schemas it is given), so `up` builds that first when it is missing (scripts/setup).

REG_DIR="$STACK/registry"
REG_DATA="$REG_DIR/schemas.json"
REG_PID="$REG_DIR/registry.pid"
REG_LOG="$LOG_DIR/registry.log"
REG_PY="$FINPULSE_ROOT/scripts/lib/schema_registry.py"
REG_USER=finpulse
REG_PASSWORD_FILE="$SECURE_DIR/registry-$REG_USER.password"
REG_USERS="$REG_DIR/users"

registry_pid() { our_pid "$REG_PID" "$REG_PY"; }

registry_start() {
    if registry_pid >/dev/null; then
        log_info "registry: already running (pid $(registry_pid))"
        return 0
    fi
    local port
    for port in "$REGISTRY_PORT" "$REGISTRY_SECURE_PORT"; do
        if port_open "$REGISTRY_HOST" "$port"; then
            die "registry: port $port is already in use by a process this script did not start"
        fi
    done
    ensure_venv
    mkdir -p "$REG_DIR"
    local password
    password="$(stored_secret "$REG_PASSWORD_FILE")"
    (umask 077 && printf '%s:%s\n' "$REG_USER" "$password" >"$REG_USERS")
    log_info "registry: starting on http://$REGISTRY_HOST:$REGISTRY_PORT and https://$REGISTRY_HOST:$REGISTRY_SECURE_PORT"
    printf '\n===== %s scripts/services: starting registry =====\n' "$(date -Is)" >>"$REG_LOG"
    start_detached "$REG_PID" "$REG_LOG" "$FINPULSE_VENV/bin/python" "$REG_PY" --host "$REGISTRY_HOST" --port "$REGISTRY_PORT" \
        --data "$REG_DATA" --secure-port "$REGISTRY_SECURE_PORT" --users "$REG_USERS" \
        --certfile "$TLS_DIR/server.pem" --keyfile "$TLS_DIR/server.key"
}

registry_wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        registry_pid >/dev/null || fail_service registry "the registry process exited during startup"
        if curl -fsS "http://$REGISTRY_HOST:$REGISTRY_PORT/subjects" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    fail_service registry "no answer on http://$REGISTRY_HOST:$REGISTRY_PORT within ${READY_TIMEOUT}s"
}

# The secured port answers with TLS from the local CA, takes the password and refuses a wrong one.
registry_secure_ready() {
    local url="https://localhost:$REGISTRY_SECURE_PORT/subjects" password code
    password="$(stored_secret "$REG_PASSWORD_FILE")"
    curl -fsS --cacert "$TLS_CA" -u "$REG_USER:$password" "$url" >/dev/null 2>&1 ||
        fail_service registry "the secured port refused user $REG_USER (or its TLS): $url"
    code="$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$TLS_CA" -u "$REG_USER:wrong" "$url" 2>/dev/null || true)"
    [[ "$code" == 401 ]] || fail_service registry "the secured port took a wrong password (HTTP $code)"
}

registry_stop() {
    local pid
    if pid="$(registry_pid)"; then
        log_info "registry: stopping (pid $pid)"
        stop_pid "$pid" registry 10
        log_info "registry: stopped"
    else
        log_info "registry: not running"
    fi
    rm -f "$REG_PID"
}

registry_status() {
    local pid="" up=0
    pid="$(registry_pid)" && up=1
    print_status registry "$up" "http://$REGISTRY_HOST:$REGISTRY_PORT" "$pid" "$REG_LOG" "$REG_DATA" \
        "https://localhost:$REGISTRY_SECURE_PORT, basic auth user $REG_USER, CA $TLS_CA"
    [[ "$up" == 1 ]]
}

# .env names the registry (SCHEMA_REGISTRY_URL) once it runs; a value the user set is kept.
registry_env_write() {
    local env_file="$FINPULSE_ROOT/.env"
    if ! grep -qE '^[[:space:]]*(export[[:space:]]+)?SCHEMA_REGISTRY_URL=' "$env_file" 2>/dev/null; then
        printf '\n# The schema registry of the local stack (scripts/services up)\nSCHEMA_REGISTRY_URL=http://localhost:%s\n' \
            "$REGISTRY_PORT" >>"$env_file"
        log_info "registry: wrote SCHEMA_REGISTRY_URL=http://localhost:$REGISTRY_PORT into .env"
    fi
}
