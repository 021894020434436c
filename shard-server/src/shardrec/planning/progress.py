"""What a pass is waiting for: the Progressing condition, the requeue delay and its reason.

The hands come back after `requeue_after_seconds`; the most urgent wait wins: a router switch to
confirm (1 s), the hands' work under way (5 s), a layout's rollback window or drain ending, the
rollout deadline. When nothing is awaited the delay is None and only a change (or the hands'
periodic resync) triggers the next pass.
"""

from __future__ import annotations

from datetime import timedelta

from shardrec.api.v1alpha1 import BlockedBy, RecommenderClusterSpec, TemplateRollStatus
from shardrec.planning.actions import (
    DeleteArtifacts,
    DeleteCarrier,
    DeleteLayout,
    EnsureBuild,
    EnsureCarrier,
    EnsureShards,
    LayoutAction,
    StageRouter,
    SwitchRouter,
)
from shardrec.planning.fleet import lagging_routers
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import Observed
from shardrec.planning.records import Records
from shardrec.planning.status import Progress
from shardrec.planning.timestamps import parse_time

POLL_SECONDS = 5.0
"""How soon to look again while waiting on the hands (a build, pods starting, a deletion)."""
ROUTER_POLL_SECONDS = 1.0
"""How soon to look again while a router switch is written but not yet confirmed."""
PAUSED_POLL_SECONDS = 30.0
"""Status refresh while paused."""
CARRY_GATES = frozenset(
    {
        "carry_back_after_carry_into_serving_done",
        "traffic_after_carry_caught_up",
        "switch_after_hand_over",
    }
)
"""The predicates that hold a switch for a carry of logged writes (`shardrec.planning.carrying`)."""


def would_change(action: LayoutAction, observed: Observed) -> bool:
    """Whether executing `action` would change the world (a veto of one that would not is not
    worth reporting: it holds nothing back)."""
    layout = observed.layout(action.layout_id)
    if isinstance(action, EnsureBuild):
        return layout is None or layout.build.state in ("Absent", "Failed")
    if isinstance(action, EnsureShards):
        if layout is None:
            return True
        for number in range(action.layout.shards):
            shard = layout.shard(number)
            if shard is None or shard.desired_replicas != action.replicas_of(number):
                return True
        return False
    if isinstance(action, SwitchRouter | StageRouter):
        return observed.router.written_layout != action.layout_id
    if isinstance(action, DeleteLayout):
        return layout is not None
    if isinstance(action, DeleteArtifacts):
        return action.layout_id not in observed.artifact_deletions
    if isinstance(action, EnsureCarrier):
        carrier = observed.carrier(action.layout_id)
        return carrier is None or (
            carrier.source,
            carrier.hand_over_requested,
            carrier.open_requested,
            carrier.finish_requested,
            carrier.back,
        ) != (action.source.id, action.hand_over, action.open, action.finish, action.back)
    if isinstance(action, DeleteCarrier):
        return observed.carrier(action.layout_id) is not None
    return False


def progress_of(
    *,
    spec: RecommenderClusterSpec,
    observed: Observed,
    records: Records,
    tid: str,
    accepted: list[LayoutAction],
    blocked: tuple[BlockedBy, ...],
    template_roll: TemplateRollStatus | None = None,
    carried_back_from: str | None = None,
) -> Progress:
    """The Progressing condition: whether the spec's layout is still on its way, and what the
    rollout waits for (its reason names it, its message says which shards or layouts).
    `carried_back_from`: the layout whose writes are being carried back into the target (a
    rollback to a kept layout with writes on), until that carry is done."""
    record = records.by_id[tid]
    router = observed.router
    held = f"; blocked by {', '.join(entry.predicate for entry in blocked)}" if blocked else ""
    if spec.paused:
        pending = f"; pending: {blocked[0].reason}" if blocked else ""
        return Progress(False, "Paused", f"spec.paused is true{pending}")
    if record.state == "Failed":
        return Progress(False, "RolloutFailed", record.message)
    refused = [entry.reason for entry in blocked if entry.predicate == "meets_quality_gate"]
    if refused and tid != router.confirmed_layout:
        # Waiting cannot help: the model's metrics are what they are. A new spec is needed.
        return Progress(False, "QualityGateFailed", f"{refused[0]}; the serving layout keeps serving")
    uncarried = [entry.reason for entry in blocked if entry.predicate == "writes_carried_to_new_layout"]
    if uncarried and tid != router.confirmed_layout:
        # Waiting cannot help either: only a spec change (revert, or writes off) moves it.
        return Progress(False, "WritesNotCarried", f"{uncarried[0]}; the serving layout keeps serving")
    if router.switch_in_flight:
        lagging = lagging_routers(router.routers, router.written_layout)
        who = f"routers {', '.join(lagging)}" if lagging else "the router"
        return Progress(
            True,
            "WaitingForRouter",
            f"router topology names layout {router.written_layout}; waiting for {who} to serve it",
        )
    if tid == router.confirmed_layout and template_roll is not None:
        roll = template_roll
        return Progress(
            True,
            "RollingPodTemplate",
            f"layout {roll.layout}: {roll.updated_replicas} of {roll.replicas} replicas run the new pod "
            f"template; rolling shard {roll.shard}{' (surge)' if roll.surge else ''}"
            + (f"; {roll.waiting_for}" if roll.waiting_for else ""),
        )
    if tid == router.confirmed_layout:
        obs = observed.layout(tid)
        short = obs.shards_short_of(spec.replicas_per_shard) if obs else list(range(record.shards))
        if short or any(isinstance(a, EnsureShards) and would_change(a, observed) for a in accepted):
            return Progress(
                True,
                "ScalingReplicas",
                f"shards {short} have fewer than {spec.replicas_per_shard} ready replicas{held}",
            )
        return Progress(False, "RolloutComplete", f"layout {tid} (version {record.version}) serves{held}")
    if record.state == "Building":
        return Progress(True, "WaitingForBuild", f"building layout {tid} (version {record.version}){held}")
    if record.state == "Starting":
        return Progress(True, "WaitingForReplicas", f"layout {tid}: {record.message}{held}")
    if any(isinstance(a, SwitchRouter) for a in accepted):
        return Progress(True, "SwitchingRouter", f"switching the router to layout {tid}")
    if any(isinstance(a, StageRouter) for a in accepted):
        return Progress(True, "PreparingRouters", f"routers are loading layout {tid} before the switch{held}")
    if carried_back_from is not None and any(entry.predicate in CARRY_GATES for entry in blocked):
        return Progress(
            True,
            "CarryingWritesBack",
            f"carrying the item writes layout {carried_back_from} logged back into kept layout {tid} "
            f"before the switch{held}",
        )
    return Progress(True, "SwitchBlocked", f"layout {tid} is ready but the switch is held{held}")


def requeue_after(
    *,
    spec: RecommenderClusterSpec,
    observed: Observed,
    records: Records,
    progress: Progress,
    deleting: bool,
    degraded: bool,
) -> float | None:
    """The most urgent reason to look again, in seconds (None: only a change will need a pass)."""
    now = observed.now
    waits: list[float] = []
    if observed.router.switch_in_flight or progress.reason == "PreparingRouters":
        waits.append(ROUTER_POLL_SECONDS)
    if spec.paused:
        waits.append(PAUSED_POLL_SECONDS)
    elif progress.progressing or degraded:
        waits.append(POLL_SECONDS)
    if deleting:
        waits.append(POLL_SECONDS)
    for layout_id, at in records.delete_after.items():
        if records.by_id[layout_id].state == "Retiring" and at > now:
            waits.append((at - now).total_seconds())
    target = records.by_id[LayoutSpec.from_spec(spec).id]
    # No deadline: only a new spec moves a refused layout.
    refused = progress.reason in ("QualityGateFailed", "WritesNotCarried")
    if target.state in ("Building", "Starting") and not spec.paused and not refused:
        deadline = parse_time(target.created_at) + timedelta(seconds=spec.rollout.timeout_seconds)
        waits.append((deadline - now).total_seconds())
    return max(min(waits), 1.0) if waits else None


def housekeeping_reason(records: Records, accepted: list[LayoutAction]) -> str:
    """Why a settled rollout still wants another pass: deletions under way or layouts kept."""
    deleting = sorted({a.layout_id for a in accepted if isinstance(a, DeleteLayout)})
    if deleting:
        return f"Deleting: waiting for layouts {deleting} to be gone"
    kept = [
        f"layout {entry.name} (version {entry.version}) {entry.message}"
        for entry in records.by_id.values()
        if entry.state == "Retiring"
    ]
    return f"Retiring: {'; '.join(kept)}" if kept else "Waiting: looking again"
