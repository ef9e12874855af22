#!/usr/bin/env bash
# Local Kafka (KRaft, Apache's jars) and Redis for development and tests.
#
#   deploy/local/services.sh up|down|status|reset [kafka|redis ...]
#   deploy/local/services.sh redis-cluster up|down|status   (redis-cluster.sh: Cluster and TLS)
#   deploy/local/services.sh kafka-secure up|down|status|reset   (a SASL_SSL broker, 29092)
#
#   up      start what is not running and wait until it answers (Kafka: a metadata
#           request, Redis: PING); returns at once for what is already up
#   down    stop what this script started
#   status  exit 0 when all answer, 3 when one is stopped, 1 when one does not answer
#   reset   down, then delete data and logs (Kafka's jars are kept)
#
# Ports and other knobs: see the headers of kafka.sh and redis.sh (LOCAL_KAFKA_PORT,
# LOCAL_KAFKA_CONTROLLER_PORT, LOCAL_REDIS_PORT, MAVEN_REPO_LOCAL, ...). Data and logs
# live under .local/ (git-ignored). Clients use SEGMENTS_KAFKA_BOOTSTRAP and
# SEGMENTS_REDIS_URL, whose defaults match the default ports here.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Extra local services, each its own script:
#   services.sh redis-cluster|kafka-secure|kafka-cluster <command>
[[ ${1:-} == redis-cluster ]] && exec bash "$here/redis-cluster.sh" "${@:2}"
[[ ${1:-} == kafka-secure ]] && exec bash "$here/kafka-secure.sh" "${@:2}"
[[ ${1:-} == kafka-cluster ]] && exec bash "$here/kafka-cluster.sh" "${@:2}"

command=${1:-}
shift || true
case $command in
up | down | status | reset) ;;
*)
    echo "usage: $0 up|down|status|reset [kafka|redis ...]" >&2
    exit 2
    ;;
esac
services=("$@")
(( ${#services[@]} )) || services=(redis kafka)
for service in "${services[@]}"; do
    [[ $service == kafka || $service == redis ]] || { echo "error: unknown service '$service' (kafka, redis)" >&2; exit 2; }
done

rc=0
for service in "${services[@]}"; do
    if [[ $command == status ]]; then
        # Report every service, keep the worst exit code.
        bash "$here/$service.sh" status || { s=$?; (( s > rc )) && rc=$s; }
    else
        bash "$here/$service.sh" "$command"
    fi
done
exit "$rc"
