#!/usr/bin/env bash
# Build Prometheus with kubernetes_sd_configs from its Go module, through the Go module proxy.
#
# Why: Debian's prometheus (2.42, tests/ship uses it for static scrapes) is built without Kubernetes
# service discovery: its config parser answers "field kubernetes_sd_configs not found in type
# config.ScrapeConfig". The real-node scenario (e2e/node/test_scenarios.py) must discover pods through
# the API server, so it uses this build.
#
# Output (never inside the repository):
#   ${SHARDREC_CACHE:-$HOME/.cache/shardrec}/tools/prometheus-<module version>-go<goversion>/prometheus
# Build tags `remove_all_sd,enable_kubernetes_sd` link only the Kubernetes discovery (upstream's own
# switch, plugins/plugin_kubernetes.go); no web UI assets (the HTTP API, all the tests use, is complete).
# The module's go.mod has a replace directive, so `go install pkg@version` refuses it: the build runs in
# a throwaway wrapper module that requires it and repeats that replace. Idempotent ("cached: ..."),
# atomic (staged, then renamed), one build at a time per destination. `--path` prints where it goes.
set -Eeuo pipefail
trap 'echo "[prometheus] FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=cache-env.sh
source "$HERE/cache-env.sh"
: "${PROMETHEUS_MODULE_VERSION:?versions.env must set PROMETHEUS_MODULE_VERSION}"

command -v go >/dev/null || { echo "build-prometheus.sh: 'go' not found on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
DEST="$SHARDREC_CACHE/tools/prometheus-${PROMETHEUS_MODULE_VERSION}-go${GO_VERSION#go}"

if [[ "${1:-}" == "--path" ]]; then  # where the binary is (or would be); builds nothing
    echo "$DEST/prometheus"
    exit 0
fi
if [[ -x "$DEST/prometheus" ]]; then
    echo "cached: $DEST/prometheus"
    exit 0
fi
mkdir -p "$DEST"
exec 9>"$DEST/.build.lock"
flock 9
if [[ -x "$DEST/prometheus" ]]; then
    echo "cached: $DEST/prometheus"
    exit 0
fi

STAGE="$(mktemp -d "$DEST/.stage.XXXXXX")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/shardrec-prometheus-build.XXXXXX")"
trap 'rm -rf "$STAGE" "$WORK"' EXIT

MODULE=github.com/prometheus/prometheus
echo "[prometheus] building $MODULE/cmd/prometheus@$PROMETHEUS_MODULE_VERSION (kubernetes SD only) with $GO_VERSION -> $DEST"
t0=$SECONDS
cd "$WORK"
go mod init local.test/prometheusbuild >/dev/null 2>&1
go mod download -json "$MODULE@$PROMETHEUS_MODULE_VERSION" >"$WORK/module.json"
MODFILE="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["GoMod"])' "$WORK/module.json")"
# Repeat the module's own replace directives (single-line form) in the wrapper.
grep -E '^replace [^(]' "$MODFILE" | while read -r line; do
    go mod edit -replace "$(printf '%s\n' "$line" | sed -E 's/^replace +//; s/ +=> +/=/; s/ +([^ =]+)$/@\1/')"
done
go get "$MODULE/cmd/prometheus@$PROMETHEUS_MODULE_VERSION"
CGO_ENABLED=0 nice -n "${BUILD_NICE:-10}" go build -trimpath -tags remove_all_sd,enable_kubernetes_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_MODULE_VERSION}" \
    -o "$STAGE/prometheus" "$MODULE/cmd/prometheus"
mv "$STAGE/prometheus" "$DEST/prometheus"
dt=$((SECONDS - t0))
printf '[prometheus] build time %dm%02ds\n' $((dt / 60)) $((dt % 60))
printf 'prometheus %s %d\n' "$PROMETHEUS_MODULE_VERSION" "$dt" >>"$DEST/build-times.txt"
"$DEST/prometheus" --version
echo "built: $DEST/prometheus"
