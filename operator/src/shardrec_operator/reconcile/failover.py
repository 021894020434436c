"""Which shard pods to force-delete because their node is lost (pure; the driver acts on it).

The StatefulSet gap: a StatefulSet will not start a replacement for pod `x-1` until `x-1` is
gone, and a pod on a NotReady or unreachable node is never confirmed gone (no kubelet answers),
so the replica stays down forever. Once the node has been not-Ready for longer than
`spec.failover.forceDeleteAfterSeconds`, the pod is force-deleted (grace period 0, guarded by
its uid) so the StatefulSet recreates it on a healthy node. The clock starts at the node's Ready
condition transition, which the node lifecycle controller records, so an operator restart does
not reset it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shardrec.planning import parse_time
from shardrec_operator.reconcile.cluster_api import Obj


@dataclass(frozen=True)
class ForceDelete:
    """A pod to force-delete, and why (the Event message)."""

    pod: str
    uid: str
    node: str
    message: str


def node_not_ready_since(node: Obj) -> datetime | None:
    """When the node stopped being Ready, or None while it is Ready (or says nothing)."""
    for condition in node.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return None
            since = condition.get("lastTransitionTime")
            return parse_time(since) if since else None
    return None


def pods_to_force_delete(
    pods: list[Obj], nodes: dict[str, Obj], now: datetime, grace_seconds: int
) -> list[ForceDelete]:
    """Unready pods whose node has been not-Ready (or deleted) for more than `grace_seconds`.

    `nodes` maps node name to Node for at least `nodes_to_check(pods)`; a node missing from it no
    longer exists, and its pods are lost at once.
    """
    grace = timedelta(seconds=grace_seconds)
    chosen: list[ForceDelete] = []
    for pod in pods:
        node_name = pod.get("spec", {}).get("nodeName")
        if not node_name or pod_is_ready(pod):
            continue
        meta = pod["metadata"]
        node = nodes.get(node_name)
        if node is None:
            message = f"pod {meta['name']} is bound to node {node_name}, which no longer exists"
        else:
            since = node_not_ready_since(node)
            if since is None or now - since < grace:
                continue
            message = (
                f"pod {meta['name']} is on node {node_name}, not Ready since {since.isoformat()} "
                f"(longer than failover.forceDeleteAfterSeconds={grace_seconds}); force-deleting it so "
                "its StatefulSet recreates it elsewhere"
            )
        chosen.append(ForceDelete(pod=meta["name"], uid=meta["uid"], node=node_name, message=message))
    return chosen


def nodes_to_check(pods: list[Obj]) -> set[str]:
    """Only the nodes of pods that are not Ready can be lost: the rest answer their kubelet."""
    names: set[str] = set()
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if node and not pod_is_ready(pod):
            names.add(node)
    return names


def pod_is_ready(pod: Obj) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    for condition in pod.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False
