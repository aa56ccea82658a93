# shellcheck shell=bash
# shellcheck disable=SC2034 # TLS_CHANGED is read by the caller (scripts/services)
# TLS material for the local stack's secured endpoints, made with the openssl CLI.
# Source it (scripts/services does), then call `tls_ensure DIR`. It creates, once:
#
#   DIR/ca.pem, ca.key             a local CA, "FinPulse local dev CA" (10 years): what
#                                  clients trust (KAFKA_SSL_CA_LOCATION, sslrootcert)
#   DIR/server.pem, server.key     a server certificate signed by that CA for
#                                  DNS:localhost and IP:127.0.0.1 (825 days)
#   DIR/server-keystore.pem        server.key + server.pem + ca.pem in one file: Kafka's
#                                  PEM keystore (ssl.keystore.type=PEM)
#   DIR/other-ca.pem, other-ca.key an unrelated self-signed CA; a client trusting it
#                                  instead of ca.pem must fail the TLS handshake (tests)
#
# Existing files are kept across runs, so clients that trust ca.pem keep working. The CA
# is remade only when ca.pem or ca.key is missing; the server certificate is remade when
# it is missing, not signed by ca.pem, does not match its key, or expires within 30 days.
# Keys are mode 600, certificates 644. After the call TLS_CHANGED is 1 when the server
# certificate (or the CA) was (re)made, 0 otherwise: running servers must then reload.
# Needs log_info/die from common.sh.

TLS_CA_DAYS=3650
TLS_SERVER_DAYS=825

# Write an openssl config with the extension sections used below to $1.
_tls_write_openssl_config() {
    cat >"$1" <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
}

# Make a self-signed CA: $1 dir, $2 file stem (ca, other-ca), $3 common name. Written to
# temporary names first and renamed, so an interrupted run leaves no half-made pair.
_tls_make_ca() {
    local dir="$1" stem="$2" cn="$3"
    (
        umask 077
        openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days "$TLS_CA_DAYS" \
            -config "$dir/.openssl.cnf" -extensions v3_ca -subj "/O=FinPulse/CN=$cn" \
            -keyout "$dir/.$stem.key.tmp" -out "$dir/.$stem.pem.tmp" 2>/dev/null
    ) || die "tls: openssl could not create the CA $dir/$stem.pem"
    chmod 644 "$dir/.$stem.pem.tmp"
    mv -f "$dir/.$stem.key.tmp" "$dir/$stem.key"
    mv -f "$dir/.$stem.pem.tmp" "$dir/$stem.pem"
}

# True when server.pem/server.key/server-keystore.pem in $1 exist, are signed by ca.pem,
# belong together and stay valid for 30 more days.
_tls_server_ok() {
    local dir="$1"
    [[ -s "$dir/server.pem" && -s "$dir/server.key" && -s "$dir/server-keystore.pem" ]] || return 1
    openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" >/dev/null 2>&1 || return 1
    openssl x509 -checkend $((30 * 86400)) -noout -in "$dir/server.pem" >/dev/null 2>&1 || return 1
    [[ "$(openssl x509 -noout -pubkey -in "$dir/server.pem" 2>/dev/null)" == \
        "$(openssl pkey -pubout -in "$dir/server.key" 2>/dev/null)" ]]
}

# Make the server key and certificate (signed by ca.pem) and the Kafka PEM keystore.
_tls_make_server() {
    local dir="$1"
    (
        umask 077
        openssl req -new -newkey rsa:2048 -nodes -sha256 -config "$dir/.openssl.cnf" \
            -subj "/O=FinPulse/CN=localhost" \
            -keyout "$dir/.server.key.tmp" -out "$dir/.server.csr.tmp" 2>/dev/null &&
            openssl x509 -req -in "$dir/.server.csr.tmp" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
                -set_serial "0x$(openssl rand -hex 16)" -days "$TLS_SERVER_DAYS" -sha256 \
                -extfile "$dir/.openssl.cnf" -extensions v3_server \
                -out "$dir/.server.pem.tmp" 2>/dev/null &&
            cat "$dir/.server.key.tmp" "$dir/.server.pem.tmp" "$dir/ca.pem" >"$dir/.server-keystore.pem.tmp"
    ) || die "tls: openssl could not create the server certificate in $dir"
    chmod 644 "$dir/.server.pem.tmp"
    rm -f "$dir/.server.csr.tmp"
    mv -f "$dir/.server.key.tmp" "$dir/server.key"
    mv -f "$dir/.server.pem.tmp" "$dir/server.pem"
    mv -f "$dir/.server-keystore.pem.tmp" "$dir/server-keystore.pem"
}

# Create whatever is missing in $1 (see the top of this file); sets TLS_CHANGED.
tls_ensure() {
    local dir="$1"
    TLS_CHANGED=0
    command -v openssl >/dev/null || apt_install openssl
    mkdir -p "$dir"
    chmod 755 "$dir"
    _tls_write_openssl_config "$dir/.openssl.cnf"
    if [[ ! -s "$dir/ca.pem" || ! -s "$dir/ca.key" ]]; then
        log_info "tls: creating the local CA $dir/ca.pem"
        _tls_make_ca "$dir" ca "FinPulse local dev CA"
        TLS_CHANGED=1
    fi
    if ! _tls_server_ok "$dir"; then
        log_info "tls: creating the server certificate $dir/server.pem (localhost, 127.0.0.1; ${TLS_SERVER_DAYS} days)"
        _tls_make_server "$dir"
        TLS_CHANGED=1
    fi
    if [[ ! -s "$dir/other-ca.pem" || ! -s "$dir/other-ca.key" ]]; then
        log_info "tls: creating an unrelated CA $dir/other-ca.pem (for tests of an untrusted CA)"
        _tls_make_ca "$dir" other-ca "FinPulse untrusted test CA"
    fi
    rm -f "$dir/.openssl.cnf"
}
