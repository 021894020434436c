"""Failover hands: force-delete shard pods stuck on lost nodes (decided by `failover`)."""

from __future__ import annotations

from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.cluster_api import Obj
from shardrec_operator.reconcile.failover import nodes_to_check, pods_to_force_delete
from shardrec_operator.reconcile.session import Session


def force_delete_lost_pods(session: Session) -> None:
    pods = session.children.shard_pods()
    nodes: dict[str, Obj] = {}
    for name in sorted(nodes_to_check(pods)):
        node = session.api.get(kinds.NODE, None, name)
        if node is not None:
            nodes[name] = node
    grace = session.cluster.spec.failover.force_delete_after_seconds
    by_name = {pod["metadata"]["name"]: pod for pod in pods}
    for choice in pods_to_force_delete(pods, nodes, session.now, grace):
        session.delete(kinds.POD, by_name[choice.pod], grace_period_seconds=0)
        session.event("Warning", "ForceDeletedPod", choice.message)
