#!/usr/bin/env bash
# Build the binaries of a local Kubernetes control plane from the Go module proxy:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy
#                                                                    (k8s.io/kubernetes via a wrapper module)
#   etcd                                                             (go.etcd.io/etcd/server/v3 via a wrapper module)
#   kwok + its stage YAMLs                                           (go install sigs.k8s.io/kwok/cmd/kwok@…)
#
# Output (never inside the repository):
#   ${SHARDREC_CACHE:-$HOME/.cache/shardrec}/k8s/<k8s>-etcd<etcd>-kwok<kwok>-go<go>/{bin,stages}/
# Versions come from versions.env only. Re-running is cheap: if every artefact exists it prints "cached".
# Each artefact is built into a scratch dir next to its destination and renamed into place, so an interrupted
# build never leaves a truncated binary behind; a re-run only builds what is missing.
#
# Environment knobs:
#   SHARDREC_CACHE   cache root (default ~/.cache/shardrec)
#   BUILD_NICE       niceness of the compile steps (default 10) so other work on the machine keeps moving
#   ETCD_DEBIAN_FALLBACK=0   do not fall back to Debian's etcd-server package if the etcd build fails
set -Eeuo pipefail
trap 'echo "[build] FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=../tools/cache-env.sh
source "$HERE/../tools/cache-env.sh"
# shellcheck source=../tools/build-lib.sh
source "$HERE/../tools/build-lib.sh"
: "${K8S_VERSION:?versions.env must set K8S_VERSION}" "${ETCD_VERSION:?}" "${KWOK_VERSION:?}"

command -v go >/dev/null || { echo "build.sh: 'go' not found on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"                       # e.g. go1.26.8
CACHE_ROOT="$SHARDREC_CACHE/k8s"
KEY="${K8S_VERSION}-etcd${ETCD_VERSION#v}-kwok${KWOK_VERSION#v}-go${GO_VERSION#go}"
DEST="$CACHE_ROOT/$KEY"
BIN="$DEST/bin"
# kubelet and kube-proxy: the real node of e2e/node (built here so they share the wrapper and the stamp).
KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
ALL_BINS=("${KUBE_BINS[@]}" etcd kwok)

all_present() {
    local b
    for b in "${ALL_BINS[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
    [[ -f "$DEST/stages/.complete" ]]
}

if all_present; then
    echo "cached: $DEST"
    exit 0
fi

mkdir -p "$BIN"
# One build per cache dir at a time: a second caller waits, then finds everything cached.
exec 9>"$DEST/.build.lock"
flock 9
if all_present; then
    echo "cached: $DEST"
    exit 0
fi

LOG="$DEST/build-$(date -u +%Y%m%dT%H%M%SZ).log"
exec > >(tee -a "$LOG") 2>&1
echo "[build] $KEY -> $DEST (log: $LOG)"

# Scratch dirs: wrapper modules live in $WORK (outside the repo); artefacts are staged on the same
# filesystem as $DEST so the final `mv` is an atomic rename.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/shardrec-k8s-build.XXXXXX")"
STAGE="$(mktemp -d "$DEST/.stage.XXXXXX")"
cleanup() { rm -rf "$WORK" "$STAGE"; }
trap cleanup EXIT

export CGO_ENABLED=0            # upstream builds these statically (hack/lib/golang.sh)
BASE_GOFLAGS="$(go env GOFLAGS)"
# Wrapper modules start with an empty go.sum; -mod=mod lets `go build` record what `go get` missed.
MOD_GOFLAGS="${BASE_GOFLAGS:+$BASE_GOFLAGS }-mod=mod"
TIMES="$DEST/build-times.txt"

# --- kube binaries -------------------------------------------------------------------------------------------

# Emit `go mod edit` arguments for the wrapper, derived from k8s.io/kubernetes's own go.mod (given as
# `go mod edit -json` on stdin): its go and godebug lines, one replace per staging module pinned to the
# published v0.MINOR.PATCH tag, and any non-staging replace copied verbatim.
derive_kube_mod_edits() {
    # The script goes in via -c: stdin is the go.mod JSON.
    python3 -c "$DERIVE_PY" "$1"
}
read -r -d '' DERIVE_PY <<'PY' || true
import json, sys

staging_version = sys.argv[1]
mod = json.load(sys.stdin)
args = [f"-go={mod['Go']}"]
for d in mod.get("Godebug") or []:
    args.append(f"-godebug={d['Key']}={d['Value']}")
staging = []
for r in mod.get("Replace") or []:
    old, new = r["Old"], r["New"]
    if new["Path"] == f"./staging/src/{old['Path']}":
        staging.append(old["Path"])
        args.append(f"-replace={old['Path']}={old['Path']}@{staging_version}")
    elif new.get("Version"):
        lhs = old["Path"] + (f"@{old['Version']}" if old.get("Version") else "")
        args.append(f"-replace={lhs}={new['Path']}@{new['Version']}")
    else:
        sys.exit(f"unexpected local replace in k8s.io/kubernetes go.mod: {old} => {new}")
# Every k8s.io requirement at the fake v0.0.0 must be covered, or resolution fails with
# "unknown revision v0.0.0" deep inside `go get`.
missing = [q["Path"] for q in mod.get("Require") or []
           if q["Version"] == "v0.0.0" and q["Path"] not in staging]
if missing:
    sys.exit(f"requirements at v0.0.0 without a staging replace: {missing}")
print(f"[build] {len(staging)} staging modules -> {staging_version}", file=sys.stderr)
print("\n".join(args))
PY

kube_ldflags() {
    local info date major minor pkg flags="-s -w -buildid="
    # Stamp like hack/lib/version.sh so `--version` and /version report the real release.
    # buildDate = the tag's commit time from the module's .info file, which keeps the binaries reproducible.
    info="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | json_field Info)"
    date="$(json_field Time <"$info")"
    IFS=. read -r major minor _ <<<"${K8S_VERSION#v}"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    echo "$flags"
}

build_kube() {
    local b missing=() gomod edits ldflags staging_version
    for b in "${KUBE_BINS[@]}"; do [[ -x "$BIN/$b" ]] || missing+=("$b"); done
    ((${#missing[@]})) || return 0
    staging_version="v0.${K8S_VERSION#v1.}"                  # v1.36.3 -> v0.36.3
    mkdir -p "$WORK/kbuild"
    (
        cd "$WORK/kbuild"
        export GOFLAGS="$MOD_GOFLAGS"
        go mod init local.test/kbuild >/dev/null 2>&1
        gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | json_field GoMod)"
        # Captured first (not `< <(…)`) so a failed derivation stops the build under pipefail.
        edits="$(go mod edit -json "$gomod" | derive_kube_mod_edits "$staging_version")"
        mapfile -t edits <<<"$edits"
        go mod edit "${edits[@]}"
        local pkgs=()
        for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b@$K8S_VERSION"); done
        timed "kube: go get (download+resolve)" go get "k8s.io/kubernetes@$K8S_VERSION" "${pkgs[@]}"
        ldflags="$(kube_ldflags)"
        # One `go build` per binary (not one for all) so the log shows what each adds; shared packages
        # are compiled once anyway thanks to the build cache.
        for b in "${missing[@]}"; do
            timed "$b" "${NICE[@]}" go build -trimpath -tags=selinux,notest -ldflags="$ldflags" \
                -o "$STAGE/$b" "k8s.io/kubernetes/cmd/$b"
            install_artefact "$b"
        done
    )
    # Captured, not piped into `grep -q`: an early-exiting reader would SIGPIPE the writer under pipefail.
    local reported
    reported="$("$BIN/kube-apiserver" --version)"
    [[ "$reported" == "Kubernetes $K8S_VERSION" ]] ||
        { echo "kube-apiserver --version is not '$K8S_VERSION': $reported" >&2; return 1; }
}

# --- etcd ----------------------------------------------------------------------------------------------------

build_etcd_from_proxy() (
    mkdir -p "$WORK/ebuild"
    cd "$WORK/ebuild"
    export GOFLAGS="$MOD_GOFLAGS"
    go mod init local.test/ebuild >/dev/null 2>&1
    # Separate wrapper so etcd's dependency graph cannot shift versions in the kube build.
    timed "etcd: go get (download+resolve)" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    timed etcd "${NICE[@]}" go build -trimpath -ldflags="-s -w -buildid=" -o "$STAGE/etcd" go.etcd.io/etcd/server/v3
)

# Debian's etcd-server (3.4.x) works with kube-apiserver but is below the supported minimum; last resort only.
install_etcd_from_debian() {
    [[ "${ETCD_DEBIAN_FALLBACK:-1}" == 1 ]] || return 1
    command -v apt-get >/dev/null || return 1
    echo "[build] WARNING: etcd $ETCD_VERSION could not be built; falling back to Debian etcd-server" >&2
    [[ -x /usr/bin/etcd ]] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server; }
    cp /usr/bin/etcd "$STAGE/etcd"
    echo "etcd is Debian's $(first_line /usr/bin/etcd --version), not $ETCD_VERSION" >"$DEST/ETCD_FALLBACK"
}

build_etcd() {
    [[ -x "$BIN/etcd" ]] && return 0
    build_etcd_from_proxy || install_etcd_from_debian
    install_artefact etcd
    first_line "$BIN/etcd" --version
}

# --- kwok ----------------------------------------------------------------------------------------------------

build_kwok() {
    if [[ ! -x "$BIN/kwok" ]]; then
        # kwok's go.mod has no replace directives, so plain `go install pkg@version` works (no -mod flag allowed).
        timed kwok env GOBIN="$STAGE" GOFLAGS="$BASE_GOFLAGS" "${NICE[@]}" \
            go install -trimpath -ldflags="-s -w -buildid=" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
        install_artefact kwok
    fi
    [[ -f "$DEST/stages/.complete" ]] && return 0
    # The standalone kwok binary embeds no stages ("no stages found"); ship the module's stage YAMLs.
    local dir
    dir="$(GOFLAGS="$BASE_GOFLAGS" go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | json_field Dir)"
    [[ -d "$dir/kustomize/stage" ]] || { echo "no kustomize/stage in $dir" >&2; return 1; }
    cp -r "$dir/kustomize/stage" "$STAGE/stages"
    chmod -R u+w "$STAGE/stages"                  # module cache files are read-only
    touch "$STAGE/stages/.complete"
    rm -rf "$DEST/stages"
    mv "$STAGE/stages" "$DEST/stages"
}

# --- main ----------------------------------------------------------------------------------------------------

T0=$SECONDS
echo "[build] go=$GO_VERSION k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION nproc=$(nproc)"
build_etcd
build_kwok
build_kube
all_present || { echo "[build] incomplete: some artefacts are missing in $DEST" >&2; exit 1; }
{
    echo "key=$KEY"
    echo "go=$GO_VERSION k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) host_nproc=$(nproc)"
} >"$DEST/BUILD-INFO"
printf '[build] total %dm%02ds\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60))
ls -l "$BIN"
echo "[build] done: $BIN"
