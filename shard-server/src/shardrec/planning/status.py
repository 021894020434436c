"""The status a human can trust, computed by one pure function from the facts of a pass.

Conditions follow the Kubernetes convention: `lastTransitionTime` changes only when a
condition's status (True/False/Unknown) changes, never when only its reason or message does, so
"Ready since ..." means what it says. The phase is a one-word summary with a fixed precedence:
an outage (Degraded) outranks everything, then a freeze (Paused), then a failed rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from shardrec.api.v1alpha1 import (
    BlockedBy,
    Condition,
    ConditionType,
    LayoutStatus,
    Phase,
    RecommenderClusterStatus,
    RouterFleetStatus,
    ShardStatus,
    TemplateRollStatus,
)
from shardrec.planning.timestamps import format_time

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Progress:
    """The Progressing condition: whether a change is under way, and what it waits for."""

    progressing: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class StatusFacts:
    """Everything the status says, as decided by the planner in one pass."""

    generation: int
    paused: bool
    target_layout: str
    target_version: str
    serving_layout: str | None
    layouts: tuple[LayoutStatus, ...]
    serving_shards: tuple[ShardStatus, ...]
    router_endpoint: str
    blocked_by: tuple[BlockedBy, ...]
    progress: Progress
    routers: RouterFleetStatus = field(default_factory=RouterFleetStatus)
    routers_report: bool = False
    serving_replicas_per_shard: int = 0
    """Replicas per shard the serving layout's workloads run now (the fewest over its shards)."""
    """Whether routers acknowledge what they serve (then Ready needs one serving the active layout)."""
    template_roll: TemplateRollStatus | None = None

    def record(self, layout: str | None) -> LayoutStatus | None:
        """The layout record with this id, or None."""
        return next((entry for entry in self.layouts if entry.name == layout), None)

    def no_router_serves(self) -> bool:
        """Routers report, a layout serves, and not one ready router answers from it."""
        return self.routers_report and self.serving_layout is not None and self.routers.serving_active == 0

    def unavailable_shards(self) -> list[int]:
        """Shards of the serving layout with no ready replica (empty when nothing serves)."""
        return [entry.shard for entry in self.serving_shards if entry.ready_replicas == 0]


def compute_phase(facts: StatusFacts) -> Phase:
    """One word for the cluster; precedence Degraded > Paused > Failed > Ready > Building >
    Rolling > Pending."""
    target = facts.record(facts.target_layout)
    if facts.serving_layout is not None and facts.unavailable_shards():
        return "Degraded"
    if facts.no_router_serves():
        return "Degraded"
    if facts.paused:
        return "Paused"
    if target is not None and target.state == "Failed":
        return "Failed"
    if facts.serving_layout is not None and facts.serving_layout == facts.target_layout:
        return "Ready"
    if facts.progress.reason == "WritesNotCarried":
        return "Ready"  # the serving layout serves on; the refused target is not being built
    if target is not None and target.state == "Building":
        return "Building"
    if target is not None and target.state in ("Starting", "Ready"):
        return "Rolling"
    return "Pending"


def merge_condition(
    previous: Sequence[Condition],
    *,
    type_: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> Condition:
    """A condition whose lastTransitionTime is kept from `previous` when its status is unchanged."""
    before = next((entry for entry in previous if entry.type == type_), None)
    since = (
        before.last_transition_time if before is not None and before.status == status else format_time(now)
    )
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:4096],
        last_transition_time=since,
        observed_generation=generation,
    )


def _ready_condition(facts: StatusFacts) -> tuple[ConditionStatus, str, str]:
    serving = facts.record(facts.serving_layout)
    if facts.serving_layout is None:
        return "False", "NoServingLayout", "no layout serves yet"
    unavailable = facts.unavailable_shards()
    if serving is None or not facts.serving_shards:
        return "False", "ServingLayoutMissing", f"serving layout {facts.serving_layout} does not exist"
    if unavailable:
        return "False", "ShardsUnavailable", f"shards {unavailable} have no ready replica"
    if facts.routers_report and facts.routers.serving_active == 0:
        return (
            "False",
            "NoRouterServes",
            f"no ready router serves layout {facts.serving_layout} "
            f"({facts.routers.ready_replicas} routers ready)",
        )
    return (
        "True",
        "Serving",
        f"layout {serving.name} (version {serving.version}) serves all {serving.shards} shards",
    )


def _degraded_condition(facts: StatusFacts) -> tuple[ConditionStatus, str, str]:
    unavailable = facts.unavailable_shards()
    if facts.serving_layout is not None and unavailable:
        return (
            "True",
            "ShardsUnavailable",
            f"shards {unavailable} of serving layout {facts.serving_layout} have no ready replica; "
            "their replicas are being recreated",
        )
    if facts.no_router_serves():
        return (
            "True",
            "NoRouterServes",
            f"no ready router serves layout {facts.serving_layout} ({facts.routers.ready_replicas} ready)",
        )
    return "False", "AllShardsAvailable", ""


def compute_status(
    facts: StatusFacts, previous: RecommenderClusterStatus, now: datetime
) -> RecommenderClusterStatus:
    """The full new status of one pass."""
    serving = facts.record(facts.serving_layout)
    ready = _ready_condition(facts)
    degraded = _degraded_condition(facts)
    progress = facts.progress
    progressing: ConditionStatus = "True" if progress.progressing else "False"
    computed: list[tuple[ConditionType, ConditionStatus, str, str]] = [
        ("Ready", *ready),
        ("Progressing", progressing, progress.reason, progress.message),
        ("Degraded", *degraded),
    ]
    conditions = [
        merge_condition(
            previous.conditions,
            type_=type_,
            status=status,
            reason=reason,
            message=message,
            now=now,
            generation=facts.generation,
        )
        for type_, status, reason, message in computed
    ]
    return RecommenderClusterStatus(
        phase=compute_phase(facts),
        observed_generation=facts.generation,
        active_version=serving.version if serving is not None else "",
        target_version=facts.target_version,
        active_layout=facts.serving_layout or "",
        target_layout=facts.target_layout,
        layouts=list(facts.layouts),
        shards=list(facts.serving_shards),
        ready_replicas=sum(entry.ready_replicas for entry in facts.serving_shards),
        replicas=sum(entry.replicas for entry in facts.serving_shards),
        replicas_per_shard=facts.serving_replicas_per_shard,
        router_endpoint=facts.router_endpoint,
        topology_revision=previous.topology_revision,
        topology_epoch=previous.topology_epoch,
        routers=facts.routers,
        blocked_by=list(facts.blocked_by),
        template_roll=facts.template_roll,
        conditions=conditions,
    )
