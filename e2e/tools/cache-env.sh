# Sourced (never executed) by every build, install and CI script: the ONE place that says where caches live.
#
# SHARDREC_CACHE (default ~/.cache/shardrec) is the root of every cache this project fills outside the
# repository, so `SHARDREC_CACHE=$(mktemp -d) bash .ci/run` on a fresh clone is a truly cold run:
#   $SHARDREC_CACHE/k8s/...      control-plane binaries (e2e/controlplane/build.sh)
#   $SHARDREC_CACHE/tools/...    helm (e2e/tools/build-helm.sh)
#   $SHARDREC_CACHE/go/build     Go's build cache (GOCACHE)
#   $SHARDREC_CACHE/go/mod       Go's module cache (GOMODCACHE)
#   $SHARDREC_CACHE/pip          pip's wheel and HTTP cache (PIP_CACHE_DIR; hnswlib's wheel is built once)
# The virtualenv is .venv inside the clone, so a fresh clone never has one.
# An explicitly set GOCACHE, GOMODCACHE or PIP_CACHE_DIR wins.
export SHARDREC_CACHE="${SHARDREC_CACHE:-$HOME/.cache/shardrec}"
export GOCACHE="${GOCACHE:-$SHARDREC_CACHE/go/build}"
export GOMODCACHE="${GOMODCACHE:-$SHARDREC_CACHE/go/mod}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$SHARDREC_CACHE/pip}"
