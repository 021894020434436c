#!/usr/bin/env bash
# Build helm from its Go module (helm.sh/helm/v4/cmd/helm) through the Go module proxy.
#
# Output (never inside the repository):
#   ${SHARDREC_CACHE:-$HOME/.cache/shardrec}/tools/helm-<version>-go<goversion>/helm
# The version comes from versions.env only. Idempotent: when the binary exists it prints "cached" and
# exits at once. The build goes into a scratch dir beside the destination and is renamed into place, so
# an interrupted build never leaves a truncated binary behind. Prints the path of the binary last.
#
# Environment knobs:
#   SHARDREC_CACHE   cache root (default ~/.cache/shardrec)
#   BUILD_NICE       niceness of the compile (default 10): other builds on the machine keep moving
set -Eeuo pipefail
trap 'echo "[helm] FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=cache-env.sh
source "$HERE/cache-env.sh"
: "${HELM_VERSION:?versions.env must set HELM_VERSION}"

command -v go >/dev/null || { echo "build-helm.sh: 'go' not found on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
MAJOR="${HELM_VERSION%%.*}"                                   # v4
DEST="$SHARDREC_CACHE/tools/helm-${HELM_VERSION}-go${GO_VERSION#go}"

if [[ -x "$DEST/helm" ]]; then
    echo "cached: $DEST/helm"
    exit 0
fi

mkdir -p "$DEST"
# One build per destination at a time: a second caller waits, then finds the binary cached.
exec 9>"$DEST/.build.lock"
flock 9
if [[ -x "$DEST/helm" ]]; then
    echo "cached: $DEST/helm"
    exit 0
fi

STAGE="$(mktemp -d "$DEST/.stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

echo "[helm] building helm.sh/helm/${MAJOR}/cmd/helm@${HELM_VERSION} with ${GO_VERSION} -> $DEST"
t0=$SECONDS
# CGO off: a static binary, as upstream releases it. The ldflags stamp the version `helm version` prints.
CGO_ENABLED=0 GOBIN="$STAGE" nice -n "${BUILD_NICE:-10}" \
    go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/${MAJOR}/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/${MAJOR}/cmd/helm@${HELM_VERSION}"
mv "$STAGE/helm" "$DEST/helm"
dt=$((SECONDS - t0))
printf '[helm] build time %dm%02ds\n' $((dt / 60)) $((dt % 60))
printf 'helm %s %d\n' "$HELM_VERSION" "$dt" >>"$DEST/build-times.txt"
"$DEST/helm" version
echo "built: $DEST/helm"
