#!/usr/bin/env bash
# Local Apache Kafka in KRaft mode: one process that is both broker and controller,
# bound to 127.0.0.1, run from Apache's jars (Maven Central, see kafka/pom.xml).
#
#   deploy/local/kafka.sh up|down|status|reset
#
# Environment (defaults in brackets):
#   LOCAL_KAFKA_PORT [9092]             PLAINTEXT listener for clients
#   LOCAL_KAFKA_CONTROLLER_PORT [9093]  KRaft controller listener
#   LOCAL_KAFKA_PROXIED_PORT [19093]    a second PLAINTEXT listener (PROXIED) that advertises
#   LOCAL_KAFKA_PROXY_PORT [19092]      this port instead of its own: the fault-injection
#                                       tests (tests/faults/) listen there with a TCP proxy
#                                       that forwards to LOCAL_KAFKA_PROXIED_PORT, so every
#                                       connection a client opens (bootstrap, then the
#                                       broker named in metadata) passes the proxy. Nothing
#                                       listens on the proxy port unless a test runs.
#   LOCAL_KAFKA_HEAP [-Xmx512m -Xms512m]
#   LOCAL_KAFKA_AUTO_CREATE_TOPICS [false]  see docs/decisions/0001-kafka-version.md
#   LOCAL_KAFKA_READY_TIMEOUT [90]      seconds to wait for a metadata answer
#   MAVEN_REPO_LOCAL [Maven's default, ~/.m2/repository]  where Maven caches jars
#   LOCAL_DIR [<repo>/.local]           data, logs, jars and pid file go under $LOCAL_DIR/kafka
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_PORT=${LOCAL_KAFKA_PORT:-9092}
CONTROLLER_PORT=${LOCAL_KAFKA_CONTROLLER_PORT:-9093}
PROXIED_PORT=${LOCAL_KAFKA_PROXIED_PORT:-19093}
PROXY_PORT=${LOCAL_KAFKA_PROXY_PORT:-19092}
HEAP_OPTS=${LOCAL_KAFKA_HEAP:--Xmx512m -Xms512m}
AUTO_CREATE_TOPICS=${LOCAL_KAFKA_AUTO_CREATE_TOPICS:-false}
READY_TIMEOUT=${LOCAL_KAFKA_READY_TIMEOUT:-90}
require_port_number LOCAL_KAFKA_PORT "$KAFKA_PORT"
require_port_number LOCAL_KAFKA_CONTROLLER_PORT "$CONTROLLER_PORT"
require_port_number LOCAL_KAFKA_PROXIED_PORT "$PROXIED_PORT"
require_port_number LOCAL_KAFKA_PROXY_PORT "$PROXY_PORT"
[[ $(printf '%s\n' "$KAFKA_PORT" "$CONTROLLER_PORT" "$PROXIED_PORT" "$PROXY_PORT" | sort -u | wc -l) == 4 ]] ||
    die "LOCAL_KAFKA_PORT, LOCAL_KAFKA_CONTROLLER_PORT, LOCAL_KAFKA_PROXIED_PORT and LOCAL_KAFKA_PROXY_PORT must differ (got $KAFKA_PORT, $CONTROLLER_PORT, $PROXIED_PORT, $PROXY_PORT)"
[[ $AUTO_CREATE_TOPICS == true || $AUTO_CREATE_TOPICS == false ]] ||
    die "LOCAL_KAFKA_AUTO_CREATE_TOPICS must be true or false, got '$AUTO_CREATE_TOPICS'"

POM="$DEPLOY_DIR/kafka/pom.xml"
KAFKA_HOME="$LOCAL_DIR/kafka"
LIBS="$KAFKA_HOME/libs"
DATA="$KAFKA_HOME/data"
LOGS="$KAFKA_HOME/logs"
CONFIG="$KAFKA_HOME/server.properties"
PIDFILE="$KAFKA_HOME/kafka.pid"
FORMATTED="$KAFKA_HOME/formatted.env" # cluster id and controller port the storage was formatted with
PROBE_DIR="$KAFKA_HOME/probe"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
FORMAT_EXTRA_ARGS=() # kafka-secure.sh adds its SCRAM users

require_java() {
    command -v java >/dev/null 2>&1 || die "java not found: Kafka needs a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
    local major
    major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    (( ${major%%.*} >= 17 )) || die "Kafka 4 needs Java 17 or newer; 'java' is version $major"
}

# Copies Kafka's jars (and the logging binding) from Maven into $LIBS; re-done only
# when pom.xml changes. A warm Maven cache makes this a few seconds, a cold one
# downloads about 45 MB from Maven Central.
ensure_libs() {
    local stamp
    stamp=$(sha256sum "$POM" | cut -c1-64)
    [[ -f $LIBS/.pom-sha256 && $(<"$LIBS/.pom-sha256") == "$stamp" ]] && return 0
    command -v mvn >/dev/null 2>&1 || die "mvn not found: Maven fetches Kafka's jars (apt-get install maven)"
    log "kafka: fetching jars with Maven${MAVEN_REPO_LOCAL:+ (repository $MAVEN_REPO_LOCAL)}"
    local tmp="$KAFKA_HOME/libs.tmp"
    rm -rf "$tmp"
    local args=(-B -q --no-transfer-progress -f "$POM" dependency:copy-dependencies
        -DincludeScope=runtime "-DoutputDirectory=$tmp")
    [[ -n ${MAVEN_REPO_LOCAL:-} ]] && args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
    mvn "${args[@]}" >"$KAFKA_HOME/maven.log" 2>&1 ||
        die "Maven could not fetch Kafka's jars; see $KAFKA_HOME/maven.log: $(tail -5 "$KAFKA_HOME/maven.log")"
    printf '%s' "$stamp" >"$tmp/.pom-sha256"
    rm -rf "$LIBS" && mv "$tmp" "$LIBS"
    rm -rf "$PROBE_DIR" # compiled against the old jars
}

# Compiles the readiness probe (KafkaReady.java) once against the current jars.
ensure_probe() {
    local src="$DEPLOY_DIR/kafka/KafkaReady.java" stamp
    stamp=$(cat "$src" "$LIBS/.pom-sha256" | sha256sum | cut -c1-64)
    [[ -f $PROBE_DIR/.stamp && $(<"$PROBE_DIR/.stamp") == "$stamp" ]] && return 0
    command -v javac >/dev/null 2>&1 || die "javac not found: the readiness probe needs a JDK 17+ (apt-get install openjdk-17-jdk-headless)"
    rm -rf "$PROBE_DIR" && mkdir -p "$PROBE_DIR"
    javac -nowarn -cp "$LIBS/*" -d "$PROBE_DIR" "$src"
    printf '%s' "$stamp" >"$PROBE_DIR/.stamp"
}

# Asks the broker for metadata until it answers or $1 seconds pass; prints its one-line answer.
probe() {
    java -Xmx64m -XX:TieredStopAtLevel=1 -Xshare:auto -Dorg.apache.logging.log4j.level=OFF \
        -cp "$PROBE_DIR:$LIBS/*" KafkaReady "$BOOTSTRAP" "$1" ${PROBE_CLIENT_CONFIG:+"$PROBE_CLIENT_CONFIG"}
}

write_config() {
    cat >"$CONFIG" <<PROPS
# Generated by deploy/local/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
# PROXIED advertises the fault-injection proxy's port, not its own (see the header).
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,PROXIED://127.0.0.1:$PROXIED_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,PROXIED://127.0.0.1:$PROXY_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT
log.dirs=$DATA

# One broker: every internal topic has one replica and needs one in sync.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Tests and the demo start consumer groups often: no 3 s wait before the first rebalance.
group.initial.rebalance.delay.ms=0
# Topics are declared by their owners (Faust declares its topics and changelogs,
# tests create theirs): a typo must fail loudly, as on a production cluster.
auto.create.topics.enable=$AUTO_CREATE_TOPICS
num.partitions=1
delete.topic.enable=true

# Sized for a 2-core laptop or CI machine.
num.network.threads=2
num.io.threads=4
log.cleaner.threads=1
# Compaction checks every second instead of every 15 s, so compacted topics
# (segment-memberships) can be observed compacting in tests.
log.cleaner.backoff.ms=1000
PROPS
}

# Formats the storage directory once (KRaft needs a cluster id and a voter set before the
# first start). The controller port is part of the recorded voter set, so a later start
# on another controller port needs a reset.
ensure_formatted() {
    if [[ -f $DATA/meta.properties ]]; then
        local formatted_port
        formatted_port=$(sed -n 's/^controller_port=//p' "$FORMATTED" 2>/dev/null || true)
        [[ -z $formatted_port || $formatted_port == "$CONTROLLER_PORT" ]] ||
            die "kafka: storage in $DATA was formatted for controller port $formatted_port, not $CONTROLLER_PORT; run 'deploy/local/services.sh reset kafka' to wipe it, or set LOCAL_KAFKA_CONTROLLER_PORT=$formatted_port"
        return 0
    fi
    local cluster_id
    # A Kafka cluster id is 16 random bytes in URL-safe base64 without padding.
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    mkdir -p "$DATA"
    java -Xmx256m -Dorg.apache.logging.log4j.level=WARN -cp "$LIBS/*" kafka.tools.StorageTool \
        format --standalone "--cluster-id=$cluster_id" --config "$CONFIG" "${FORMAT_EXTRA_ARGS[@]}" >"$LOGS/format.log" 2>&1 ||
        die "kafka: formatting $DATA failed: $(tail -5 "$LOGS/format.log")"
    printf 'cluster_id=%s\ncontroller_port=%s\n' "$cluster_id" "$CONTROLLER_PORT" >"$FORMATTED"
}

# True when the pid file names a live kafka.Kafka started with our config file.
ours_running() {
    local pid
    pid=$(read_pid "$PIDFILE")
    pid_alive "$pid" && [[ $(cmdline_of "$pid") == *"kafka.Kafka $CONFIG"* ]]
}

running_config_notes() {
    grep -q '^listeners=.*PROXIED://' "$CONFIG" ||
        log "kafka: note: started by an older kafka.sh without the PROXIED listener; the fault-injection tests need it: 'deploy/local/services.sh down kafka' then 'up' to restart with it (the data is kept)"
}

running_port() { sed -n 's#^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*#\1#p' "$CONFIG" 2>/dev/null; }

up() {
    local start pid
    start=$(now_ms)
    mkdir -p "$KAFKA_HOME" "$LOGS"
    if ours_running; then
        local port
        port=$(running_port)
        [[ $port == "$KAFKA_PORT" ]] ||
            die "kafka: already running on port $port (pid $(read_pid "$PIDFILE")); run 'deploy/local/services.sh down kafka' before changing LOCAL_KAFKA_PORT"
        ensure_probe
        local answer
        answer=$(probe "$READY_TIMEOUT") || die "kafka: running (pid $(read_pid "$PIDFILE")) but not answering on $BOOTSTRAP; see $LOGS/server.log"
        log "kafka: already up on $BOOTSTRAP (pid $(read_pid "$PIDFILE"), $answer)"
        running_config_notes
        return 0
    fi
    rm -f "$PIDFILE"
    require_port_free LOCAL_KAFKA_PORT "$KAFKA_PORT" "Kafka"
    require_port_free LOCAL_KAFKA_CONTROLLER_PORT "$CONTROLLER_PORT" "Kafka controller"
    require_port_free LOCAL_KAFKA_PROXIED_PORT "$PROXIED_PORT" "Kafka proxied listener"
    require_java
    ensure_libs
    ensure_probe
    write_config
    ensure_formatted

    # setsid + nohup: the broker outlives the shell that started it; the inner bash
    # writes its own pid and then becomes java, so the pid file names the JVM.
    # shellcheck disable=SC2016
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
        java $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true -Dkafka.logs.dir="$LOGS" \
        -Dlog4j2.configurationFile="$DEPLOY_DIR/kafka/log4j2.xml" \
        -cp "$LIBS/*" kafka.Kafka "$CONFIG" >>"$LOGS/kafka.out" 2>&1 </dev/null 9>&- &
    local launcher=$!

    # Wait for the probe's metadata answer, but give up at once if the broker dies.
    local answer_file="$KAFKA_HOME/probe.out"
    probe "$READY_TIMEOUT" >"$answer_file" 2>&1 &
    local probe_pid=$!
    while pid_alive "$probe_pid"; do
        pid=$(read_pid "$PIDFILE")
        if [[ -n $pid ]] && ! pid_alive "$pid"; then
            kill "$probe_pid" 2>/dev/null || true
            wait "$probe_pid" 2>/dev/null || true
            rm -f "$PIDFILE"
            die "kafka: exited during start-up; last lines of $LOGS/kafka.out and server.log:
$(tail -5 "$LOGS/kafka.out"; grep -E 'ERROR|FATAL' "$LOGS/server.log" 2>/dev/null | tail -5)"
        fi
        sleep 0.1
    done
    if ! wait "$probe_pid"; then
        die "kafka: started (pid $(read_pid "$PIDFILE")) but no metadata answer on $BOOTSTRAP within ${READY_TIMEOUT}s: $(cat "$answer_file"); see $LOGS/server.log"
    fi
    disown "$launcher" 2>/dev/null || true
    log "kafka: up on $BOOTSTRAP (pid $(read_pid "$PIDFILE"), ready in $(elapsed "$start"), $(cat "$answer_file"))"
}

down() {
    if ours_running; then
        local pid
        pid=$(read_pid "$PIDFILE")
        stop_pid_file "$PIDFILE" 60 kafka
        log "kafka: stopped (pid $pid)"
    else
        rm -f "$PIDFILE"
        log "kafka: not running"
    fi
}

# Exit 0 when running and answering, 3 when not running, 1 when running but not answering.
status() {
    if ! ours_running; then
        log "kafka: not running (port $KAFKA_PORT)"
        return 3
    fi
    ensure_probe
    local answer
    if answer=$(probe 5 2>&1); then
        log "kafka: up on 127.0.0.1:$(running_port) (pid $(read_pid "$PIDFILE"), $answer)"
    else
        log "kafka: running (pid $(read_pid "$PIDFILE")) but not answering: $answer"
        return 1
    fi
}

# Stops the broker and deletes its data and logs (keeps the jars).
reset() {
    down
    rm -rf "$DATA" "$LOGS" "$FORMATTED" "$CONFIG"
    log "kafka: data and logs deleted"
}

# Sourced by kafka-secure.sh and kafka-cluster.sh for their functions: only a run dispatches.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    case ${1:-} in
    up | down | reset) lock_service "$KAFKA_HOME" && "$1" ;;
    status) "$1" ;;
    *) die "usage: $0 up|down|status|reset" ;;
    esac
fi
