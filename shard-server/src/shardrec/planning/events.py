"""Events derived from what changed between the previous status and the new one.

Deriving Events from persisted state (rather than from in-memory history) keeps them right
across restarts: a fresh process compares the same two statuses and announces the same
transitions, and a pass that changes nothing announces nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardrec.api.v1alpha1 import Condition, LayoutStatus, RecommenderClusterStatus
from shardrec.planning.actions import DeleteLayout, EventType, LayoutAction, RecordEvent, SwitchRouter

TIMEOUT_PREFIX = "not built and ready within"
"""How the message of a target abandoned by `rollout.timeoutSeconds` while building or starting begins."""
CARRY_TIMEOUT_PREFIX = "not carried within"
"""... and of one whose carry of logged writes still waited (`carrying.timed_carry_wait`)."""


def event_reason(predicate: str) -> str:
    """CamelCase Event reason of a predicate name: never_delete_serving_layout ->
    NeverDeleteServingLayout."""
    return "".join(part.capitalize() for part in predicate.split("_"))


def _layout_event(before: LayoutStatus | None, after: LayoutStatus) -> RecordEvent | None:
    if before is not None and before.state == after.state:
        return None
    what = f"layout {after.name} (version {after.version}, {after.shards} shards)"
    if after.state == "Building":
        return RecordEvent("Normal", "BuildingLayout", f"building {what}")
    if after.state == "Starting":
        return RecordEvent("Normal", "StartingShards", f"{what} is built; starting its shards")
    if after.state == "Ready":
        return RecordEvent("Normal", "LayoutReady", f"{what}: {after.message}")
    if after.state == "Serving":
        return RecordEvent("Normal", "Switched", f"the router serves {what}")
    if after.state == "Retiring":
        return RecordEvent("Normal", "RetiringLayout", f"{what} stopped serving; {after.message}")
    timed_out = after.message.startswith((TIMEOUT_PREFIX, CARRY_TIMEOUT_PREFIX))
    reason = "RolloutTimedOut" if timed_out else "LayoutFailed"
    return RecordEvent("Warning", reason, f"{what} abandoned: {after.message}")


def _condition(status: RecommenderClusterStatus, type_: str) -> Condition | None:
    return next((entry for entry in status.conditions if entry.type == type_), None)


def _paused(status: RecommenderClusterStatus) -> bool:
    progressing = _condition(status, "Progressing")
    return progressing is not None and progressing.reason == "Paused"


def _artifact_events(before: RecommenderClusterStatus, after: RecommenderClusterStatus) -> list[RecordEvent]:
    """One Event per artifact deletion ordered, done, or failed (from `status.storedLayouts`)."""
    events: list[RecordEvent] = []
    previous = {entry.name: entry for entry in before.stored_layouts}
    current = {entry.name for entry in after.stored_layouts}
    for entry in after.stored_layouts:
        old = previous.get(entry.name)
        what = f"the artifacts of layout {entry.name} (version {entry.version})"
        if entry.deleting and (old is None or not old.deleting):
            events.append(RecordEvent("Normal", "DeletingArtifacts", f"deleting {what}: {entry.message}"))
        elif entry.deleting and old is not None and entry.message != old.message:
            events.append(RecordEvent("Warning", "ArtifactDeletionFailed", f"{what}: {entry.message}"))
    for name, old in previous.items():
        if name not in current and old.deleting:
            events.append(
                RecordEvent("Normal", "ArtifactsDeleted", f"deleted the artifacts of layout {name}")
            )
    return events


def transition_events(
    cluster_name: str,
    before: RecommenderClusterStatus,
    after: RecommenderClusterStatus,
    accepted: Sequence[LayoutAction],
) -> list[RecordEvent]:
    """Events for the transitions from `before` to `after` and for the disruptive actions taken."""
    events: list[RecordEvent] = []
    previous = {entry.name: entry for entry in before.layouts}
    for entry in after.layouts:
        event = _layout_event(previous.get(entry.name), entry)
        if event is not None:
            events.append(event)
    if after.routers.stalled and not before.routers.stalled:
        events.append(
            RecordEvent(
                "Warning",
                "RouterSwitchStalled",
                f"routers {', '.join(after.routers.lagging)} have not served layout {after.target_layout} "
                f"since {after.routers.lagging_since}; the old layout is kept until they do",
            )
        )
    if before.routers.stalled and not after.routers.stalled:
        events.append(
            RecordEvent("Normal", "RouterSwitchCompleted", "every ready router serves the same layout")
        )
    failed = {entry.name for entry in after.layouts if entry.state == "Failed"}
    for action in accepted:
        if isinstance(action, SwitchRouter):
            events.append(
                RecordEvent(
                    "Normal",
                    "SwitchingRouter",
                    f"switching the router of {cluster_name} from layout {before.active_layout or 'none'} "
                    f"to {action.layout_id} (version {action.layout.version}): {action.reason}",
                )
            )
        if isinstance(action, DeleteLayout) and action.layout_id not in failed:
            old = previous.get(action.layout_id)
            if old is None or not old.deleting:
                events.append(
                    RecordEvent(
                        "Normal", "DeletingLayout", f"deleting layout {action.layout_id}: {action.reason}"
                    )
                )
    events.extend(_artifact_events(before, after))
    known = {entry.predicate for entry in before.blocked_by}
    for blocked in after.blocked_by:
        if blocked.predicate not in known:
            kind: EventType = "Normal" if blocked.predicate == "paused" else "Warning"
            events.append(RecordEvent(kind, event_reason(blocked.predicate), blocked.reason))
    was, now = _condition(before, "Degraded"), _condition(after, "Degraded")
    was_degraded = was is not None and was.status == "True"
    if now is not None and now.status == "True" and not was_degraded:
        events.append(RecordEvent("Warning", "ShardsUnavailable", now.message))
    if was_degraded and now is not None and now.status != "True":
        events.append(
            RecordEvent("Normal", "ShardsRecovered", "every shard of the serving layout is ready again")
        )
    was_paused = _paused(before)
    is_paused = _paused(after)
    if is_paused and not was_paused:
        events.append(RecordEvent("Normal", "Paused", "spec.paused is true: topology changes are frozen"))
    if was_paused and not is_paused:
        events.append(RecordEvent("Normal", "Resumed", "spec.paused is false: topology changes resume"))
    return events
