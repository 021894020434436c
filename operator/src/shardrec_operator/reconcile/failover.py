"""Which shard pods to force-delete because their node is lost, and which brakes hold (pure).

The StatefulSet gap: a StatefulSet will not start a replacement for pod `x-1` until `x-1` is
gone, and a pod on a NotReady or unreachable node is never confirmed gone (no kubelet answers),
so the replica stays down forever. Force-deleting it (grace period 0, guarded by its uid) lets
the StatefulSet recreate it on a healthy node. Force-deleting a pod whose node is merely cut off
from the control plane can run two copies at once, so every candidate passes named rules, in
this order; the first that decides wins and its name is in the Event:

Reasons to force-delete (only unready pods are candidates; a Ready pod's kubelet answers):
- `out_of_service`: the node carries the `node.kubernetes.io/out-of-service` taint. An
  administrator has confirmed the node is shut down (Kubernetes' non-graceful node shutdown,
  whose pod GC force-deletes at once too), so no grace period and no unhealthy-zone brake.
- `node_deleted`: the Node object is gone; its pods are lost at once (no zone brake either).
- `not_ready_past_grace`: the node has been not-Ready for longer than
  `spec.failover.forceDeleteAfterSeconds`. The clock starts at the node's Ready condition
  transition, which the node lifecycle controller records, so an operator restart does not reset it.

Brakes (reasons not to, each a `FailoverBlocked` Event naming the rule), after the node
lifecycle controller's disruption rules (zones from `topology.kubernetes.io/zone`; nodes without
the label form one zone):
- `all_nodes_not_ready`: no node of any zone is Ready. That is what a control-plane-side
  heartbeat outage looks like (the kubelets run, their reports do not arrive), and the node
  lifecycle controller stops all evictions then too.
- `unhealthy_zone`: the pod's zone is partially disrupted: more than `unhealthy_node_share`
  (its `--unhealthy-zone-threshold`, 0.55) of its nodes and more than 2 of them NotReady while
  some are still Ready, where the node lifecycle controller stops evicting in small clusters.
  A zone that is down entirely is a real zone outage: failed over as usual.
  Both apply to `not_ready_past_grace` only: the taint and a deleted Node are explicit.
- `rate_limit`: at most `max_per_minute` force deletes per cluster in any minute, whatever the
  reason, so a burst (many nodes lost at once, or a wrong rule) moves slowly enough for a human
  to notice. The rest wait for a later pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from shardrec.api.v1alpha1 import RecommenderClusterStatus
from shardrec.planning import parse_time
from shardrec.planning.status import ConditionStatus, merge_condition
from shardrec_operator.reconcile.cluster_api import Obj

OUT_OF_SERVICE_TAINT: Final = "node.kubernetes.io/out-of-service"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
RATE_WINDOW: Final = timedelta(minutes=1)
BRAKE_RECHECK: Final = timedelta(seconds=30)
"""How soon a braked decision is looked at again: a Node's taint or readiness changes no pod."""

CONDITION: Final = "FailoverDegraded"
NODE_ACCESS_DENIED: Final = "NodeAccessDenied"

DeleteRule = Literal["out_of_service", "node_deleted", "not_ready_past_grace"]
BrakeRule = Literal["all_nodes_not_ready", "unhealthy_zone", "rate_limit"]
PARTIAL_DISRUPTION_MIN_NOT_READY: Final = 3
"""A zone needs more than 2 NotReady nodes to count as partially disrupted (as in Kubernetes)."""


@dataclass(frozen=True)
class FailoverLimits:
    """The operator-wide brakes (operator config, not the cluster spec: they protect the cluster)."""

    max_per_minute: int = 6
    unhealthy_node_share: float = 0.55


@dataclass(frozen=True)
class ForceDelete:
    """A pod to force-delete, the rule that chose it, and why (the Event message)."""

    pod: str
    uid: str
    node: str
    rule: DeleteRule
    message: str


@dataclass(frozen=True)
class Blocked:
    """A pod that a rule would force-delete, held back by a brake."""

    pod: str
    node: str
    rule: BrakeRule
    message: str


@dataclass(frozen=True)
class FailoverDecision:
    delete: tuple[ForceDelete, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    recheck_after_seconds: float | None = None
    """When to look again though no watch event may come: a node's grace period ends, or the
    rate limit's minute frees a slot (None: nothing is waiting on time)."""


@dataclass(frozen=True)
class ZoneHealth:
    not_ready: int
    total: int

    def share(self) -> float:
        return self.not_ready / self.total if self.total else 0.0


def node_not_ready_since(node: Obj) -> datetime | None:
    """When the node stopped being Ready, or None while it is Ready (or says nothing)."""
    for condition in node.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return None
            since = condition.get("lastTransitionTime")
            return parse_time(since) if since else None
    return None


def node_is_not_ready(node: Obj) -> bool:
    """Its Ready condition is False or Unknown (a node that reports no condition counts as Ready)."""
    for condition in node.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return bool(condition.get("status") != "True")
    return False


def out_of_service(node: Obj) -> bool:
    taints = node.get("spec", {}).get("taints") or []
    return any(taint.get("key") == OUT_OF_SERVICE_TAINT for taint in taints)


def zone_of(node: Obj) -> str:
    return str((node.get("metadata", {}).get("labels") or {}).get(ZONE_LABEL, ""))


def zone_health(nodes: Sequence[Obj]) -> dict[str, ZoneHealth]:
    """NotReady and total nodes per zone ("" for nodes without a zone label)."""
    totals = Counter(zone_of(node) for node in nodes)
    not_ready = Counter(zone_of(node) for node in nodes if node_is_not_ready(node))
    return {zone: ZoneHealth(not_ready[zone], total) for zone, total in totals.items()}


_OVERRIDE = (
    f"taint a node that is really down with {OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute, "
    "or delete its Node, to fail its pods over"
)


def all_nodes_not_ready(zones: dict[str, ZoneHealth]) -> str | None:
    """Every node NotReady: more likely the control plane's view than every node lost."""
    if not zones or any(health.not_ready < health.total for health in zones.values()):
        return None
    total = sum(health.total for health in zones.values())
    return (
        f"all {total} nodes are NotReady: that looks like a control-plane or network outage, not lost "
        f"nodes, so nothing is force-deleted; {_OVERRIDE}"
    )


def unhealthy_zone(zone: str, health: ZoneHealth, limits: FailoverLimits) -> str | None:
    """The zone is partially disrupted (some nodes Ready, many and most NotReady)."""
    partial = (
        health.not_ready < health.total
        and health.not_ready >= PARTIAL_DISRUPTION_MIN_NOT_READY
        and health.share() > limits.unhealthy_node_share
    )
    if not partial:
        return None
    where = f"zone {zone}" if zone else "the cluster (no zone labels)"
    return (
        f"{health.not_ready} of {health.total} nodes in {where} are NotReady (more than "
        f"{limits.unhealthy_node_share:.0%}): that looks like a network partition, not lost nodes, "
        f"so nothing is force-deleted there; {_OVERRIDE}"
    )


def _rate_limited(recent: Sequence[datetime], now: datetime, limits: FailoverLimits) -> bool:
    return sum(1 for when in recent if now - when < RATE_WINDOW) >= limits.max_per_minute


def decide_failover(
    pods: Sequence[Obj],
    nodes: Sequence[Obj],
    now: datetime,
    *,
    grace_seconds: int,
    limits: FailoverLimits,
    recent_deletes: Sequence[datetime] = (),
) -> FailoverDecision:
    """The force deletes this pass may make and the ones a brake holds back.

    `nodes` is every Node of the cluster (the zone brake needs the healthy ones too); a pod's
    node missing from it no longer exists. `recent_deletes` are the times of this cluster's
    earlier force deletes (the rate limit's memory). No Node at all is no information (not
    "every node deleted"): nothing is decided.
    """
    if not nodes:
        return FailoverDecision()
    by_name = {str(node["metadata"]["name"]): node for node in nodes}
    zones = zone_health(nodes)
    everything_down = all_nodes_not_ready(zones)
    grace = timedelta(seconds=grace_seconds)
    made = [when for when in recent_deletes if now - when < RATE_WINDOW]
    delete: list[ForceDelete] = []
    blocked: list[Blocked] = []
    waits: list[timedelta] = []
    for pod in pods:
        node_name = pod.get("spec", {}).get("nodeName")
        if not node_name or pod_is_ready(pod):
            continue
        meta = pod["metadata"]
        name = str(meta["name"])
        node = by_name.get(node_name)
        rule: DeleteRule
        if node is None:
            rule, message = "node_deleted", f"pod {name} is bound to node {node_name}, which no longer exists"
        elif out_of_service(node):
            rule = "out_of_service"
            message = f"pod {name} is on node {node_name}, which carries the {OUT_OF_SERVICE_TAINT} taint"
        else:
            since = node_not_ready_since(node)
            if since is None:
                continue
            if now - since < grace:
                waits.append(grace - (now - since))
                continue
            if everything_down is not None:
                waits.append(BRAKE_RECHECK)
                blocked.append(
                    Blocked(name, node_name, "all_nodes_not_ready", f"pod {name}: {everything_down}")
                )
                continue
            zone = zone_of(node)
            brake = unhealthy_zone(zone, zones[zone], limits)
            if brake is not None:
                waits.append(BRAKE_RECHECK)
                blocked.append(Blocked(name, node_name, "unhealthy_zone", f"pod {name}: {brake}"))
                continue
            rule = "not_ready_past_grace"
            message = (
                f"pod {name} is on node {node_name}, not Ready since {since.isoformat()} "
                f"(longer than failover.forceDeleteAfterSeconds={grace_seconds})"
            )
        if _rate_limited(made, now, limits):
            waits.append(min(made) + RATE_WINDOW - now)
            blocked.append(
                Blocked(
                    name,
                    node_name,
                    "rate_limit",
                    f"pod {name} on node {node_name} waits: {limits.max_per_minute} force deletes in the "
                    "last minute already (operator setting SHARDREC_OPERATOR_FORCE_DELETES_PER_MINUTE)",
                )
            )
            continue
        made.append(now)
        message += f"; rule {rule}: force-deleting it so its StatefulSet recreates it elsewhere"
        delete.append(ForceDelete(pod=name, uid=meta["uid"], node=node_name, rule=rule, message=message))
    recheck = max(1.0, min(waits).total_seconds()) if waits else None
    return FailoverDecision(tuple(delete), tuple(blocked), recheck)


def needs_nodes(pods: Sequence[Obj]) -> bool:
    """Only unready pods can be on lost nodes: the others answer their kubelet. Without any, the
    Nodes are not even read."""
    return any(pod.get("spec", {}).get("nodeName") and not pod_is_ready(pod) for pod in pods)


def pod_is_ready(pod: Obj) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    for condition in pod.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


# --- the FailoverDegraded condition ---------------------------------------------------------------

FailoverState = Literal[
    "idle", "ok", "NodeAccessDenied", "AllNodesNotReady", "UnhealthyZone", "RateLimited", "Paused"
]
REPORTED_BRAKES: Final[tuple[tuple[BrakeRule, FailoverState], ...]] = (
    ("all_nodes_not_ready", "AllNodesNotReady"),
    ("unhealthy_zone", "UnhealthyZone"),
    ("rate_limit", "RateLimited"),
)


@dataclass(frozen=True)
class FailoverReport:
    """What failover could do this pass, for the FailoverDegraded condition.

    `idle`: nothing to fail over, Nodes not read; `ok`: Nodes read, no brake held anything back;
    the others name what keeps failover from acting (and are the condition's reason)."""

    state: FailoverState
    message: str = ""
    recheck_after_seconds: float | None = None


PAUSED_REPORT: Final = FailoverReport(
    "Paused", "spec.paused is true and spec.failover.whilePaused is false: pods on lost nodes stay"
)


def previously_denied(status: RecommenderClusterStatus) -> bool:
    return any(c.type == CONDITION and c.reason == NODE_ACCESS_DENIED for c in status.conditions)


def with_failover_condition(
    status: RecommenderClusterStatus,
    report: FailoverReport,
    previous: RecommenderClusterStatus,
    now: datetime,
) -> RecommenderClusterStatus:
    """`status` with this pass's FailoverDegraded condition.

    True while something keeps failover from acting (reason NodeAccessDenied, AllNodesNotReady,
    UnhealthyZone, RateLimited or Paused), else False (FailoverAvailable). While NodeAccessDenied stands the
    hands re-read Nodes on every pass (`lost_pods`), so it clears itself once RBAC allows."""
    state: ConditionStatus
    if report.state in ("idle", "ok"):
        state, reason, message = "False", "FailoverAvailable", ""
    else:
        state, reason, message = "True", report.state, report.message
    condition = merge_condition(
        previous.conditions,
        type_=CONDITION,
        status=state,
        reason=reason,
        message=message,
        now=now,
        generation=status.observed_generation,
    )
    others = [c for c in status.conditions if c.type != CONDITION]
    return status.model_copy(update={"conditions": [*others, condition]})


def report_of(decision: FailoverDecision) -> FailoverReport:
    """The condition's view of a decision: the first brake that held something, with its messages."""
    recheck = decision.recheck_after_seconds
    for rule, state in REPORTED_BRAKES:
        held = [entry.message for entry in decision.blocked if entry.rule == rule]
        if held:
            return FailoverReport(state, "; ".join(held), recheck)
    return FailoverReport("ok", "", recheck)
