"""Pieces of pod specs shared by shard, router and index Job pods.

Every pod passes the `restricted` Pod Security Standard: non-root with a fixed non-zero uid,
RuntimeDefault seccomp, no privilege escalation, all capabilities dropped, and a read-only root
filesystem with an emptyDir on /tmp for the little scratch space Python needs.

Placement: replicas of one shard prefer different nodes (preferred anti-affinity) and spread
across zones with `ScheduleAnyway`: a hard rule would leave replicas Pending on small or
single-zone clusters, which is worse than two replicas sharing a zone.
"""

from __future__ import annotations

import math
from typing import Any, Final

from shardrec.api import v1alpha1 as api
from shardrec.api.commands import SHARD_PRESTOP_PATH

RUN_AS_USER: Final = 10001
HTTP_PORT: Final = 8080
HTTP_PORT_NAME: Final = "http"
STORE_VOLUME: Final = "index-store"
STORE_MOUNT: Final = "/store"
SOURCE_VOLUME: Final = "embeddings-source"
SOURCE_MOUNT: Final = "/source"
TMP_VOLUME: Final = "tmp"
TMP_SIZE_LIMIT: Final = "1Gi"
SHUTDOWN_SECONDS: Final = 15
"""After the preStop drain, how long a server may take to finish its requests in flight on SIGTERM
(the router's graceful shutdown is bounded at 10 s) before the kubelet kills it."""
ZONE_KEY: Final = "topology.kubernetes.io/zone"
HOSTNAME_KEY: Final = "kubernetes.io/hostname"


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tmp_volume() -> dict[str, Any]:
    return {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}


def tmp_mount() -> dict[str, Any]:
    return {"name": TMP_VOLUME, "mountPath": "/tmp"}


def store_claim(spec: api.RecommenderClusterSpec) -> api.PersistentVolumeClaimStore:
    """The index store claim; `validation.kubernetes_spec_errors` rejects specs without one."""
    claim = spec.index.store.persistent_volume_claim
    if claim is None:
        raise ValueError("spec.index.store.persistentVolumeClaim is required on Kubernetes")
    return claim


def store_volume(spec: api.RecommenderClusterSpec, *, read_only: bool) -> dict[str, Any]:
    return {
        "name": STORE_VOLUME,
        "persistentVolumeClaim": {"claimName": store_claim(spec).claim_name, "readOnly": read_only},
    }


def store_mount(spec: api.RecommenderClusterSpec, *, read_only: bool) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": STORE_VOLUME, "mountPath": STORE_MOUNT, "readOnly": read_only}
    sub_path = store_claim(spec).sub_path
    if sub_path:
        mount["subPath"] = sub_path
    return mount


def cluster_dir(cluster: str) -> str:
    """This cluster's folder in the store: claims are namespaced and cluster names unique per
    namespace, so two clusters sharing a claim never touch each other's artifacts."""
    return f"{STORE_MOUNT}/{cluster}"


def layout_dir(cluster: str, layout_id: str) -> str:
    """Where a layout's artifact folder lives inside every pod that mounts the store."""
    return f"{cluster_dir(cluster)}/layouts/{layout_id}"


def resources(requirements: api.ResourceRequirements) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if requirements.requests:
        out["requests"] = dict(sorted(requirements.requests.items()))
    if requirements.limits:
        out["limits"] = dict(sorted(requirements.limits.items()))
    return out


_CPU_SUFFIXES: Final = {"m": 1e-3, "": 1.0, "k": 1e3}


def cpu_cores(quantity: str) -> float | None:
    """A CPU quantity in cores (`500m` -> 0.5, `2` -> 2.0); None for a form CPUs are not given in."""
    text = quantity.strip()
    suffix = text[-1] if text and text[-1].isalpha() else ""
    try:
        number = float(text[: len(text) - len(suffix)])
    except ValueError:
        return None
    factor = _CPU_SUFFIXES.get(suffix)
    return number * factor if factor is not None and number > 0 else None


def cpu_threads(requirements: api.ResourceRequirements) -> int | None:
    """Threads a container's CPU allows: ceil of its CPU limit (what the CFS quota enforces), or
    of its request without a limit; None when neither is set (the process then counts its own
    CPUs, quota included). Passed as `--search-threads` and `--workers`, so a pod limited to 2 CPUs
    on a 64-core node runs 2 search threads, not 64 that the quota throttles."""
    for quantities in (requirements.limits, requirements.requests):
        cores = cpu_cores(quantities["cpu"]) if "cpu" in quantities else None
        if cores is not None:
            return max(1, math.ceil(cores - 1e-9))
    return None


def termination_grace_seconds(spec: api.RecommenderClusterSpec) -> int:
    """terminationGracePeriodSeconds: the preStop drain (`rollout.drainSeconds`) plus the shutdown
    after SIGTERM; the kubelet counts the preStop hook against this period."""
    return spec.rollout.drain_seconds + SHUTDOWN_SECONDS


def shard_pre_stop() -> dict[str, Any]:
    """The shard's preStop: an httpGet on its drain endpoint (no binary needed in the image), which
    fails readiness so routers stop choosing the replica, and returns after `drainSeconds`."""
    return {"preStop": {"httpGet": {"path": SHARD_PRESTOP_PATH, "port": HTTP_PORT_NAME}}}


def router_pre_stop(spec: api.RecommenderClusterSpec) -> dict[str, Any] | None:
    """The router's preStop: the kubelet's own `sleep` action (no binary needed) for `drainSeconds`,
    while the endpoint controller and kube-proxy take the terminating pod out of the Service; no
    HTTP drain endpoint, because the router's port faces clients. None for `drainSeconds: 0`."""
    seconds = spec.rollout.drain_seconds
    return {"preStop": {"sleep": {"seconds": seconds}}} if seconds > 0 else None


def http_probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def http_port() -> dict[str, Any]:
    return {"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"}


def spread_and_anti_affinity(selector: dict[str, str]) -> dict[str, Any]:
    """`affinity` and `topologySpreadConstraints` for pods matching `selector`."""
    return {
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": dict(selector)},
                            "topologyKey": HOSTNAME_KEY,
                        },
                    }
                ]
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": ZONE_KEY,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(selector)},
            }
        ],
    }


def scrape_annotations(spec: api.RecommenderClusterSpec) -> dict[str, str]:
    if not spec.monitoring.scrape_annotations:
        return {}
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }


def image_fields(spec: api.RecommenderClusterSpec) -> dict[str, Any]:
    return {"image": spec.image, "imagePullPolicy": spec.image_pull_policy}
