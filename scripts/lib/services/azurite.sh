# shellcheck shell=bash
# Azurite for scripts/services: the npm package, the blob service under .stack/azurite; an account SAS for the secured stack.
# Sourced by scripts/services, which sets the paths and versions these use.

# ======================================================================================
# Azurite (blob service only) from the npm registry
# ======================================================================================
AZ_DIR="$STACK/azurite"
AZ_DATA="$AZ_DIR/data"
AZ_PID="$AZ_DIR/azurite.pid"
AZ_LOG="$LOG_DIR/azurite.log"
AZ_BIN="$AZ_DIR/node_modules/.bin/azurite-blob"

azurite_pid() { our_pid "$AZ_PID" "$AZ_DATA"; }

az_container() {
    python3 "$FINPULSE_ROOT/scripts/lib/azurite_container.py" \
        --endpoint "http://$AZURITE_HOST:$AZURITE_PORT/devstoreaccount1" "$@"
}

azurite_provision() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
    local have=""
    [[ -f "$AZ_DIR/node_modules/azurite/package.json" ]] &&
        have="$(node -p "require('$AZ_DIR/node_modules/azurite/package.json').version")"
    if [[ "$have" != "$AZURITE_VERSION" || ! -x "$AZ_BIN" ]]; then
        log_info "azurite: npm install azurite@$AZURITE_VERSION into $AZ_DIR"
        local t0
        t0="$(now_s)"
        mkdir -p "$AZ_DIR"
        npm install --prefix "$AZ_DIR" --no-audit --no-fund --loglevel=error \
            "azurite@$AZURITE_VERSION" >/dev/null ||
            die "azurite: npm install azurite@$AZURITE_VERSION failed (see output above)"
        log_info "azurite: installed in $(elapsed_since "$t0")"
    fi
}

azurite_start() {
    if azurite_pid >/dev/null; then
        log_info "azurite: already running (pid $(azurite_pid))"
        return 0
    fi
    if port_open "$AZURITE_HOST" "$AZURITE_PORT"; then
        die "azurite: port $AZURITE_PORT is already in use by a process this script did not start"
    fi
    azurite_provision
    mkdir -p "$AZ_DATA"
    log_info "azurite: starting blob service $AZURITE_VERSION on $AZURITE_HOST:$AZURITE_PORT"
    printf '\n===== %s scripts/services: starting azurite =====\n' "$(date -Is)" >>"$AZ_LOG"
    # --skipApiVersionCheck: newer Azure SDKs send API versions this Azurite does not
    # know yet. --loose: ignore unsupported headers instead of failing requests.
    # --disableTelemetry: Azurite otherwise reports usage to Application Insights (and
    # logs errors when it cannot, e.g. offline CI).
    start_detached "$AZ_PID" "$AZ_LOG" \
        "$AZ_BIN" --blobHost "$AZURITE_HOST" --blobPort "$AZURITE_PORT" \
        --location "$AZ_DATA" --skipApiVersionCheck --loose --disableTelemetry
}

azurite_wait_ready() {
    local name="${AZURE_CONTAINER_NAME:-delta-lake}" deadline=$((SECONDS + READY_TIMEOUT)) out="" rc
    while ((SECONDS < deadline)); do
        if [[ "${FINPULSE_DOCKER_MODE:-0}" == 0 ]] && ! azurite_pid >/dev/null; then
            fail_service azurite "the Azurite process exited during startup"
        fi
        if port_open "$AZURITE_HOST" "$AZURITE_PORT"; then
            rc=0
            out="$(az_container ensure "$name" 2>&1)" || rc=$?
            case "$rc" in
                0) log_info "azurite: $out"; return 0 ;;
                2) ;; # not answering yet: retry
                *) fail_service azurite "creating blob container '$name' failed: $out" ;;
            esac
        fi
        sleep 0.3
    done
    fail_service azurite "blob container '$name' not available within ${READY_TIMEOUT}s: ${out:-}"
}

# Echo an account SAS token for Azurite's dev account (scripts/lib/secure_stack.py);
# with "verify", first prove Azurite accepts it for the blob container and refuses a
# tampered one.
azurite_sas_token() {
    local args=(sas --endpoint "http://$AZURITE_HOST:$AZURITE_PORT/devstoreaccount1"
        --container "${AZURE_CONTAINER_NAME:-delta-lake}")
    [[ "${1:-}" == verify ]] && args+=(--verify)
    python3 "$SECURE_PY" "${args[@]}"
}

# SAS readiness, after azurite_wait_ready: the token `up` writes to secure.env works.
azurite_secure_ready() {
    local out
    out="$(azurite_sas_token verify 2>&1)" ||
        fail_service azurite "the account SAS check failed: $out"
}

azurite_stop() {
    local pid
    if pid="$(azurite_pid)"; then
        log_info "azurite: stopping (pid $pid)"
        stop_pid "$pid" azurite 20
        log_info "azurite: stopped"
    else
        log_info "azurite: not running"
    fi
    rm -f "$AZ_PID"
}

azurite_status() {
    local pid="" up=0
    pid="$(azurite_pid)" && up=1
    print_status azurite "$up" "http://$AZURITE_HOST:$AZURITE_PORT/devstoreaccount1 (container ${AZURE_CONTAINER_NAME:-delta-lake})" \
        "$pid" "$AZ_LOG" "$AZ_DATA" "account key, or the account SAS token in $SECURE_ENV"
    [[ "$up" == 1 ]]
}
