#!/usr/bin/env bash
# `make e2e-kind`: the operator suite and a real-traffic check on a kind cluster with real pods.
#
#   1. checks for Docker (with a running engine), kind, helm, kubectl and the project's Python;
#      exits 2 with a message naming what is missing (e.g. on machines without Docker);
#   2. builds the data-plane and operator images (Dockerfile, targets serving and operator);
#   3. creates a kind cluster from e2e/kind/kind-config.yaml (1 control plane, 2 workers in zone-a
#      and zone-b, a host directory shared by both workers as the index store), kubeconfig in a
#      temporary directory (never ~/.kube/config);
#   4. `kind load`s both images, `helm install`s the chart (CRD + operator watching the traffic
#      namespace only, values in e2e/kind/values.yaml);
#   5. runs `pytest e2e/operator` against it (SHARDREC_E2E_KUBECONFIG mode, see
#      e2e/operator/README.md), then `pytest e2e/kind/test_kind_traffic.py` (a RecommenderCluster
#      served by the in-cluster operator, a bounded burst of /v1/recommend through the router);
#   6. deletes the cluster on exit, whatever happened (KEEP_CLUSTER=1 keeps it and prints how to
#      use and delete it). On failure, `kind export logs` goes to .artifacts/kind-logs/.
#
# Knobs: KIND_CLUSTER_NAME (shardrec-e2e), KIND_NODE_IMAGE (kind's default), KEEP_CLUSTER=1,
# SHARDREC_KIND_TAG (kind-e2e), SHARDREC_E2E_TIMEOUT_SCALE (3), PYTHON, HELM, KUBECTL,
# PYTEST_ARGS (extra pytest arguments, e.g. "-k rollout").
#
# Not yet executed anywhere: it was written on a machine without a Docker engine (e2e/kind/README.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

CLUSTER="${KIND_CLUSTER_NAME:-shardrec-e2e}"
CONTEXT="kind-${CLUSTER}"
TAG="${SHARDREC_KIND_TAG:-kind-e2e}"
DATA_IMAGE="shardrec/shardrec:${TAG}"
OPERATOR_REPOSITORY="shardrec/shardrec-operator"
OPERATOR_IMAGE="${OPERATOR_REPOSITORY}:${TAG}"
RELEASE="shardrec-operator"
OPERATOR_NAMESPACE="shardrec-system"
TRAFFIC_NAMESPACE="shardrec-traffic"
STORE_NODE_DIR="/shardrec-store"
ARTIFACTS="${ROOT}/.artifacts/kind-logs"

log() { printf '[e2e-kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
missing() { printf 'e2e-kind: %s\n' "$*" >&2; exit 2; }

# Every wait is bounded: `timeout` where coreutils has it; kubectl/helm/kind waits carry their own.
if command -v timeout >/dev/null 2>&1; then
    bounded() { local seconds="$1"; shift; timeout --foreground "$seconds" "$@"; }
elif command -v gtimeout >/dev/null 2>&1; then
    bounded() { local seconds="$1"; shift; gtimeout --foreground "$seconds" "$@"; }
else
    missing "needs 'timeout' (GNU coreutils; on macOS: brew install coreutils) to bound its waits"
fi

# A tool from $VAR, else PATH, else the project's cache (built by `make tools` / `make cluster-build`).
find_tool() {
    local name="$1" override="$2" pattern="$3" found
    if [[ -n "$override" ]]; then
        [[ -x "$override" ]] || return 1
        printf '%s\n' "$override"
        return 0
    fi
    if found="$(command -v "$name" 2>/dev/null)"; then
        printf '%s\n' "$found"
        return 0
    fi
    for found in ${SHARDREC_CACHE:-$HOME/.cache/shardrec}/$pattern; do
        [[ -x "$found" ]] && { printf '%s\n' "$found"; return 0; }
    done
    return 1
}

# ---- 1. prerequisites -----------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 \
    || missing "needs Docker and there is no 'docker' here; on machines without Docker run 'make e2e' (a control plane built from source, kwok nodes)"
bounded 30 docker info >/dev/null 2>&1 \
    || missing "'docker' is installed but no Docker engine answers ('docker info' failed); start one, or run 'make e2e' instead"
command -v kind >/dev/null 2>&1 \
    || missing "needs kind on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
HELM="$(find_tool helm "${HELM:-}" 'tools/helm-*/helm')" \
    || missing "needs helm: put it on PATH, set HELM, or run 'make tools' (builds it into ~/.cache/shardrec/tools)"
KUBECTL="$(find_tool kubectl "${KUBECTL:-}" 'k8s/*/bin/kubectl')" \
    || missing "needs kubectl: put it on PATH, set KUBECTL, or run 'make cluster-build'"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
fi
"$PYTHON" -c 'import pytest, pytest_timeout, kubernetes, yaml, numpy, shardrec, shardrec_operator' 2>/dev/null \
    || missing "$PYTHON lacks the project or its dev extras; run 'make install' (or set PYTHON)"
if bounded 30 kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
    missing "a kind cluster named '$CLUSTER' exists already; delete it (kind delete cluster --name $CLUSTER) or set KIND_CLUSTER_NAME"
fi
log "docker, $(kind version), helm $HELM, kubectl $KUBECTL, python $PYTHON"

STATE="$(mktemp -d "${TMPDIR:-/tmp}/shardrec-kind.XXXXXX")"
STORE_HOST_DIR="$STATE/store"
KUBECONFIG_FILE="$STATE/kubeconfig"
mkdir -m 0777 "$STORE_HOST_DIR"  # the suite's pods run as uid 10001 and write their layouts here
CREATED=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ "$CREATED" == 1 && "$rc" != 0 ]]; then
        log "failed (exit $rc): exporting cluster logs to $ARTIFACTS"
        bounded 300 kind export logs "$ARTIFACTS" --name "$CLUSTER" >/dev/null 2>&1 || log "kind export logs failed"
    fi
    if [[ "$CREATED" == 1 && "${KEEP_CLUSTER:-0}" == 1 ]]; then
        log "KEEP_CLUSTER=1: cluster '$CLUSTER' kept"
        log "  export KUBECONFIG=$KUBECONFIG_FILE   (context $CONTEXT; store on this machine: $STORE_HOST_DIR)"
        log "  delete it with: kind delete cluster --name $CLUSTER && rm -rf $STATE"
        exit "$rc"
    fi
    if [[ "$CREATED" == 1 ]]; then
        # Files the pods wrote belong to uid 10001: remove them from inside a node (root there).
        bounded 120 docker exec "${CLUSTER}-worker" find "$STORE_NODE_DIR" -mindepth 1 -delete >/dev/null 2>&1 || true
        log "deleting kind cluster '$CLUSTER'"
        bounded 300 kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" || log "kind delete cluster failed"
    fi
    rm -rf "$STATE" 2>/dev/null || log "could not remove $STATE entirely (files of uid 10001?)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 2. images (before the cluster: a failed build wastes no cluster) -----------------------------
for spec in "serving:$DATA_IMAGE" "operator:$OPERATOR_IMAGE"; do
    target="${spec%%:*}" image="${spec#*:}"
    log "docker build --target $target -t $image"
    started=$SECONDS
    bounded 3600 docker build --target "$target" -t "$image" "$ROOT"
    log "built $image in $((SECONDS - started))s"
done

# ---- 3. cluster -----------------------------------------------------------------------------------
"$PYTHON" "$HERE/kind_config.py" --store-host-dir "$STORE_HOST_DIR" --out "$STATE/kind-config.yaml"
node_image=()
[[ -n "${KIND_NODE_IMAGE:-}" ]] && node_image=(--image "$KIND_NODE_IMAGE")
log "kind create cluster --name $CLUSTER ${KIND_NODE_IMAGE:+--image $KIND_NODE_IMAGE}"
CREATED=1
bounded 900 kind create cluster --name "$CLUSTER" --config "$STATE/kind-config.yaml" \
    --kubeconfig "$KUBECONFIG_FILE" --wait 180s ${node_image[@]+"${node_image[@]}"}
kc() { bounded 300 "$KUBECTL" --kubeconfig="$KUBECONFIG_FILE" --context="$CONTEXT" "$@"; }
kc wait --for=condition=Ready nodes --all --timeout=180s
kc get nodes -L topology.kubernetes.io/zone

log "kind load docker-image $DATA_IMAGE $OPERATOR_IMAGE"
bounded 900 kind load docker-image --name "$CLUSTER" "$DATA_IMAGE" "$OPERATOR_IMAGE"

# ---- 4. chart -------------------------------------------------------------------------------------
# The watched namespace must exist before the install (the chart puts the operator's Role there);
# it enforces the restricted Pod Security Standard, as the suite's namespaces do.
kc apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $OPERATOR_NAMESPACE
---
apiVersion: v1
kind: Namespace
metadata:
  name: $TRAFFIC_NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
EOF
log "helm install $RELEASE charts/shardrec-operator"
bounded 420 "$HELM" install "$RELEASE" "$ROOT/charts/shardrec-operator" \
    --kubeconfig "$KUBECONFIG_FILE" --kube-context "$CONTEXT" --namespace "$OPERATOR_NAMESPACE" \
    --values "$HERE/values.yaml" --set "image.tag=$TAG" --set "watch.namespaces={$TRAFFIC_NAMESPACE}" \
    --wait --timeout 5m
kc -n "$OPERATOR_NAMESPACE" rollout status "deployment/$RELEASE" --timeout=180s
kc wait --for=condition=Established crd/recommenderclusters.shardrec.io --timeout=60s

# ---- 5. the suite, then real traffic --------------------------------------------------------------
export SHARDREC_E2E_KUBECONFIG="$KUBECONFIG_FILE"
export SHARDREC_E2E_CONTEXT="$CONTEXT"
export SHARDREC_E2E_KUBECTL="$KUBECTL"
export SHARDREC_E2E_IMAGE="$DATA_IMAGE"
export SHARDREC_E2E_STORE_NODE_DIR="$STORE_NODE_DIR"
export SHARDREC_E2E_STORE_HOST_DIR="$STORE_HOST_DIR"
export SHARDREC_E2E_TIMEOUT_SCALE="${SHARDREC_E2E_TIMEOUT_SCALE:-3}"
export SHARDREC_E2E_TRAFFIC_NAMESPACE="$TRAFFIC_NAMESPACE"
export SHARDREC_E2E_OPERATOR_NAMESPACE="$OPERATOR_NAMESPACE"
export SHARDREC_E2E_OPERATOR_DEPLOYMENT="$RELEASE"
cd "$ROOT"
extra=()
[[ -n "${PYTEST_ARGS:-}" ]] && read -r -a extra <<<"$PYTEST_ARGS"
suite_rc=0
log "pytest e2e/operator (external-cluster mode)"
bounded 7200 "$PYTHON" -m pytest -ra --timeout=1800 ${extra[@]+"${extra[@]}"} e2e/operator || suite_rc=$?
traffic_rc=0
log "pytest e2e/kind/test_kind_traffic.py"
bounded 1800 "$PYTHON" -m pytest -ra --timeout=1200 ${extra[@]+"${extra[@]}"} e2e/kind/test_kind_traffic.py || traffic_rc=$?
log "operator suite: exit $suite_rc; traffic check: exit $traffic_rc"
if [[ "$suite_rc" != 0 || "$traffic_rc" != 0 ]]; then
    exit 1
fi
log "passed"
