"""Failover hands: force-delete shard pods stuck on lost nodes (decided by `failover`).

Nodes are read (one LIST) only when some shard pod is unready, or when the last status said
Nodes could not be read (so a fixed RBAC clears the condition by itself). Reading Nodes needs
`rbac.nodeAccess` in the chart. Without it the API answers 403, and failover degrades to "no
force-delete" with one Warning Event per operator process and the `FailoverDegraded` condition
(reason NodeAccessDenied); the rest of the pass (status, Events, the rollout) goes on. A pass that
let the 403 escape froze the status whenever a shard pod was unready: during every rollout and
every outage.

Each force delete is a `ForceDeletedPod` Warning naming the rule that chose it; each pod a brake
holds back is a `FailoverBlocked` Warning naming the brake (once per process and message, so a
long outage does not post one per pass). The times of the force deletes are kept in the
expectations for the rate limit.
"""

from __future__ import annotations

from typing import Final

from shardrec.api.v1alpha1 import RecommenderClusterStatus
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.cluster_api import ApiError
from shardrec_operator.reconcile.failover import (
    NODE_ACCESS_DENIED,
    FailoverLimits,
    FailoverReport,
    decide_failover,
    needs_nodes,
    previously_denied,
    report_of,
)
from shardrec_operator.reconcile.session import Session

FORBIDDEN: Final = 403


def force_delete_lost_pods(
    session: Session, limits: FailoverLimits, previous: RecommenderClusterStatus
) -> FailoverReport:
    pods = session.children.shard_pods()
    if not needs_nodes(pods) and not previously_denied(previous):
        return FailoverReport("idle")
    try:
        nodes = session.api.list(kinds.NODE, None)
    except ApiError as error:
        if error.status != FORBIDDEN:
            raise
        message = (
            "the operator may not read Nodes (the chart's rbac.nodeAccess is false), so shard pods "
            "on lost nodes are not force-deleted; they are recreated only when their node "
            f"returns or is deleted ({error.message})"
        )
        session.warn_once("FailoverWithoutNodeAccess", message)
        return FailoverReport(NODE_ACCESS_DENIED, message)
    uid = session.cluster.metadata.uid
    decision = decide_failover(
        pods,
        nodes,
        session.now,
        grace_seconds=session.cluster.spec.failover.force_delete_after_seconds,
        limits=limits,
        recent_deletes=session.expectations.force_deletes(uid),
    )
    by_name = {pod["metadata"]["name"]: pod for pod in pods}
    for choice in decision.delete:
        session.delete(kinds.POD, by_name[choice.pod], grace_period_seconds=0)
        session.expectations.record_force_delete(uid, session.now)
        session.event("Warning", "ForceDeletedPod", choice.message)
    for held in decision.blocked:
        session.warn_once("FailoverBlocked", f"rule {held.rule}: {held.message}")
    return report_of(decision)
