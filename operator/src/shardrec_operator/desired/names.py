"""Names of every child object the operator creates, derived from the cluster name and layout id.

One module so that the builders, the observer (which finds objects by name) and the tests agree.
Shard workloads are `<cluster>-<layoutid>-<shard>` (`shard_workload_name`).
`validation.kubernetes_spec_errors` guarantees the cluster name is a DNS label short enough for
the longest of these, so no name here needs truncating.
"""

from __future__ import annotations

# Kubernetes adds `-<10 hex>` to a StatefulSet's name in its pods' controller-revision-hash label
# (63 characters at most), so StatefulSet names must stay within 52.
MAX_WORKLOAD_NAME_LENGTH = 52


def shard_workload_name(cluster_name: str, layout: str, shard: int) -> str:
    """`<cluster>-<layoutid>-<shard>`: the name of one shard's workload (StatefulSet, Service,
    PDB) of a layout. Raises ValueError naming metadata.name when the result would be too long."""
    if shard < 0:
        raise ValueError(f"shard must be >= 0, got {shard}")
    name = f"{cluster_name}-{layout}-{shard}"
    if len(name) > MAX_WORKLOAD_NAME_LENGTH:
        limit = MAX_WORKLOAD_NAME_LENGTH - len(name) + len(cluster_name)
        raise ValueError(
            f"metadata.name {cluster_name!r} is too long: shard workload name {name!r} exceeds "
            f"{MAX_WORKLOAD_NAME_LENGTH} characters; use at most {limit} characters"
        )
    return name


def router(cluster: str) -> str:
    """Router Deployment, Service, ServiceAccount, Role, RoleBinding and HPA."""
    return f"{cluster}-router"


def router_config(cluster: str) -> str:
    """ConfigMap with the router's RouterSpec + AuthSpec JSON."""
    return f"{cluster}-router-config"


def topology(cluster: str) -> str:
    """ConfigMap holding the topology the router watches."""
    return f"{cluster}-topology"


def shard_service_account(cluster: str) -> str:
    """ServiceAccount of shard pods and index Jobs (no API token mounted)."""
    return f"{cluster}-shard"


def shard_token_secret(cluster: str) -> str:
    """Secret with the shards' admin token (`desired.shard_token`)."""
    return f"{cluster}-shard-token"


def shard_tls_secret(cluster: str) -> str:
    """Secret with the cluster's CA and the shards' certificate (`desired.shard_tls`)."""
    return f"{cluster}-shard-tls"


def shard_tls_server(cluster: str) -> str:
    """The first label of the one DNS name shard certificates hold (`<it>.<namespace>.svc`)."""
    return f"{cluster}-shard"


def shard_network_policy(cluster: str) -> str:
    return f"{cluster}-shards"


def service_monitor(cluster: str) -> str:
    return cluster


def carrier(cluster: str, layout_id: str) -> str:
    """The carrier Deployment and its ConfigMap of a carrying layout (`desired.carry`). Both may be
    DNS subdomains (253 characters; the kubelet cuts a pod's hostname to 63), so the bound on
    shard workload names is the only one that matters."""
    return f"{cluster}-carry-{layout_id}"


def carrier_service_account(cluster: str) -> str:
    """ServiceAccount, Role and RoleBinding of every carrier of the cluster."""
    return f"{cluster}-carrier"


def shard_set(cluster: str, layout_id: str, shard: int) -> str:
    """StatefulSet, headless Service and PodDisruptionBudget of one shard of one layout."""
    return shard_workload_name(cluster, layout_id, shard)


def shard_pod(cluster: str, layout_id: str, shard: int, ordinal: int) -> str:
    return f"{shard_set(cluster, layout_id, shard)}-{ordinal}"


def build_job(cluster: str, layout_id: str) -> str:
    """The index-build Job of a layout."""
    return f"{cluster}-{layout_id}-build"


def artifact_gc_job(cluster: str, layout_id: str) -> str:
    """The Job that deletes one layout's artifacts from the store (retention)."""
    return f"{cluster}-{layout_id}-gc"


def cleanup_job(cluster: str) -> str:
    """The Job that removes index artifacts when the cluster is deleted (if the spec asks)."""
    return f"{cluster}-cleanup"
