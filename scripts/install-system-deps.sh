#!/usr/bin/env bash
# Debian packages the test suite needs besides Python, Java and Maven:
# chromium renders the churn dashboard headless (tests/unit/test_web_dashboard.py);
# openssl makes the test certificates (deploy/local/kafka-secure.sh, redis-cluster.sh).
# redis-server is installed by deploy/local/redis.sh. Idempotent: nothing to do
# when every package is already there.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-system-deps: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "install-system-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
