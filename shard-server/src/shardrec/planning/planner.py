"""`plan(cluster_name, spec, observed) -> Plan`: one pass of the rollout state machine.

Rolling an index version and rebalancing to a new shard count are the same motion: build the
target layout off the serving path, start its shards, wait until every shard has its ready
replicas, switch the router in one step, keep the old layout for the rollback window, then
delete it. Changing replicasPerShard only scales the layouts that run. A change of the pod
template alone (image, resources, ...) keeps the layout and is rolled through its pods, one shard
at a time (`rolls`). With item writes on, hands that run carriers get the serving layout's
logged writes carried into the new layout around those steps (`carrying`: the cut before the
build, caught up before the stage, the hand-over before the switch, done before the old layout
goes).

A pass: decide each layout's record (`records`), propose the actions the spec implies, let the
named safety predicates veto (`predicates`), apply the rollout timeout, derive Events from the
state transitions, and compute the status (`status`). Because the only memory is the previous
status plus the observed world, a process restarted at any step makes the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from shardrec.api.v1alpha1 import (
    BlockedBy,
    LayoutStatus,
    RecommenderClusterSpec,
    RecommenderClusterStatus,
    ShardStatus,
    TemplateRollStatus,
)
from shardrec.planning import canary_pass
from shardrec.planning.actions import (
    Action,
    DeleteArtifacts,
    DeleteCarrier,
    DeleteLayout,
    EnsureBuild,
    EnsureCarrier,
    EnsureShards,
    LayoutAction,
    ReplaceShardPod,
    RetireLayout,
    StageRouter,
    SwitchRouter,
)
from shardrec.planning.carrying import (
    Carry,
    carries_of,
    carry_events,
    carry_statuses,
    propose_carriers,
    timed_carry_wait,
)
from shardrec.planning.events import CARRY_TIMEOUT_PREFIX, TIMEOUT_PREFIX, transition_events
from shardrec.planning.fleet import acknowledging, fleet_status, lagging_routers
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import Observed
from shardrec.planning.predicates import (
    PREDICATES,
    PredicateContext,
    first_veto,
    switch_unconfirmed_reason,
)
from shardrec.planning.progress import (
    PAUSED_POLL_SECONDS,
    POLL_SECONDS,
    ROUTER_POLL_SECONDS,
    housekeeping_reason,
    progress_of,
    requeue_after,
    would_change,
)
from shardrec.planning.records import Records, decide_records, make_record
from shardrec.planning.retention import next_expiry, propose_deletions, tracked_layouts, with_deletions
from shardrec.planning.rolls import NO_ROLL, RollProposal, propose_roll, roll_status
from shardrec.planning.status import StatusFacts, compute_status
from shardrec.planning.timestamps import parse_time

_A = TypeVar("_A", bound=Action)


@dataclass(frozen=True)
class Plan:
    """The outcome of one pass: what to do, what to write as status, when to come back.

    The hands execute `actions` in order (layout actions first, then the RecordEvents), and
    write `status` LAST, only when every action went through: Events and state transitions are
    derived from the stored status, so a status written before its actions ran could lose them,
    while a pass repeated after a failed action just does the same again.
    """

    actions: tuple[Action, ...]
    status: RecommenderClusterStatus
    requeue_after_seconds: float | None
    waiting_reason: str

    def of_type(self, kind: type[_A]) -> tuple[_A, ...]:
        """The actions of one type, in order."""
        return tuple(action for action in self.actions if isinstance(action, kind))


@dataclass(frozen=True)
class _Verdict:
    action: LayoutAction
    veto: tuple[str, str] | None


def _rolls(spec: RecommenderClusterSpec, observed: Observed, target: LayoutSpec) -> dict[str, RollProposal]:
    """The template roll of each layout that runs shards for the spec: the target, and the
    serving layout while it still serves."""
    serving = observed.router.confirmed_layout
    rolls: dict[str, RollProposal] = {}
    for layout_id in dict.fromkeys((target.id, serving)):
        obs = observed.layout(layout_id)
        if layout_id is None or obs is None or obs.build.state != "Succeeded":
            continue
        rolls[layout_id] = propose_roll(obs.spec, obs, spec.replicas_per_shard, serving=layout_id == serving)
    return rolls


def _shards(layout: LayoutSpec, replicas: int, reason: str, roll: RollProposal) -> list[LayoutAction]:
    """EnsureShards (with the roll's surge) followed by the roll's pod replacements."""
    surge = (
        f"; shards {sorted(roll.surge)} surge by one while their only replica is replaced"
        if roll.surge
        else ""
    )
    return [EnsureShards(layout, replicas, reason + surge, roll.surge), *roll.replace]


def _propose(
    spec: RecommenderClusterSpec,
    observed: Observed,
    records: Records,
    target: LayoutSpec,
    rolls: dict[str, RollProposal],
) -> list[LayoutAction]:
    """What the spec implies for every layout, before any safety rule is asked."""
    tid = target.id
    replicas = spec.replicas_per_shard
    serving = observed.router.confirmed_layout
    record = records.by_id[tid]
    obs = observed.layout(tid)
    proposals: list[LayoutAction] = []
    if obs is None or obs.build.state != "Succeeded":
        reason = f"layout {tid} (version {target.version}, {target.shards} shards) is the spec's target"
        proposals.append(EnsureBuild(target, record.created_at, reason))
    else:
        reason = f"spec asks for {replicas} replicas per shard"
        proposals.extend(_shards(target, replicas, reason, rolls.get(tid, NO_ROLL)))
    if record.state == "Ready" and observed.router.written_layout != tid:
        reason = f"every shard of layout {tid} has {replicas} ready replicas"
        proposals.append(StageRouter(target, f"{reason}: routers load it before the switch"))
        proposals.append(SwitchRouter(target, reason))
    if record.state == "Failed" and obs is not None:
        proposals.append(DeleteLayout(target, f"abandoned: {record.message}"))
    if serving is not None and serving != tid and serving in records.specs:
        serving_obs = observed.layout(serving)
        if serving_obs is not None and serving_obs.build.state == "Succeeded":
            reason = f"serving layout keeps {replicas} replicas per shard"
            proposals.extend(_shards(records.specs[serving], replicas, reason, rolls.get(serving, NO_ROLL)))
    for layout_id, entry in records.by_id.items():
        if layout_id in (tid, serving):
            continue
        layout = records.specs[layout_id]
        if entry.state == "Retiring":
            at = records.delete_after[layout_id]
            if observed.now >= at:
                reason = f"stopped serving at {entry.state_since}; its drain or rollback window is over"
                proposals.append(DeleteLayout(layout, reason))
            else:
                proposals.append(RetireLayout(layout, at, f"stopped serving at {entry.state_since}"))
        elif entry.state == "Failed":
            proposals.append(DeleteLayout(layout, f"abandoned: {entry.message}"))
        elif layout_id in records.superseded:
            proposals.append(DeleteLayout(layout, f"superseded by layout {tid} before it served"))
    return proposals


def _protected(observed: Observed, records: Records, tid: str) -> set[str]:
    """Layouts whose artifacts retention keeps whatever its numbers say (see `retention`)."""
    router = observed.router
    named = {tid, router.written_layout, router.confirmed_layout} - {None}
    return {str(i) for i in named} | set(records.by_id) | {layout.id for layout in observed.layouts}


def _carried_builds(proposals: list[LayoutAction], carries: Mapping[str, Carry]) -> list[LayoutAction]:
    """The builds of carrying layouts fold in their carry folder (`EnsureBuild.carry_from`)."""
    return [
        replace(action, carry_from=carries[action.layout_id].source)
        if isinstance(action, EnsureBuild)
        and action.layout_id in carries
        and not carries[action.layout_id].back
        else action
        for action in proposals
    ]


def _judge(
    spec: RecommenderClusterSpec,
    observed: Observed,
    records: Records,
    target: LayoutSpec,
    rolls: dict[str, RollProposal],
    *,
    carries: Mapping[str, Carry],
) -> list[_Verdict]:
    ctx = PredicateContext(spec, observed, records.by_id, target.id, carries)
    proposals: list[LayoutAction] = _carried_builds(_propose(spec, observed, records, target, rolls), carries)
    tracked = tracked_layouts(observed)
    proposals += propose_deletions(spec, observed, tracked, _protected(observed, records, target.id))
    verdicts = [_Verdict(action, first_veto(ctx, action)) for action in proposals]
    awaits_hand_over = any(
        isinstance(v.action, SwitchRouter)
        and v.action.layout_id == target.id
        and v.veto is not None
        and v.veto[0] == "switch_after_hand_over"
        for v in verdicts
    )
    specs = {**records.specs, target.id: target}
    for layout in observed.layouts:
        specs.setdefault(layout.id, layout.spec)
    carriers = propose_carriers(
        observed=observed,
        carries=carries,
        specs=specs,
        target=target,
        target_failed=records.by_id[target.id].state == "Failed",
        switch_awaits_hand_over=awaits_hand_over,
    )
    return verdicts + [_Verdict(action, first_veto(ctx, action)) for action in carriers]


def _carried_back_from(carries: Mapping[str, Carry], tid: str) -> str | None:
    """The layout whose writes are carried back into the target, while that carry is not done."""
    carry = carries.get(tid)
    return carry.source if carry is not None and carry.back and not carry.done else None


def _template_roll(
    spec: RecommenderClusterSpec, observed: Observed, rolls: dict[str, RollProposal], verdicts: list[_Verdict]
) -> TemplateRollStatus | None:
    """`status.templateRoll` of the serving layout, naming the roll predicate that holds its next step."""
    serving = observed.router.confirmed_layout
    roll = rolls.get(serving) if serving is not None else None
    obs = observed.layout(serving)
    if roll is None or obs is None:
        return None
    waiting = roll.waiting
    for verdict in verdicts:
        if (
            isinstance(verdict.action, ReplaceShardPod)
            and verdict.action.layout_id == serving
            and verdict.veto
        ):
            waiting = f"{verdict.veto[0]}: {verdict.veto[1]}"
            break
    return roll_status(obs.spec, obs, spec.replicas_per_shard, roll, waiting)


def _blocked_by(verdicts: list[_Verdict], observed: Observed) -> tuple[BlockedBy, ...]:
    reasons: dict[str, list[str]] = {}
    unconfirmed = switch_unconfirmed_reason(observed)
    if unconfirmed is not None and lagging_routers(observed.router.routers, observed.router.written_layout):
        # Routers that lag hold back the old layout's retirement even before any action is vetoed.
        reasons["wait_for_router_to_confirm_switch"] = [unconfirmed]
    for verdict in verdicts:
        if verdict.veto is not None and would_change(verdict.action, observed):
            name, reason = verdict.veto
            if reason not in reasons.setdefault(name, []):
                reasons[name].append(reason)
    order = [predicate.name for predicate in PREDICATES]
    return tuple(
        BlockedBy(predicate=name, reason="; ".join(reasons[name]))
        for name in sorted(reasons, key=order.index)
    )


def _apply_timeout(
    *,
    spec: RecommenderClusterSpec,
    observed: Observed,
    records: Records,
    target: LayoutSpec,
    verdicts: list[_Verdict],
    carries: Mapping[str, Carry],
) -> Records | None:
    """Records with the target marked Failed when the timeout predicate vetoed it, else None."""
    tid = target.id
    timed_out = any(
        v.veto is not None and v.veto[0] == "rollout_within_timeout" and v.action.layout_id == tid
        for v in verdicts
    )
    if not timed_out:
        return None
    before = records.by_id[tid]
    waiting = timed_carry_wait(carries.get(tid)) if before.state == "Ready" else None
    if waiting is not None:
        timeout = spec.rollout.timeout_seconds
        message = f"{CARRY_TIMEOUT_PREFIX} {timeout}s (rollout.timeoutSeconds) of turning Ready: {waiting}"
    else:
        message = (
            f"{TIMEOUT_PREFIX} {spec.rollout.timeout_seconds}s (rollout.timeoutSeconds); "
            f"it was {before.state}: {before.message}"
        )
    failed = make_record(
        tid,
        "Failed",
        message,
        spec=target,
        previous=before,
        observed_layout=observed.layout(tid),
        now=observed.now,
    )
    return replace(records, by_id={**records.by_id, tid: failed})


def _fail_target(records: Records, target: LayoutSpec, observed: Observed, message: str) -> Records:
    """Records with the target marked Failed (a rolled-back or aborted canary): it is not retried
    until the spec changes, and its layout is deleted like any abandoned one."""
    before = records.by_id[target.id]
    failed = make_record(
        target.id,
        "Failed",
        message,
        spec=target,
        previous=before,
        observed_layout=observed.layout(target.id),
        now=observed.now,
    )
    return replace(records, by_id={**records.by_id, target.id: failed})


def _mark_deleting(records: Records, accepted: list[LayoutAction]) -> Records:
    """Records with every layout whose deletion was accepted marked `deleting`, saying why; a
    layout already marked keeps its first reason."""
    marked: dict[str, LayoutStatus] = {}
    for action in accepted:
        if isinstance(action, DeleteLayout):
            entry = marked.get(action.layout_id, records.by_id[action.layout_id])
            # A failed layout keeps its failure as its message; it was announced as abandoned.
            if entry.state != "Failed" and not entry.deleting:
                marked[action.layout_id] = entry.model_copy(
                    update={"message": f"deleting: {action.reason}", "deleting": True}
                )
    return replace(records, by_id={**records.by_id, **marked}) if marked else records


def _serving_shards(
    spec: RecommenderClusterSpec, observed: Observed, records: Records
) -> tuple[ShardStatus, ...]:
    serving = observed.router.confirmed_layout
    record = records.by_id.get(serving) if serving is not None else None
    if record is None:
        return ()
    obs = observed.layout(serving)
    shards = []
    for number in range(record.shards):
        entry = obs.shard(number) if obs is not None else None
        ready = entry.ready_replicas if entry is not None else 0
        shards.append(ShardStatus(shard=number, ready_replicas=ready, replicas=spec.replicas_per_shard))
    return tuple(shards)


def _serving_replicas_per_shard(observed: Observed) -> int:
    """Replicas per shard the serving layout's workloads run now: the fewest over its shards
    (0 when nothing serves). The `scale` subresource reports it as the current count."""
    serving = observed.router.confirmed_layout
    obs = observed.layout(serving) if serving is not None else None
    if obs is None or not obs.shards:
        return 0
    return min(entry.desired_replicas for entry in obs.shards)


def _ordered(records: Records, tid: str, serving: str | None) -> tuple[LayoutStatus, ...]:
    """Serving first, then the target, then the rest, most recently changed first."""
    head = [records.by_id[i] for i in dict.fromkeys((serving, tid)) if i is not None and i in records.by_id]
    rest = [entry for entry in records.by_id.values() if entry.name not in (serving, tid)]
    rest.sort(key=lambda entry: entry.name)
    rest.sort(key=lambda entry: parse_time(entry.state_since), reverse=True)
    return (*head, *rest)


def plan(cluster_name: str, spec: RecommenderClusterSpec, observed: Observed) -> Plan:
    """One pass: the actions to execute (in order), the complete new status, and when to come
    back (`requeue_after_seconds`, None when nothing is awaited) with why (`waiting_reason`)."""
    target = LayoutSpec.from_spec(spec)
    tid = target.id
    records = decide_records(spec, observed)
    rolls = _rolls(spec, observed, target)
    carries = carries_of(spec, observed, records.by_id, target)
    verdicts = _judge(spec, observed, records, target, rolls, carries=carries)
    timed_out = _apply_timeout(
        spec=spec, observed=observed, records=records, target=target, verdicts=verdicts, carries=carries
    )
    if timed_out is not None:
        records = timed_out
        verdicts = _judge(spec, observed, records, target, rolls, carries=carries)
    canary = canary_pass.canary_pass(spec, observed, records, target)
    if canary.verdict in ("hold", "advance"):
        verdicts = [
            v for v in verdicts if not (isinstance(v.action, SwitchRouter) and v.action.layout_id == tid)
        ]
    elif canary.verdict in ("rollback", "abort") and canary.status is not None:
        records = _fail_target(records, target, observed, canary_pass.failure_message(canary.status))
        verdicts = _judge(spec, observed, records, target, rolls, carries=carries)
    accepted = [v.action for v in verdicts if v.veto is None]
    proposed = [v.action for v in verdicts]
    records = _mark_deleting(records, accepted)
    blocked = _blocked_by(verdicts, observed)
    serving = observed.router.confirmed_layout
    template_roll = _template_roll(spec, observed, rolls, verdicts)
    progress = progress_of(
        spec=spec,
        observed=observed,
        records=records,
        tid=tid,
        accepted=accepted,
        blocked=blocked,
        template_roll=template_roll,
        carried_back_from=_carried_back_from(carries, tid),
    )
    progress = canary_pass.progress(canary.status, tid) or progress
    facts = StatusFacts(
        generation=observed.generation,
        paused=spec.paused,
        target_layout=tid,
        target_version=target.version,
        serving_layout=serving,
        layouts=_ordered(records, tid, serving),
        serving_shards=_serving_shards(spec, observed, records),
        serving_replicas_per_shard=_serving_replicas_per_shard(observed),
        router_endpoint=observed.router_endpoint,
        blocked_by=blocked,
        progress=progress,
        routers=fleet_status(
            observed.router.routers,
            written=observed.router.written_layout,
            active=serving,
            previous=observed.previous_status.routers,
            now=observed.now,
        ),
        routers_report=acknowledging(observed.router.routers),
        template_roll=template_roll,
    )
    status = compute_status(facts, observed.previous_status, observed.now)
    stored = with_deletions(
        tracked_layouts(observed), [a for a in accepted if isinstance(a, DeleteArtifacts)], observed
    )
    status = status.model_copy(
        update={"stored_layouts": stored, "canary": canary.status, "carries": carry_statuses(carries)}
    )
    status = canary_pass.with_condition(status, observed.previous_status, observed.now)
    events = transition_events(cluster_name, observed.previous_status, status, accepted)
    events += canary_pass.events(observed.previous_status.canary, canary.status)
    events += carry_events(observed, accepted)
    collecting = any(
        isinstance(a, DeleteArtifacts) and observed.artifact_deletions.get(a.layout_id) != "Failed"
        for a in accepted
    )
    requeue = requeue_after(
        spec=spec,
        observed=observed,
        records=records,
        progress=progress,
        deleting=collecting
        or any(isinstance(a, DeleteLayout) and would_change(a, observed) for a in proposed),
        degraded=bool(facts.unavailable_shards()),
    )
    if any(carry.carrier is not None and not carry.done for carry in carries.values()):
        # A carrier reports on its pod; the hands wake on pod changes, this is the safety net.
        requeue = POLL_SECONDS if requeue is None else min(requeue, POLL_SECONDS)
    expiry = next_expiry(stored, _protected(observed, records, tid), spec.index.store.retention, observed.now)
    if expiry is not None:
        due = max((expiry - observed.now).total_seconds(), 1.0)
        requeue = due if requeue is None else min(requeue, due)
    waiting = f"{progress.reason}: {progress.message}" if progress.progressing or spec.paused else ""
    if not waiting and requeue is not None:
        waiting = housekeeping_reason(records, accepted)
    order = (
        EnsureCarrier,
        EnsureBuild,
        EnsureShards,
        ReplaceShardPod,
        StageRouter,
        SwitchRouter,
        RetireLayout,
        DeleteLayout,
        DeleteArtifacts,
        DeleteCarrier,
    )
    ordered: list[Action] = [a for kind in order for a in accepted if isinstance(a, kind)]
    if canary.route is not None:
        # After the switch (promotion: the candidate is active, its canary section goes) and before
        # deletions (a rolled-back candidate is unstaged first).
        at = next(
            (
                i
                for i, a in enumerate(ordered)
                if isinstance(a, RetireLayout | DeleteLayout | DeleteArtifacts)
            ),
            len(ordered),
        )
        ordered.insert(at, canary.route)
    return Plan(tuple(ordered) + tuple(events), status, requeue, waiting)


__all__ = ["PAUSED_POLL_SECONDS", "POLL_SECONDS", "ROUTER_POLL_SECONDS", "Plan", "plan", "would_change"]
