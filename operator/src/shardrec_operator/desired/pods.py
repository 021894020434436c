"""Pieces of pod specs shared by shard, router and index Job pods.

Every pod passes the `restricted` Pod Security Standard: non-root with a fixed non-zero uid,
RuntimeDefault seccomp, no privilege escalation, all capabilities dropped, and a read-only root
filesystem with an emptyDir on /tmp for the little scratch space Python needs.

Placement: replicas of one shard prefer different nodes (preferred anti-affinity) and spread
across zones with `ScheduleAnyway`: a hard rule would leave replicas Pending on small or
single-zone clusters, which is worse than two replicas sharing a zone.
"""

from __future__ import annotations

from typing import Any, Final

from shardrec.api import cpu as api_cpu
from shardrec.api import v1alpha1 as api
from shardrec.api.commands import SHARD_PRESTOP_PATH

RUN_AS_USER: Final = 10001
HTTP_PORT: Final = 8080
HTTP_PORT_NAME: Final = "http"
HTTPS_PORT_NAME: Final = "https"
"""The same port number when a shard serves TLS (`desired.shard_tls`): the name says the scheme,
so the ServiceMonitor scrapes each Service with the right one."""
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


# The parsers live in shardrec.api.cpu, so the local runtime counts CPUs the same way.
cpu_cores = api_cpu.cpu_cores
cpu_threads = api_cpu.cpu_threads


def termination_grace_seconds(spec: api.RecommenderClusterSpec) -> int:
    """terminationGracePeriodSeconds: the preStop drain (`rollout.drainSeconds`) plus the shutdown
    after SIGTERM; the kubelet counts the preStop hook against this period."""
    return spec.rollout.drain_seconds + SHUTDOWN_SECONDS


def port_name(tls: bool) -> str:
    return HTTPS_PORT_NAME if tls else HTTP_PORT_NAME


def _get(path: str, tls: bool) -> dict[str, Any]:
    """An httpGet action; with TLS the kubelet speaks HTTPS (and, as for every probe, does not
    verify the certificate)."""
    action: dict[str, Any] = {"path": path, "port": port_name(tls)}
    if tls:
        action["scheme"] = "HTTPS"
    return action


def shard_pre_stop(*, tls: bool = False) -> dict[str, Any]:
    """The shard's preStop: an httpGet on its drain endpoint (no binary needed in the image), which
    fails readiness so routers stop choosing the replica, and returns after `drainSeconds`."""
    return {"preStop": {"httpGet": _get(SHARD_PRESTOP_PATH, tls)}}


def router_pre_stop(spec: api.RecommenderClusterSpec) -> dict[str, Any] | None:
    """The router's preStop: the kubelet's own `sleep` action (no binary needed) for `drainSeconds`,
    while the endpoint controller and kube-proxy take the terminating pod out of the Service; no
    HTTP drain endpoint, because the router's port faces clients. None for `drainSeconds: 0`."""
    seconds = spec.rollout.drain_seconds
    return {"preStop": {"sleep": {"seconds": seconds}}} if seconds > 0 else None


def http_probe(path: str, *, period: int, failures: int, tls: bool = False) -> dict[str, Any]:
    return {
        "httpGet": _get(path, tls),
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def http_port(*, tls: bool = False) -> dict[str, Any]:
    return {"name": port_name(tls), "containerPort": HTTP_PORT, "protocol": "TCP"}


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


def scrape_annotations(spec: api.RecommenderClusterSpec, *, tls: bool = False) -> dict[str, str]:
    if not spec.monitoring.scrape_annotations:
        return {}
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }
    if tls:
        annotations["prometheus.io/scheme"] = "https"
    return annotations


def image_fields(spec: api.RecommenderClusterSpec) -> dict[str, Any]:
    return {"image": spec.image, "imagePullPolicy": spec.image_pull_policy}
