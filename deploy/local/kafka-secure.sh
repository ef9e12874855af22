#!/usr/bin/env bash
# A second local Kafka (KRaft, the same jars as kafka.sh) whose client listeners are
# secured: SASL_SSL with SCRAM users, and SSL with client certificates. It exists to
# test the SEGMENTS_KAFKA_SECURITY_PROTOCOL settings against a real broker
# (tests/integration/test_kafka_security.py) and to try them by hand.
#
#   deploy/local/kafka-secure.sh up|down|status|reset
#   (or deploy/local/services.sh kafka-secure up|down|status|reset)
#
# On the first `up` it makes, under $LOCAL_DIR/kafka-secure:
#   certs/ca.pem             a test CA (its key stays next to it)
#   certs/broker.pem         the broker's key and certificate (SAN 127.0.0.1, localhost), PEM
#   certs/client.pem|.key    a client certificate for the SSL listener
#   certs/other-ca.pem       a CA that signed nothing here (an "untrusted CA" for tests)
#   client.env               SEGMENTS_KAFKA_* for the SASL_SSL listener (user and password)
# and formats the storage with SCRAM-SHA-256 and SCRAM-SHA-512 credentials for two
# users: the client user and `broker` (inter-broker traffic, also over SASL_SSL).
# The PLAIN mechanism is enabled too, for the same client user.
#
# Environment (defaults in brackets):
#   LOCAL_KAFKA_SECURE_PORT [29092]             SASL_SSL listener for clients
#   LOCAL_KAFKA_SECURE_CONTROLLER_PORT [29093]  KRaft controller listener (PLAINTEXT, loopback)
#   LOCAL_KAFKA_SECURE_SSL_PORT [29094]         SSL listener requiring a client certificate
#   LOCAL_KAFKA_SECURE_USER [segments]          the client's SCRAM/PLAIN user
#   LOCAL_KAFKA_SECURE_HEAP [-Xmx384m -Xms384m]
#   LOCAL_DIR [<repo>/.local]
set -euo pipefail
# kafka.sh's functions (jars, readiness probe, start and stop), on this broker's paths.
source "$(dirname "${BASH_SOURCE[0]}")/kafka.sh"

KAFKA_PORT=${LOCAL_KAFKA_SECURE_PORT:-29092}
CONTROLLER_PORT=${LOCAL_KAFKA_SECURE_CONTROLLER_PORT:-29093}
PROXIED_PORT=${LOCAL_KAFKA_SECURE_SSL_PORT:-29094} # up() checks this port is free
SSL_PORT=$PROXIED_PORT
CLIENT_USER=${LOCAL_KAFKA_SECURE_USER:-segments}
HEAP_OPTS=${LOCAL_KAFKA_SECURE_HEAP:--Xmx384m -Xms384m}
require_port_number LOCAL_KAFKA_SECURE_PORT "$KAFKA_PORT"
require_port_number LOCAL_KAFKA_SECURE_CONTROLLER_PORT "$CONTROLLER_PORT"
require_port_number LOCAL_KAFKA_SECURE_SSL_PORT "$SSL_PORT"
[[ $CLIENT_USER =~ ^[A-Za-z0-9_-]+$ ]] || die "LOCAL_KAFKA_SECURE_USER must be letters, digits, '_' or '-'"

# The jars and the compiled probe are kafka.sh's (LIBS, PROBE_DIR); everything else is ours.
KAFKA_HOME="$LOCAL_DIR/kafka-secure"
DATA="$KAFKA_HOME/data"
LOGS="$KAFKA_HOME/logs"
CONFIG="$KAFKA_HOME/server.properties"
PIDFILE="$KAFKA_HOME/kafka.pid"
FORMATTED="$KAFKA_HOME/formatted.env"
CERTS="$KAFKA_HOME/certs"
SECRETS="$KAFKA_HOME/secrets.env" # passwords made on the first up (mode 600)
CLIENT_ENV="$KAFKA_HOME/client.env"
PROBE_CLIENT_CONFIG="$KAFKA_HOME/probe-client.properties"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

random_secret() { head -c 18 /dev/urandom | base64 | tr '+/' '-_'; }

# Passwords of the client and broker users; kept across restarts (the storage holds their
# SCRAM credentials since the format).
ensure_secrets() {
    if [[ ! -f $SECRETS ]]; then
        (umask 077 && printf 'CLIENT_PASSWORD=%s\nBROKER_PASSWORD=%s\n' "$(random_secret)" "$(random_secret)" >"$SECRETS")
    fi
    # shellcheck disable=SC1090
    source "$SECRETS"
}

# A CA, the broker's certificate (SAN 127.0.0.1 and localhost), a client certificate and
# a second, unrelated CA. Made once; `reset` deletes them.
ensure_certs() {
    [[ -f $CERTS/.done ]] && return 0
    command -v openssl >/dev/null 2>&1 || die "openssl not found: it makes the test certificates (apt-get install openssl)"
    rm -rf "$CERTS" && mkdir -p "$CERTS"
    (
        cd "$CERTS"
        umask 077
        local days=3650
        for ca in ca other-ca; do
            openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -keyout "$ca.key" -out "$ca.pem" \
                -subj "/CN=purchase-segments local $ca" \
                -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        done
        # PKCS#8 keys: Kafka's PEM keystore reads only those.
        openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
            -extfile broker.ext -out broker.crt 2>/dev/null
        cat broker.key broker.crt ca.pem >broker.pem
        openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=$CLIENT_USER" 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
            -extfile client.ext -out client.pem 2>/dev/null
        rm -f ./*.csr ./*.ext ./*.srl
        chmod 644 ca.pem other-ca.pem client.pem
    ) || die "kafka-secure: making the test certificates failed"
    touch "$CERTS/.done"
}

jaas() { # LOGIN_MODULE USER PASSWORD [EXTRA]
    printf '%s required username="%s" password="%s"%s;' "$1" "$2" "$3" "${4:-}"
}

write_config() {
    local scram=org.apache.kafka.common.security.scram.ScramLoginModule
    local plain=org.apache.kafka.common.security.plain.PlainLoginModule
    (umask 077 && cat >"$CONFIG" <<PROPS
# Generated by deploy/local/kafka-secure.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SSL://127.0.0.1:$SSL_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SSL://127.0.0.1:$SSL_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
controller.listener.names=CONTROLLER
# Brokers talk to each other over SASL_SSL too, as user 'broker'.
inter.broker.listener.name=SASL_SSL
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(jaas $scram broker "$BROKER_PASSWORD")
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$(jaas $scram broker "$BROKER_PASSWORD")
listener.name.sasl_ssl.plain.sasl.jaas.config=$(jaas $plain broker "$BROKER_PASSWORD" " user_broker=\"$BROKER_PASSWORD\" user_$CLIENT_USER=\"$CLIENT_PASSWORD\"")

# TLS: PEM key store and trust store (Kafka 2.7+).
ssl.keystore.type=PEM
ssl.keystore.location=$CERTS/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$CERTS/ca.pem
ssl.endpoint.identification.algorithm=https
listener.name.ssl.ssl.client.auth=required
# TLS 1.2 on the client-certificate listener: over TLS 1.3 the broker's post-handshake
# message reaches kafka-python's idle connection and it closes it ("Socket EVENT_READ
# without in-flight-requests", dpkp/kafka-python#2369); 8 of 30 admin clients failed
# here. SASL_SSL is not affected (docs/operations.md "A secured Kafka").
listener.name.ssl.ssl.enabled.protocols=TLSv1.2
log.dirs=$DATA

default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.partitions=1
delete.topic.enable=true
num.network.threads=2
num.io.threads=2
log.cleaner.threads=1
log.cleaner.backoff.ms=1000
PROPS
    )
    # The readiness probe logs in as the client user.
    (umask 077 && cat >"$PROBE_CLIENT_CONFIG" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$(jaas $scram "$CLIENT_USER" "$CLIENT_PASSWORD")
ssl.truststore.type=PEM
ssl.truststore.location=$CERTS/ca.pem
PROPS
    )
    (umask 077 && cat >"$CLIENT_ENV" <<ENV
# The product's settings for this broker's SASL_SSL listener (deploy/local/kafka-secure.sh).
SEGMENTS_KAFKA_BOOTSTRAP=$BOOTSTRAP
SEGMENTS_KAFKA_SECURITY_PROTOCOL=SASL_SSL
SEGMENTS_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
SEGMENTS_KAFKA_SASL_USERNAME=$CLIENT_USER
SEGMENTS_KAFKA_SASL_PASSWORD=$CLIENT_PASSWORD
SEGMENTS_KAFKA_SSL_CAFILE=$CERTS/ca.pem
ENV
    )
}

# kafka.sh's ensure_formatted() adds these to the format: the SCRAM credentials.
scram_format_args() {
    FORMAT_EXTRA_ARGS=()
    local user mechanism
    for user in "$CLIENT_USER:$CLIENT_PASSWORD" "broker:$BROKER_PASSWORD"; do
        for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
            FORMAT_EXTRA_ARGS+=(--add-scram "$mechanism=[name=${user%%:*},password=${user#*:}]")
        done
    done
}

running_config_notes() { :; }

running_port() { sed -n 's#^listeners=SASL_SSL://127.0.0.1:\([0-9]*\),.*#\1#p' "$CONFIG" 2>/dev/null; }

secure_up() {
    mkdir -p "$KAFKA_HOME" "$LOGS"
    # The jars are fetched into kafka.sh's directory, which up() then finds ready.
    (KAFKA_HOME="$LOCAL_DIR/kafka" && mkdir -p "$KAFKA_HOME" && ensure_libs)
    ensure_secrets
    ensure_certs
    scram_format_args
    # kafka.sh's up(), with this file's write_config: start unless running, wait for an answer.
    up
    log "kafka-secure: client settings in $CLIENT_ENV"
}

secure_reset() {
    down
    rm -rf "$DATA" "$LOGS" "$FORMATTED" "$CONFIG" "$CERTS" "$SECRETS" "$CLIENT_ENV" "$PROBE_CLIENT_CONFIG"
    log "kafka-secure: data, logs, certificates and passwords deleted"
}

case ${1:-} in
up) lock_service "$KAFKA_HOME" && secure_up ;;
down) lock_service "$KAFKA_HOME" && down ;;
reset) lock_service "$KAFKA_HOME" && secure_reset ;;
status) status ;;
*) die "usage: $0 up|down|status|reset" ;;
esac
