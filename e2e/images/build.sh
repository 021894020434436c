#!/usr/bin/env bash
# `make images`: both images of `Dockerfile` (targets serving and operator), built without Docker.
#
#   1. a base image made here from Debian packages: `debootstrap --variant=minbase bookworm` with
#      python3, python3-venv and python-is-python3, security updates applied, docs and apt lists
#      dropped; imported into buildah (overlay or vfs storage, chroot isolation: no daemon, no
#      registry);
#   2. `buildah bud --target serving|operator --build-arg PYTHON_IMAGE=<that base>` (the Dockerfile's
#      RUN steps reach Debian and PyPI), tagged exactly as the chart and the CRD expect by default:
#      ghcr.io/shardrec/shardrec:<version> and ghcr.io/shardrec/shardrec-operator:<version>;
#   3. each image is exported as an OCI archive into $SHARDREC_CACHE/images/, named by a hash of its
#      inputs (Dockerfile, .dockerignore, pyproject.toml, README.md, the two src/ trees, this script,
#      the base's recipe): an unchanged tree prints `cached` and builds nothing. The two newest
#      archives per image are kept.
# The Dockerfile's build stages run each image's commands once; e2e/images/test_images.py (run by
# `make images` after this script) unpacks each archive and runs its commands as UID 10001 in a chroot.
#
#
# Usage: bash e2e/images/build.sh [serving|operator ...]   (default: both)
#        bash e2e/images/build.sh --paths                  print "<target> <archive>" for the current
#                                                          tree (built or not), build nothing
# Import into a node's containerd: ctr -n k8s.io images import <archive>
# Needs root (debootstrap, buildah's vfs storage); installs buildah and debootstrap with apt-get
# when missing. Knobs: DEBIAN_MIRROR (default: this machine's Debian mirror, else deb.debian.org).
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=e2e/tools/cache-env.sh
source "$ROOT/e2e/tools/cache-env.sh"

IMAGES="$SHARDREC_CACHE/images"
STORE="$SHARDREC_CACHE/buildah"
SUITE="bookworm"
BASE_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates"
# Bump when the base recipe below changes in a way its inputs do not show.
BASE_RECIPE="1 $SUITE minbase $BASE_PACKAGES +updates +security -doc -man -locale"
REPOSITORY_serving="ghcr.io/shardrec/shardrec"
REPOSITORY_operator="ghcr.io/shardrec/shardrec-operator"

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'images: %s\n' "$*" >&2; exit 2; }
sha256_of() { local out; out="$(sha256sum)"; printf '%s\n' "${out%% *}"; }

TARGETS=()
PATHS_ONLY=0
for arg in "$@"; do
    case "$arg" in
        serving | operator) TARGETS+=("$arg") ;;
        --paths) PATHS_ONLY=1 ;;
        *) die "unknown argument '$arg' (usage: build.sh [serving|operator ...] [--paths])" ;;
    esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(serving operator)

# ---- keys: what each archive is built from ------------------------------------------------------
BASE_KEY="$(printf '%s\n' "$BASE_RECIPE" | sha256_of)"
BASE_KEY="${BASE_KEY:0:16}"
BASE_REF="localhost/shardrec-base:${SUITE}-${BASE_KEY}"
BASE_ARCHIVE="$IMAGES/base-${SUITE}-${BASE_KEY}.oci.tar"
# The files the build context admits (.dockerignore), with the same exclusions, plus this script.
TREE_KEY="$(cd "$ROOT" && find Dockerfile .dockerignore pyproject.toml README.md shard-server/src operator/src \
    e2e/images/build.sh -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.so' \
    ! -path '*/.pytest_cache/*' ! -path '*/.mypy_cache/*' ! -path '*/.ruff_cache/*' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256_of)"
VERSION="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$ROOT/pyproject.toml")"

target_key() { local key; key="$(printf '%s %s %s\n' "$TREE_KEY" "$BASE_KEY" "$1" | sha256_of)"; printf '%s\n' "${key:0:16}"; }
target_ref() { local var="REPOSITORY_$1"; printf '%s:%s\n' "${!var}" "$VERSION"; }
target_archive() { printf '%s/%s-%s.oci.tar\n' "$IMAGES" "$1" "$(target_key "$1")"; }

if [[ "$PATHS_ONLY" == 1 ]]; then
    for target in "${TARGETS[@]}"; do printf '%s %s\n' "$target" "$(target_archive "$target")"; done
    exit 0
fi

# ---- prerequisites ------------------------------------------------------------------------------
[[ "$(id -u)" == 0 ]] || die "needs root (debootstrap and buildah's vfs storage); run it as root"
missing_packages=()
command -v buildah >/dev/null 2>&1 || missing_packages+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing_packages+=(debootstrap)
if [[ ${#missing_packages[@]} -gt 0 ]]; then
    command -v apt-get >/dev/null 2>&1 || die "needs ${missing_packages[*]} and there is no apt-get to install them"
    log "apt-get install ${missing_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_packages[@]}" >/dev/null
fi
mkdir -p "$IMAGES" "$STORE"
# One build at a time per cache (buildah's storage locks itself; this keeps the archives consistent).
exec 9>"$IMAGES/.lock"
flock 9

# Storage driver: overlay where this kernel and file system mount it (a probe), else vfs, which
# works everywhere but keeps a full copy of the file system per layer and per container (here: 4-11
# minutes per target instead of 2-4, and 18 GB of storage after two builds). SHARDREC_BUILDAH_DRIVER
# picks one. Each driver has its own storage root.
probe_overlay() {
    local flags=(--root "$STORE/overlay/root" --runroot "$STORE/overlay/run" --storage-driver overlay) ctr ok=1
    ctr="$(buildah "${flags[@]}" from scratch 2>/dev/null)" || return 1
    buildah "${flags[@]}" mount "$ctr" >/dev/null 2>&1 || ok=0
    buildah "${flags[@]}" rm "$ctr" >/dev/null 2>&1 || ok=0
    [[ "$ok" == 1 ]]
}
DRIVER="${SHARDREC_BUILDAH_DRIVER:-}"
if [[ -z "$DRIVER" ]]; then
    if probe_overlay; then DRIVER=overlay; else DRIVER=vfs; fi
fi
BAH=(buildah --root "$STORE/$DRIVER/root" --runroot "$STORE/$DRIVER/run" --storage-driver "$DRIVER")
bah() { "${BAH[@]}" "$@"; }
export BUILDAH_ISOLATION=chroot
log "buildah $(buildah --version | sed -n 's/^buildah version \([^ ]*\).*/\1/p'), storage driver $DRIVER, chroot isolation"

TIMES=()
timed() {
    local label="$1" started=$SECONDS
    shift
    "$@"
    TIMES+=("$(printf '%-32s %5ds' "$label" $((SECONDS - started)))")
}

debian_mirror() {
    local uri
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then printf '%s\n' "$DEBIAN_MIRROR"; return; fi
    # This machine's mirror for the main archive (deb822 or one-line sources), else the default.
    uri="$(sed -n -E 's#^URIs:[[:space:]]*(\S+/debian)/?$#\1#p; s#^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?(\S+/debian)/?[[:space:]].*#\2#p' \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)"
    uri="${uri%%$'\n'*}"
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

WORK=""
CONTAINER=""
cleanup() {
    local rc=$?
    [[ -n "$CONTAINER" ]] && bah rm "$CONTAINER" >/dev/null 2>&1
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# ---- 1. the base image --------------------------------------------------------------------------
build_base() {
    local mirror rootfs mnt
    mirror="$(debian_mirror)"
    WORK="$(mktemp -d "$IMAGES/work.XXXXXX")"
    rootfs="$WORK/rootfs"
    log "debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE ($mirror)"
    nice -n 10 debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb ${mirror%/debian}/debian-security $SUITE-security main
EOF
    # As python.org's slim images: no docs, man pages or translations, now or in later apt-get installs.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/shardrec-slim" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
EOF
    rm -rf "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/dev/*

    CONTAINER="$(bah from scratch)"
    mnt="$(bah mount "$CONTAINER")"
    tar -C "$rootfs" -cf - . | tar -C "$mnt" -xpf -
    bah umount "$CONTAINER" >/dev/null
    rm -rf "$WORK"
    WORK=""
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 --label "org.opencontainers.image.description=Debian $SUITE minbase + python3 (shardrec e2e/images)" \
        "$CONTAINER"
    log "apt-get upgrade (bookworm-updates, bookworm-security)"
    bah run "$CONTAINER" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq >/dev/null \
        && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log && python3 --version'
    bah commit --rm --quiet "$CONTAINER" "$BASE_REF" >/dev/null
    CONTAINER=""
    bah push --quiet "$BASE_REF" "oci-archive:$BASE_ARCHIVE.part:$BASE_REF"
    mv "$BASE_ARCHIVE.part" "$BASE_ARCHIVE"
}

# The layer cache (what makes a rebuild after a code change fast) grows with every build (by GBs with
# vfs). Past SHARDREC_BUILDAH_MAX_GB it is emptied; the base comes back from its archive.
store_gb="$(du -s --block-size=1G "$STORE/$DRIVER" 2>/dev/null || true)"
if [[ "${store_gb%%[[:space:]]*}" -gt "${SHARDREC_BUILDAH_MAX_GB:-30}" ]]; then
    log "buildah storage is ${store_gb%%[[:space:]]*} GB: removing every image (layer cache)"
    bah rm --all >/dev/null
    bah rmi --all --force >/dev/null
fi

if bah inspect --type image "$BASE_REF" >/dev/null 2>&1; then
    log "base $BASE_REF: cached"
elif [[ -f "$BASE_ARCHIVE" ]]; then
    log "base $BASE_REF: from $BASE_ARCHIVE"
    base_id="$(bah pull --quiet "oci-archive:$BASE_ARCHIVE")"
    bah tag "${base_id##*$'\n'}" "$BASE_REF"
else
    timed "base (debootstrap + import)" build_base
fi

# ---- 2. the targets -----------------------------------------------------------------------------
# The RUN steps reach PyPI and Debian through whatever this machine trusts (e.g. a TLS-intercepting
# proxy's CA): its CA bundle and a pip.conf naming it are mounted into each RUN step, never copied
# into a layer. SHARDREC_BUILD_CA_BUNDLE= (empty) turns this off.
trust_mounts() {
    local bundle="${SHARDREC_BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
    [[ -n "$bundle" && -f "$bundle" ]] || return 0
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$IMAGES/build-pip.conf"
    printf '%s\n' --volume "$bundle:/etc/ssl/certs/ca-certificates.crt:ro" --volume "$IMAGES/build-pip.conf:/etc/pip.conf:ro"
}

build_target() {
    local target="$1" ref archive mounts
    ref="$(target_ref "$target")"
    archive="$(target_archive "$target")"
    mapfile -t mounts < <(trust_mounts)
    log "buildah bud --target $target -t $ref (base $BASE_REF)"
    nice -n 10 "${BAH[@]}" bud --quiet --layers \
        --pull=never --isolation chroot --target "$target" --build-arg "PYTHON_IMAGE=$BASE_REF" \
        ${mounts[@]+"${mounts[@]}"} -t "$ref" -f "$ROOT/Dockerfile" "$ROOT" >/dev/null
    bah push --quiet "$ref" "oci-archive:$archive.part:$ref"
    mv "$archive.part" "$archive"
    # Keep the two newest archives of this target.
    find "$IMAGES" -maxdepth 1 -name "$target-*.oci.tar" -printf '%T@ %p\n' | sort -rn | sed -n '3,$p' \
        | while read -r _ old; do rm -f "$old"; done
}

for target in "${TARGETS[@]}"; do
    archive="$(target_archive "$target")"
    if [[ -f "$archive" ]]; then
        log "$target: cached ($archive)"
        TIMES+=("$(printf '%-32s %6s' "$target" cached)")
        continue
    fi
    timed "$target (bud + export)" build_target "$target"
done

printf '\n%-32s %6s\n' "step" "time" >&2
printf '%s\n' "${TIMES[@]}" >&2
for target in "${TARGETS[@]}"; do
    archive="$(target_archive "$target")"
    printf '%s %s %s %dMB\n' "$target" "$(target_ref "$target")" "$archive" $(($(stat -c %s "$archive") / 1048576))
done
