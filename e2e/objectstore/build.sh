#!/usr/bin/env bash
# Build SeaweedFS's `weed` binary (object store with an S3 gateway, Apache-2.0) from the Go module proxy.
#
# Output (never inside the repository):
#   ${SHARDREC_CACHE:-$HOME/.cache/shardrec}/objectstore/seaweedfs-<version>-go<goversion>/weed
# The version comes from versions.env only. Idempotent: when the binary exists it prints "cached: <path>" and
# exits at once. The build goes into a scratch dir beside the destination and is renamed into place, so an
# interrupted build never leaves a truncated binary behind. Prints the path of the binary last.
#
# Environment knobs:
#   SHARDREC_CACHE   cache root (default ~/.cache/shardrec)
#   BUILD_NICE       niceness of the compile (default 10): other work on the machine keeps moving
set -Eeuo pipefail
trap 'echo "[weed] FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=../tools/cache-env.sh
source "$HERE/../tools/cache-env.sh"
: "${SEAWEEDFS_VERSION:?versions.env must set SEAWEEDFS_VERSION}"

command -v go >/dev/null || { echo "objectstore/build.sh: 'go' not found on PATH" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
DEST="$SHARDREC_CACHE/objectstore/seaweedfs-${SEAWEEDFS_VERSION}-go${GO_VERSION#go}"

if [[ -x "$DEST/weed" ]]; then
    echo "cached: $DEST/weed"
    exit 0
fi

mkdir -p "$DEST"
# One build per destination at a time: a second caller waits, then finds the binary cached.
exec 9>"$DEST/.build.lock"
flock 9
if [[ -x "$DEST/weed" ]]; then
    echo "cached: $DEST/weed"
    exit 0
fi

STAGE="$(mktemp -d "$DEST/.stage.XXXXXX")"
trap 'chmod -R u+w "$STAGE" 2>/dev/null; rm -rf "$STAGE"' EXIT

echo "[weed] building github.com/seaweedfs/seaweedfs/weed@${SEAWEEDFS_VERSION} with ${GO_VERSION} -> $DEST"
t0=$SECONDS
# `go install pkg@version` refuses modules whose go.mod has replace directives (seaweedfs has one), so build
# inside a scratch copy of the module's source, where its go.mod (replaces and go.sum included) is the main
# module: exactly the dependency graph upstream builds with. CGO off: a static binary, as upstream releases it.
SRC="$(go mod download -json "github.com/seaweedfs/seaweedfs@${SEAWEEDFS_VERSION}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
cp -r "$SRC" "$STAGE/src"
chmod -R u+w "$STAGE/src"                     # module cache files are read-only
(cd "$STAGE/src" && CGO_ENABLED=0 nice -n "${BUILD_NICE:-10}" \
    go build -trimpath -ldflags "-s -w" -o "$STAGE/weed" ./weed)
chmod 0755 "$STAGE/weed"
mv "$STAGE/weed" "$DEST/weed"
dt=$((SECONDS - t0))
printf '[weed] build time %dm%02ds\n' $((dt / 60)) $((dt % 60))
printf 'weed %s %d\n' "$SEAWEEDFS_VERSION" "$dt" >>"$DEST/build-times.txt"
"$DEST/weed" version
echo "built: $DEST/weed"
