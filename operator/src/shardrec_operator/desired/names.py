"""Names of every child object the operator creates, derived from the cluster name and layout id.

One module so that the builders, the observer (which finds objects by name) and the tests agree.
Shard workloads use the planner's `shard_workload_name` (`<cluster>-<layoutid>-<shard>`), shared
with the local runtime. `validation.kubernetes_spec_errors` guarantees the cluster name is a DNS
label short enough for the longest of these, so no name here needs truncating.
"""

from __future__ import annotations

from shardrec.planning import shard_workload_name


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


def shard_network_policy(cluster: str) -> str:
    return f"{cluster}-shards"


def service_monitor(cluster: str) -> str:
    return cluster


def shard_set(cluster: str, layout_id: str, shard: int) -> str:
    """StatefulSet, headless Service and PodDisruptionBudget of one shard of one layout."""
    return shard_workload_name(cluster, layout_id, shard)


def shard_pod(cluster: str, layout_id: str, shard: int, ordinal: int) -> str:
    return f"{shard_set(cluster, layout_id, shard)}-{ordinal}"


def build_job(cluster: str, layout_id: str) -> str:
    """The index-build Job of a layout."""
    return f"{cluster}-{layout_id}-build"


def cleanup_job(cluster: str) -> str:
    """The Job that removes index artifacts when the cluster is deleted (if the spec asks)."""
    return f"{cluster}-cleanup"
