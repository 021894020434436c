"""Failover hands: force-delete shard pods stuck on lost nodes (decided by `failover`).

Reading Nodes needs `rbac.nodeAccess` in the chart. Without it the API answers 403, and failover
degrades to "no force-delete" with one Warning Event per operator process; the rest of the pass
(status, Events, the rollout) goes on. A pass that let the 403 escape froze the status whenever a
shard pod was unready: during every rollout and every outage.
"""

from __future__ import annotations

from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.cluster_api import ApiError, Obj
from shardrec_operator.reconcile.failover import nodes_to_check, pods_to_force_delete
from shardrec_operator.reconcile.session import Session

FORBIDDEN = 403


def force_delete_lost_pods(session: Session) -> None:
    pods = session.children.shard_pods()
    nodes: dict[str, Obj] = {}
    for name in sorted(nodes_to_check(pods)):
        try:
            node = session.api.get(kinds.NODE, None, name)
        except ApiError as error:
            if error.status != FORBIDDEN:
                raise
            session.warn_once(
                "FailoverWithoutNodeAccess",
                "the operator may not read Nodes (the chart's rbac.nodeAccess is false), so shard pods "
                "on lost nodes are not force-deleted; they are recreated only when their node "
                f"returns or is deleted ({error.message})",
            )
            return
        if node is not None:
            nodes[name] = node
    grace = session.cluster.spec.failover.force_delete_after_seconds
    by_name = {pod["metadata"]["name"]: pod for pod in pods}
    for choice in pods_to_force_delete(pods, nodes, session.now, grace):
        session.delete(kinds.POD, by_name[choice.pod], grace_period_seconds=0)
        session.event("Warning", "ForceDeletedPod", choice.message)
