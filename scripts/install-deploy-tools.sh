#!/usr/bin/env bash
# The tools that check the Helm chart (tests/deploy): Helm, pinned, built from the Go
# module proxy, and deploy/helm/validate (strict decoding of rendered objects into the
# Kubernetes and prometheus-operator API types, pinned by its go.sum).
#
# Both are built once into a cache outside the checkout, keyed by version (Helm) and by
# a hash of the sources (the validator), so a second run only prints the paths:
#   helm=<path>
#   validate=<path>
# The cache is ${XDG_CACHE_HOME:-~/.cache}/purchase-segments/tools unless
# PURCHASE_SEGMENTS_TOOLS names another directory. Needs Go (go1.26 or newer).
set -euo pipefail

HELM_VERSION=v3.21.4

REPO=$(cd "$(dirname "$0")/.." && pwd)
VALIDATE_SRC="$REPO/deploy/helm/validate"
CACHE=${PURCHASE_SEGMENTS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/purchase-segments/tools}

die() {
    echo "install-deploy-tools: $*" >&2
    exit 1
}

command -v go >/dev/null || die "Go is needed to build helm and the chart validator (go1.26+)"
mkdir -p "$CACHE"

# Never fetch another Go toolchain, never stamp VCS data into the binaries.
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

validate_key=$(cat "$VALIDATE_SRC/go.mod" "$VALIDATE_SRC/go.sum" "$VALIDATE_SRC"/*.go \
    | sha256sum | cut -c1-16)
HELM="$CACHE/helm-$HELM_VERSION"
VALIDATE="$CACHE/validate-$validate_key"

build() {  # build TARGET -- command that writes into $tmp/bin
    local target=$1
    shift
    local tmp
    tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    echo "install-deploy-tools: building $(basename "$target") (once; cached in $CACHE)" >&2
    (export GOBIN="$tmp/bin" tmp && "$@") >&2 || die "building $(basename "$target") failed"
    mv -f "$tmp/bin/$(ls "$tmp/bin")" "$target"  # a rename: readers never see half a file
}

# One build at a time per cache, across parallel test runs.
exec 9>"$CACHE/.lock"
flock 9

if [[ ! -x "$HELM" ]]; then
    # The version is a link-time variable (Helm's release builds set it the same way);
    # without it `helm version` says only the minor release.
    build "$HELM" go install -trimpath \
        -ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
"$HELM" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" \
    || die "$HELM does not report $HELM_VERSION"

if [[ ! -x "$VALIDATE" ]]; then
    build "$VALIDATE" bash -c "cd '$VALIDATE_SRC' && go build -mod=readonly -trimpath -o \"\$GOBIN/validate\" ."
fi

echo "helm=$HELM"
echo "validate=$VALIDATE"
