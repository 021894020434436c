"""The canary inside a planner pass: when the state machine (`canary.advance`) runs, what it does
to the proposals (holds the switch, or fails the candidate), the topology's canary section
(`RouteCanary`), its Events and its condition.

The canary runs only between "the target is Ready and every ready router has loaded it (staged)"
and the switch: routers split traffic only to a layout they all hold, so a user hashed into the
candidate's bucket gets the candidate from whichever router answers. Before that the target
waits as in BlueGreen; a first layout (nothing serves yet) switches at once, having nothing to
be compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from shardrec.api.canary import merged
from shardrec.api.v1alpha1 import (
    CanaryStatus,
    Condition,
    RecommenderClusterSpec,
    RecommenderClusterStatus,
)
from shardrec.planning.actions import RecordEvent, RouteCanary
from shardrec.planning.canary import CanaryDecision, CanaryInput, Verdict, advance, describe_step
from shardrec.planning.fleet import unprepared_routers
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import Observed
from shardrec.planning.records import Records
from shardrec.planning.status import ConditionStatus, Progress, merge_condition

CONDITION: Final = "CanaryRolledBack"


@dataclass(frozen=True)
class CanaryPass:
    """This pass's canary: the verdict (None when no canary decides anything), the new
    `status.canary`, and the RouteCanary to execute (None: leave the topology's section alone)."""

    verdict: Verdict | None
    status: CanaryStatus | None
    route: RouteCanary | None


def _clear(reason: str, unstage: str | None = None) -> RouteCanary:
    return RouteCanary(None, 0, 0, 0.0, 1, reason, unstage)


def canary_pass(
    spec: RecommenderClusterSpec, observed: Observed, records: Records, target: LayoutSpec
) -> CanaryPass:
    """Run the canary state machine when a candidate is due for it; otherwise carry its status."""
    canary = spec.rollout.canary_spec()
    previous = observed.previous_status.canary
    tid = target.id
    running_elsewhere = previous is not None and previous.phase == "Running" and previous.layout != tid
    if spec.paused:
        return CanaryPass(None, previous, None)
    if canary is None:
        if previous is not None and previous.phase == "Running":
            return CanaryPass(None, None, _clear("rollout.strategy is no longer Canary"))
        return CanaryPass(None, None, None)
    serving = observed.router.confirmed_layout
    record = records.by_id[tid]
    own = previous if previous is not None and previous.layout == tid else None
    if record.state == "Failed" and own is not None and own.phase in ("RolledBack", "Aborted"):
        return CanaryPass(None, own, _clear(f"canary of layout {tid} {own.phase.lower()}", unstage=tid))
    candidate_due = (
        serving is not None
        and serving != tid
        and record.state == "Ready"
        and not unprepared_routers(observed.router.routers, tid)
        and observed.router.written_layout in (serving, tid)
    )
    if not candidate_due:
        route = None
        if running_elsewhere:
            route = _clear(f"the canary's candidate {previous.layout} is no longer the target")  # type: ignore[union-attr]
        elif own is not None and own.phase == "Promoted":
            route = _clear(f"layout {tid} was promoted")
        kept = (
            own if own is not None else previous if previous is not None and not running_elsewhere else None
        )
        return CanaryPass(None, kept, route)
    assert serving is not None
    step = own.step if own is not None and own.active_layout == serving else 0
    decision: CanaryDecision = advance(
        CanaryInput(
            canary=canary,
            candidate=tid,
            candidate_version=target.version,
            active=serving,
            previous=previous,
            stats=merged(list(observed.canary_reports), tid, step),
            command=observed.canary_command,
            now=observed.now,
        )
    )
    status = decision.status
    if status.phase == "Running":
        route = RouteCanary(
            target,
            status.step,
            status.weight,
            status.shadow_sample_rate,
            canary.max_inflight_shadow_requests,
            f"canary of layout {tid}: {describe_step(canary, status.step)}",
        )
    elif status.phase == "Promoted":
        route = _clear(f"layout {tid} is promoted")
    else:
        route = _clear(f"canary of layout {tid} {status.phase.lower()}", unstage=tid)
    return CanaryPass(decision.verdict, status, route)


def failure_message(status: CanaryStatus) -> str:
    """The target's Failed message after a rollback or an abort."""
    return f"canary {status.message}"


def progress(status: CanaryStatus | None, tid: str) -> Progress | None:
    """The Progressing condition while a canary step runs (None otherwise)."""
    if status is None or status.layout != tid or status.phase != "Running":
        return None
    return Progress(True, "Canary", status.message)


def events(before: CanaryStatus | None, after: CanaryStatus | None) -> list[RecordEvent]:
    """Events for the canary's transitions (derived from stored state: restart-safe)."""
    if after is None or before == after:
        return []
    what = f"canary of layout {after.layout} (version {after.version}) against {after.active_layout}"
    same = (
        before is not None and before.layout == after.layout and before.active_layout == after.active_layout
    )
    if after.phase == "Running":
        if not same:
            return [RecordEvent("Normal", "CanaryStarted", f"{what}: {after.message}")]
        assert before is not None
        if after.step != before.step:
            return [RecordEvent("Normal", "CanaryStepPassed", f"{what}: {after.message}")]
        return []
    if same and before is not None and before.phase == after.phase:
        return []
    if after.phase == "Promoted":
        return [RecordEvent("Normal", "CanaryPromoted", f"{what}: {after.message}")]
    if after.phase == "RolledBack":
        return [RecordEvent("Warning", "CanaryRolledBack", f"{what}: {after.message}")]
    return [RecordEvent("Warning", "CanaryAborted", f"{what}: {after.message}")]


def with_condition(
    status: RecommenderClusterStatus, previous: RecommenderClusterStatus, now: datetime
) -> RecommenderClusterStatus:
    """`status` with the CanaryRolledBack condition: True while the target's canary was rolled back
    or aborted (with the measured numbers in its message), False once another canary runs or
    passes; absent on clusters that never ran a canary."""
    canary = status.canary
    had = any(entry.type == CONDITION for entry in previous.conditions)
    if canary is None and not had:
        return status
    state: ConditionStatus
    if canary is not None and canary.layout == status.target_layout and canary.phase == "RolledBack":
        state, reason, message = "True", "AnalysisFailed", canary.message
    elif canary is not None and canary.layout == status.target_layout and canary.phase == "Aborted":
        state, reason, message = "True", "Aborted", canary.message
    elif canary is not None:
        state, reason, message = "False", canary.phase, canary.message
    else:
        state, reason, message = "False", "NoCanary", ""
    condition: Condition = merge_condition(
        previous.conditions,
        type_=CONDITION,
        status=state,
        reason=reason,
        message=message,
        now=now,
        generation=status.observed_generation,
    )
    return status.model_copy(update={"conditions": [*status.conditions, condition]})
