"""Everything a cluster needs once, whatever its layouts: identities, RBAC, policy and the router.

The topology ConfigMap is not here: what it says is a rollout decision (`reconcile.publish_topology`).
"""

from __future__ import annotations

from shardrec.api import v1alpha1 as api
from shardrec_operator.desired.carry import build_carrier_identity
from shardrec_operator.desired.meta import Manifest
from shardrec_operator.desired.monitoring import build_service_monitor
from shardrec_operator.desired.network import build_shard_network_policy
from shardrec_operator.desired.rbac import (
    build_router_role,
    build_router_role_binding,
    build_router_service_account,
    build_shard_service_account,
)
from shardrec_operator.desired.router import (
    build_router_config,
    build_router_deployment,
    build_router_hpa,
    build_router_pdb,
    build_router_service,
)


def build_cluster_objects(cluster: api.RecommenderCluster, *, carriers: bool = False) -> list[Manifest]:
    """In apply order: identities and permissions before the pods that use them. `carriers`: the
    cluster may run carriers (writes on, or one still runs): their identity, and the policy admits
    them to the shards. Off, every object is exactly as before carriers existed."""
    objects = [
        build_shard_service_account(cluster),
        build_router_service_account(cluster),
        build_router_role(cluster),
        build_router_role_binding(cluster),
        *(build_carrier_identity(cluster) if carriers else []),
        build_shard_network_policy(cluster, carriers=carriers),
        build_router_config(cluster),
        build_router_service(cluster),
        build_router_deployment(cluster),
        build_router_pdb(cluster),
    ]
    optional = (build_router_hpa(cluster), build_service_monitor(cluster))
    return objects + [manifest for manifest in optional if manifest is not None]
