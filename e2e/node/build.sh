#!/usr/bin/env bash
# Build (or install) everything the real node of e2e/node needs, idempotently; prints `cached` when done.
#   kubelet, kube-proxy          e2e/controlplane/build.sh (same wrapper module and version stamp as kube-apiserver)
#   containerd, shim, ctr        go install github.com/containerd/containerd/v2/cmd/…@$CONTAINERD_VERSION
#   runc                         go install -tags seccomp github.com/opencontainers/runc@$RUNC_VERSION
#   coredns                      github.com/coredns/coredns@$COREDNS_VERSION through a wrapper main that links only
#                                the plugins the node's Corefile uses (static; the cluster DNS pod)
#   CNI plugins, iptables, conntrack, busybox-static (the test image), libseccomp-dev + pkg-config (runc's
#   seccomp build)               Debian packages, apt-get installed if missing (needs root, as the node does)
#
# Output (never inside the repository):
#   ${SHARDREC_CACHE:-$HOME/.cache/shardrec}/node/containerd<v>-runc<v>-coredns<v>-go<v>/bin/
#       {containerd,containerd-shim-runc-v2,ctr,runc,coredns}
# Versions come from e2e/controlplane/versions.env only.
set -Eeuo pipefail
trap 'echo "[node-build] FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CP="$HERE/../controlplane"
# shellcheck source=../controlplane/versions.env
source "$CP/versions.env"
# shellcheck source=../tools/cache-env.sh
source "$HERE/../tools/cache-env.sh"
# shellcheck source=../tools/build-lib.sh
source "$HERE/../tools/build-lib.sh"
: "${CONTAINERD_VERSION:?versions.env must set CONTAINERD_VERSION}" "${RUNC_VERSION:?}" "${COREDNS_VERSION:?}"

DEBS=(containernetworking-plugins iptables conntrack busybox-static libseccomp-dev pkg-config)
NODE_BINS=(containerd containerd-shim-runc-v2 ctr runc coredns)
command -v go >/dev/null || { echo "node build: 'go' not found on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
KEY="containerd${CONTAINERD_VERSION#v}-runc${RUNC_VERSION#v}-coredns${COREDNS_VERSION#v}-go${GO_VERSION#go}"
DEST="$SHARDREC_CACHE/node/$KEY"
BIN="$DEST/bin"

debs_missing() {
    local d out=()
    for d in "${DEBS[@]}"; do dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -x 'install ok installed' >/dev/null || out+=("$d"); done
    echo "${out[*]}"
}
node_present() {
    local b
    for b in "${NODE_BINS[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
    [[ -z "$(debs_missing)" ]]
}

# The node's own pieces first, then kubelet + kube-proxy (and the control plane) via e2e/controlplane/build.sh,
# which prints `cached: …` itself when nothing is missing. Each part holds its own lock, so two runs can
# overlap: the second builds what the first has not started and waits for the rest.
build_node_parts() {
    mkdir -p "$BIN"
    exec 9>"$DEST/.build.lock"
    flock 9
    if node_present; then
        echo "cached: $DEST"
        return 0
    fi
    LOG="$DEST/build-$(date -u +%Y%m%dT%H%M%SZ).log"
    exec > >(tee -a "$LOG") 2>&1
    STAGE="$(mktemp -d "$DEST/.stage.XXXXXX")"
    trap 'rm -rf "$STAGE"' EXIT
    TIMES="$DEST/build-times.txt"
    T0=$SECONDS
    echo "[node-build] $KEY -> $DEST (log: $LOG)"

    # Debian packages (runc's seccomp build needs libseccomp-dev).
    local missing pkgs b
    missing="$(debs_missing)"
    if [[ -n "$missing" ]]; then
        [[ "$(id -u)" == 0 ]] || { echo "node build: need root to apt-get install: $missing" >&2; exit 1; }
        read -r -a missing_list <<<"$missing"
        timed "apt-get install ${missing_list[*]}" \
            env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_list[@]}" ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_list[@]}"; }
    fi

    # containerd: go.mod has no replace directives, so plain `go install pkg@version` works.
    if [[ ! -x "$BIN/containerd" || ! -x "$BIN/containerd-shim-runc-v2" || ! -x "$BIN/ctr" ]]; then
        pkgs=()
        for b in containerd containerd-shim-runc-v2 ctr; do
            pkgs+=("github.com/containerd/containerd/v2/cmd/$b@$CONTAINERD_VERSION")
        done
        # -X main.version-style stamp: containerd reads github.com/containerd/containerd/v2/version.Version.
        ver_pkg=github.com/containerd/containerd/v2/version
        timed "containerd+shim+ctr" env GOBIN="$STAGE" "${NICE[@]}" go install -trimpath \
            -tags "no_btrfs no_devmapper no_zfs" \
            -ldflags="-s -w -X $ver_pkg.Version=$CONTAINERD_VERSION -X $ver_pkg.Package=github.com/containerd/containerd/v2" \
            "${pkgs[@]}"
        for b in containerd containerd-shim-runc-v2 ctr; do install_artefact "$b"; done
    fi

    # runc with seccomp (cgo + libseccomp).
    if [[ ! -x "$BIN/runc" ]]; then
        timed runc env GOBIN="$STAGE" CGO_ENABLED=1 "${NICE[@]}" go install -trimpath -tags seccomp \
            -ldflags="-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
        install_artefact runc
    fi

    # CoreDNS: static (it runs as the only file of its image). Stock `go install …/coredns@v` links every
    # plugin (cloud DNS providers, tracing, …: 12 minutes cold here); this wrapper main registers only the
    # plugins of the node's Corefile (e2e/node/node.py dns_manifests), in CoreDNS's own directive order.
    if [[ ! -x "$BIN/coredns" ]]; then
        local cwork
        cwork="$(mktemp -d "${TMPDIR:-/tmp}/shardrec-coredns-build.XXXXXX")"
        cat >"$cwork/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() { dnsserver.Directives = []string{"ready", "health", "errors", "cache", "kubernetes"} }

func main() { coremain.Run() }
GO
        (
            cd "$cwork"
            export GOFLAGS="-mod=mod" CGO_ENABLED=0
            go mod init local.test/corednsbuild >/dev/null 2>&1
            timed "coredns: go get" go get "github.com/coredns/coredns@$COREDNS_VERSION"
            timed coredns "${NICE[@]}" go build -trimpath -ldflags="-s -w" -o "$STAGE/coredns" .
        )
        rm -rf "$cwork"
        install_artefact coredns
        "$BIN/coredns" -plugins >/dev/null
    fi

    first_line "$BIN/containerd" --version
    first_line "$BIN/runc" --version
    node_present || { echo "[node-build] incomplete: $DEST" >&2; exit 1; }
    echo "key=$KEY built=$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$DEST/BUILD-INFO"
    printf '[node-build] containerd+runc+debs %dm%02ds\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60))
    echo "[node-build] done: $BIN"
    exec 9>&-
}

if node_present; then
    echo "cached: $DEST"
else
    build_node_parts
fi
# kubelet + kube-proxy: built exactly like kube-apiserver, in the control plane's cache key.
bash "$CP/build.sh"
