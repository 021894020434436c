"""Named safety predicates (ECK style): the rules that may veto an action the planner proposes.

The state machine in `planner` proposes what the spec implies; every proposal then runs through
`PREDICATES` in order, and the first predicate that returns a reason vetoes it. A veto keeps the
world as it is and is reported by name in `status.blockedBy` (and an Event when it starts), so a
stuck rollout always says which rule holds it and why — the complaint users raise most about
other operators. The table is ordered from the most to the least fundamental reason, so the
reported name is the one a human should act on first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from shardrec.api.v1alpha1 import LayoutStatus, RecommenderClusterSpec
from shardrec.planning.actions import (
    DeleteArtifacts,
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
from shardrec.planning.carrying import Carry, carry_back_refusal, timed_carry_wait
from shardrec.planning.fleet import (
    RouterObservation,
    lagging_routers,
    layouts_in_use,
    unprepared_routers,
)
from shardrec.planning.observed import Observed, ObservedShard
from shardrec.planning.retention import carry_folders_needed
from shardrec.planning.timestamps import parse_time

# How long a replacement pod must have been Ready before the pod it replaces may go: covers
# the routers' 0.5 s probe, a probe backoff and a DNS negative-cache entry (CoreDNS: 5 s).
REPLACEMENT_SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class PredicateContext:
    """What a predicate may look at: the spec, the observation, and this pass's layout records
    (states already decided by the planner, keyed by layout id)."""

    spec: RecommenderClusterSpec
    observed: Observed
    records: Mapping[str, LayoutStatus]
    target_layout: str
    carries: Mapping[str, Carry] = field(default_factory=dict)
    """This pass's carries of logged writes, by carrying layout (`shardrec.planning.carrying`)."""

    @property
    def serving_layout(self) -> str | None:
        """The layout the router is confirmed to serve."""
        return self.observed.router.confirmed_layout


Check = Callable[[PredicateContext, LayoutAction], str | None]


@dataclass(frozen=True)
class Predicate:
    """A named rule: `check` returns why it vetoes an action, or None to let it pass."""

    name: str
    check: Check


def _advances(action: LayoutAction) -> bool:
    """Actions that move a layout towards serving."""
    return isinstance(action, EnsureBuild | EnsureShards | StageRouter | SwitchRouter)


def _named(routers: tuple[RouterObservation, ...], names: list[str]) -> str:
    """Router names, each with the error it reports (if any), for a veto's reason."""
    errors = {r.name: r.serving.error for r in routers if r.serving is not None and r.serving.error}
    return ", ".join(f"{name} ({errors[name]})" if name in errors else name for name in names)


def paused(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """`spec.paused` freezes builds, scaling, switches and deletions (status keeps updating)."""
    if ctx.spec.paused and not isinstance(action, RetireLayout):
        return "spec.paused is true: builds, scaling, router switches and deletions are frozen"
    return None


def rollout_deadline_passed(record: LayoutStatus, spec: RecommenderClusterSpec, observed: Observed) -> bool:
    """True once a layout planned at `record.created_at` has had `rollout.timeoutSeconds`."""
    deadline = parse_time(record.created_at) + timedelta(seconds=spec.rollout.timeout_seconds)
    return observed.now >= deadline


def rollout_within_timeout(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A target that was not built and ready within `rollout.timeoutSeconds` is abandoned; so is
    one whose carry of logged writes still waits (`carrying.timed_carry_wait`: the carrier never
    caught up, its hand-over never reported or kept failing) `rollout.timeoutSeconds` after the
    target turned Ready. The old layout keeps serving either way; an abandoned carry whose
    hand-over may have fenced its leaders opens them before the target goes
    (`open_fenced_source_before_deleting`).

    Why the carry's clock starts at Ready, not when the layout was planned: the carrier forwards
    only once every new replica is ready, so catching up begins there; a build that used most of
    the timeout would otherwise abandon a healthy carry and cost a rebuild."""
    record = ctx.records.get(action.layout_id)
    if not _advances(action) or record is None or action.layout_id == ctx.serving_layout:
        return None
    timeout = ctx.spec.rollout.timeout_seconds
    if record.state in ("Building", "Starting") and rollout_deadline_passed(record, ctx.spec, ctx.observed):
        return (
            f"layout {action.layout_id} (version {record.version}) was not built and ready within "
            f"{timeout}s (rollout.timeoutSeconds); change the spec to retry"
        )
    waiting = timed_carry_wait(ctx.carries.get(action.layout_id)) if record.state == "Ready" else None
    if waiting is not None and ctx.observed.now >= parse_time(record.state_since) + timedelta(
        seconds=timeout
    ):
        return (
            f"layout {action.layout_id} (version {record.version}) was not carried within {timeout}s "
            f"(rollout.timeoutSeconds) of turning Ready: {waiting}; change the spec to retry"
        )
    return None


def failed_layout_not_retried(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A failed layout is not retried until the spec changes (a new generation)."""
    record = ctx.records.get(action.layout_id)
    if _advances(action) and record is not None and record.state == "Failed":
        return f"layout {action.layout_id} failed: {record.message}; change the spec to retry"
    return None


def switch_unconfirmed_reason(observed: Observed) -> str | None:
    """Why the last switch is not confirmed yet (naming the lagging routers), or None."""
    router = observed.router
    if not router.switch_in_flight:
        return None
    lagging = lagging_routers(router.routers, router.written_layout)
    who = (
        f"routers {_named(router.routers, lagging)} still serve" if lagging else "the router is seen serving"
    )
    return (
        f"the router topology was switched to layout {router.written_layout} but {who} "
        f"{router.confirmed_layout or 'nothing'}"
    )


def wait_for_router_to_confirm_switch(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """Expectation: no further switch work and no deletion until every ready router serves the last
    topology write (each router reports what it serves; see `shardrec.planning.fleet`). While it
    holds, the layout those routers still serve is not retired either (it stays "serving")."""
    if isinstance(action, StageRouter | SwitchRouter | DeleteLayout):
        return switch_unconfirmed_reason(ctx.observed)
    return None


def switch_only_when_every_router_prepared(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A switch commits only once every ready router has loaded the layout (staged): each router's
    swap is then one assignment, so the window in which routers disagree stays short."""
    if not isinstance(action, SwitchRouter):
        return None
    routers = ctx.observed.router.routers
    waiting = unprepared_routers(routers, action.layout_id)
    if waiting:
        return f"routers {_named(routers, waiting)} have not loaded layout {action.layout_id} yet (staged)"
    return None


def never_switch_to_layout_with_missing_shard(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """The router only ever switches to a layout where every shard has a ready replica."""
    if not isinstance(action, SwitchRouter):
        return None
    layout = ctx.observed.layout(action.layout_id)
    if layout is None or layout.build.state != "Succeeded":
        return f"layout {action.layout_id} is not built"
    missing = layout.missing_shards()
    if missing:
        return f"layout {action.layout_id}: shards {missing} have no ready replica"
    return None


def meets_quality_gate(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """With `spec.index.qualityGate`, a built layout whose recorded offline metrics are missing
    or below a minimum (absolute, or relative to the serving layout's) starts no shard and is
    never staged or switched to; the serving layout keeps serving. The build itself runs: it is
    what reads the metrics."""
    gate = ctx.spec.index.quality_gate
    if gate is None or not isinstance(action, EnsureShards | StageRouter | SwitchRouter):
        return None
    if action.layout_id == ctx.serving_layout:
        return None  # already serving: the gate judges new versions, it never stops a serving one
    layout = ctx.observed.layout(action.layout_id)
    if layout is None or layout.build.state != "Succeeded":
        return None
    quality = ctx.observed.quality(action.layout_id)
    if quality is None:
        return (
            f"layout {action.layout_id} (version {action.layout.version}) records no offline metrics "
            "(train with `recctl train --holdout N` or `--tune`) and spec.index.qualityGate requires them"
        )
    if gate.min_ndcg_at10 is not None and quality.ndcg_at_10 < gate.min_ndcg_at10:
        return (
            f"layout {action.layout_id} (version {action.layout.version}): {quality.describe()} is below "
            f"spec.index.qualityGate.minNdcgAt10 {gate.min_ndcg_at10:.4f}"
        )
    active = ctx.observed.quality(ctx.serving_layout)
    if gate.min_relative_to_active is not None and active is not None:
        floor = gate.min_relative_to_active * active.ndcg_at_10
        if quality.ndcg_at_10 < floor:
            return (
                f"layout {action.layout_id} (version {action.layout.version}): {quality.describe()} is below "
                f"spec.index.qualityGate.minRelativeToActive {gate.min_relative_to_active:g} x the serving "
                f"layout {ctx.serving_layout}'s {active.describe()} = {floor:.4f}"
            )
    return None


def writes_carried_to_new_layout(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """While `spec.writes.enabled`, no layout other than the serving one is built, started,
    staged or switched to when the serving layout logs item writes, unless those writes are
    carried into it.

    Why: the writes acknowledged since the serving layout was built live only in its replicas'
    write logs. A new layout is built from its source alone unless the hands cut those logs, fold
    them into the build and forward the rest until the switch; without that, the switch would
    silently undo every acknowledged upsert and delete. The local runtime carries by itself
    (`Observed.carries_writes`); hands that run carriers (the operator, `Observed.runs_carriers`)
    carry into a NEW layout (a version, a shard count: `shardrec.planning.carrying`), and back
    into a KEPT layout the serving one was carried from (a rollback: the serving layout's logs
    replayed onto the kept layout's running replicas). A kept layout whose replicas are gone, or
    that the serving layout was not carried from, is refused: nothing can give it the writes.
    Turning writes off (`spec.writes.enabled: false`) lifts the rule: that is the user saying the
    source now holds what matters (the new layout has no log either).

        serving logs writes? --no--> pass (nothing to carry: e.g. writes just turned on)
              | yes
        spec.writes.enabled? --no--> pass (writes turned off: the user's choice)
              | yes
        hands carry writes?  --yes-> pass (local runtime)
              | no
        hands run carriers?  --no--> veto every advance of a layout other than the serving one
              | yes
        a carry from the serving layout into it (or planned: forward or back)? --yes-> pass
              | no
        veto: a kept layout that cannot be carried back into (`carrying.carry_back_refusal`)
    """
    if not isinstance(action, EnsureBuild | EnsureShards | StageRouter | SwitchRouter):
        return None  # retirements, deletions and pod replacements carry nothing over
    if action.layout_id == ctx.serving_layout:
        return None
    serving = ctx.observed.layout(ctx.serving_layout)
    if serving is None or not serving.spec.write_log:
        return None
    if not ctx.spec.writes.enabled or ctx.observed.carries_writes:
        return None
    described = f"layout {action.layout_id} (version {action.layout.version}, {action.layout.shards} shards)"
    if ctx.observed.runs_carriers:
        carry = ctx.carries.get(action.layout_id)
        if carry is not None and carry.source == serving.id and not carry.done:
            return None  # a done carry into a layout that does not serve is an earlier one's memory
        why = carry_back_refusal(ctx.observed, ctx.carries, action.layout_id, serving.id)
        return (
            f"layout {serving.id} serves with spec.writes.enabled and its write logs hold acknowledged "
            f"item writes; {described} was built before (a rollback to a kept layout) and cannot take "
            f"them: {why or 'no carry back into it is planned'}. Revert the change to keep taking writes "
            "on the serving layout, or set spec.writes.enabled false to roll back without them (fold them "
            "into the embeddings source first: recctl writes export, then recctl writes fold)"
        )
    return (
        f"layout {serving.id} serves with spec.writes.enabled and its write logs hold acknowledged "
        f"item writes that these hands cannot carry into {described}: switching would lose them. "
        "Revert the change to keep taking writes on the serving layout, or set spec.writes.enabled "
        "false to change the layout without them (fold them into the embeddings source first: "
        "recctl writes export, then recctl writes fold)"
    )


def carry_back_after_carry_into_serving_done(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A carry back from the serving layout S into a kept layout K starts (its carrier is created)
    only once the carry INTO S is done (its carrier reported done: every router serves S and a last
    pass found nothing). Until then that carry may still forward K's records into S: sent after
    the records the carry back replays onto K, they would come after S's newer writes of the same
    items there and undo them. Also, its carrier fences K's leaders at every step until it is
    done, and the carry back needs them open."""
    if not isinstance(action, EnsureCarrier) or not action.back:
        return None
    if ctx.observed.carrier(action.layout_id) is not None:
        return None  # created once this held; vetoing it now would only freeze its requests
    incoming = ctx.carries.get(action.source.id)
    if incoming is None or incoming.done:
        return None
    return (
        f"the carry back of layout {action.source.id}'s writes into kept layout {action.layout_id} waits "
        f"for the carry into layout {action.source.id} from layout {incoming.source} to be done"
    )


def _carry_into(ctx: PredicateContext, layout_id: str) -> Carry | None:
    """The carry into `layout_id` that is not done, or None."""
    carry = ctx.carries.get(layout_id)
    return carry if carry is not None and not carry.done else None


def build_after_carry_cut(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """The build of a carrying layout starts only once its carrier has cut the old layout's write
    logs into the carry folder (the build folds that folder in: a build started before the cut
    would miss the writes up to it, and nothing forwards those later)."""
    if not isinstance(action, EnsureBuild):
        return None
    carry = _carry_into(ctx, action.layout_id)
    if carry is None or carry.back or carry.cut_taken:
        return None  # a carry back cuts nothing: its layout is built
    if carry.carrier is None:
        return (
            f"layout {action.layout_id} waits for its carrier (carrying layout {carry.source}'s writes) "
            "to start"
        )
    progress = carry.carrier.progress
    trouble = f" (carrier reports: {progress.message})" if progress is not None and progress.message else ""
    return (
        f"layout {action.layout_id} waits for its carrier to cut the write logs of layout {carry.source} "
        f"into the carry folder its build folds in{trouble}"
    )


def traffic_after_carry_caught_up(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A carrying layout is staged or switched to only once its carrier has caught up: one pass
    forwarded everything the old leaders' logs named (the hand-over then has little left to do,
    so the old leaders are fenced only briefly)."""
    if not isinstance(action, StageRouter | SwitchRouter):
        return None
    carry = _carry_into(ctx, action.layout_id)
    if carry is None or carry.caught_up:
        return None
    return (
        f"layout {action.layout_id} waits for its carrier to forward the writes layout {carry.source} "
        "logged since the cut (caught_up)"
    )


def switch_after_hand_over(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """The switch to a carrying layout goes only after its carrier reports the hand-over the
    planner asked for: the old leaders fenced (they refuse new writes; clients retry the 503 on
    the new layout once the router switched) and everything they logged forwarded. Without the
    fence a write the old layout took just before the switch could be forwarded after a newer
    write of the same item on the new layout, and undo it. Asked last, so the hand-over is
    requested (`carrying.propose_carriers`) only when nothing else holds the switch."""
    if not isinstance(action, SwitchRouter):
        return None
    carry = _carry_into(ctx, action.layout_id)
    if carry is None or carry.handed_over:
        return None
    carrier = carry.carrier
    if carrier is not None and carrier.hand_over_failed:
        message = carrier.progress.message if carrier.progress is not None else ""
        return (
            f"the hand-over {carrier.hand_over_requested} of layout {carry.source} to layout "
            f"{action.layout_id} failed ({message}); its leaders were opened again, asking again"
        )
    requested = carrier.hand_over_requested if carrier is not None else None
    return (
        f"layout {action.layout_id} waits for its carrier to fence layout {carry.source}'s leaders and "
        f"forward the rest (hand-over {requested or 'being requested'})"
    )


def keep_carry_source_until_done(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A layout whose logged writes are still carried into the serving layout is not deleted:
    deleting it deletes its replicas' write-log claims (`whenDeleted: Delete`), and with them any
    write its leaders took that the carrier has not forwarded yet. It goes once the carrier
    reports done (every router serves the new layout and a last pass found nothing new)."""
    if not isinstance(action, DeleteLayout):
        return None
    for carry in ctx.carries.values():
        if carry.source == action.layout_id and not carry.done and carry.layout == ctx.serving_layout:
            return (
                f"layout {action.layout_id}'s logged writes are still being carried into layout "
                f"{carry.layout} (its carrier has not reported done)"
            )
    return None


def open_fenced_source_before_deleting(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """An abandoned carrying layout (superseded, failed, timed out) whose hand-over fenced the
    leaders of the layout that still serves is deleted, carrier and all, only once the carrier
    has opened those leaders again: else the serving layout would refuse every write for good."""
    if not isinstance(action, DeleteLayout):
        return None
    carry = ctx.carries.get(action.layout_id)
    if carry is None or not carry.fenced or ctx.observed.layout(carry.source) is None:
        return None
    return (
        f"layout {action.layout_id}'s carrier fenced the leaders of layout {carry.source}; waiting for it "
        "to open them again"
    )


def never_delete_serving_layout(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A layout the router topology names (written or confirmed) is never deleted, nor is a
    layout that served while nothing serves (so the cluster never drops to zero servable
    layouts once one served)."""
    if not isinstance(action, DeleteLayout):
        return None
    router = ctx.observed.router
    if action.layout_id in (router.written_layout, router.confirmed_layout):
        return f"layout {action.layout_id} is named by the router topology"
    users = [r.name for r in router.routers if r.ready and action.layout_id in layouts_in_use([r])]
    if users:
        return f"layout {action.layout_id} is still served or held prepared by routers {', '.join(users)}"
    record = ctx.records.get(action.layout_id)
    if router.confirmed_layout is None and record is not None and record.state == "Retiring":
        return f"no layout serves; layout {action.layout_id} is the last that served"
    return None


def _survivor_is_ready(shard: ObservedShard, replicas: int) -> bool:
    """Whether scaling `shard` down to `replicas` provably keeps a ready replica (workloads remove
    the highest ordinals first)."""
    if shard.ready_ordinals is not None:
        return any(ordinal < replicas for ordinal in shard.ready_ordinals)
    removed = max(shard.desired_replicas - replicas, 0)
    return shard.ready_replicas - removed >= 1


def never_delete_last_ready_replica_of_serving_shard(
    ctx: PredicateContext, action: LayoutAction
) -> str | None:
    """Scaling down or deleting the serving layout must leave every shard a ready replica."""
    if action.layout_id != ctx.serving_layout:
        return None
    layout = ctx.observed.layout(action.layout_id)
    if layout is None:
        return None
    if isinstance(action, DeleteLayout):
        return f"layout {action.layout_id} serves"
    if not isinstance(action, EnsureShards):
        return None
    at_risk = [
        shard.shard
        for shard in layout.shards
        if shard.ready_replicas > 0
        and action.replicas_of(shard.shard) < shard.desired_replicas
        and not _survivor_is_ready(shard, action.replicas_of(shard.shard))
    ]
    if at_risk:
        return (
            f"scaling serving layout {action.layout_id} down to {action.replicas} replicas would remove "
            f"the last ready replica of shards {at_risk}; waiting for lower replicas to become ready"
        )
    return None


def wait_for_artifact_deletion(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A layout whose artifacts are being deleted is not built again, nor given a new carrier,
    until that deletion is seen done: a build started meanwhile could reuse files that are about
    to vanish, and a carrier could cut into its carry folder while the same Job deletes it
    (`retention.carry_folders_needed`)."""
    if not isinstance(action, EnsureBuild | EnsureCarrier):
        return None
    if isinstance(action, EnsureCarrier) and ctx.observed.carrier(action.layout_id) is not None:
        return None  # it runs already: vetoing it would only freeze its requests
    if ctx.observed.artifact_deletions.get(action.layout_id) in ("Running", "Failed"):
        return f"the artifacts of layout {action.layout_id} are being deleted (garbage collection)"
    return None


def never_delete_carry_folders_in_use(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A layout's artifacts are deleted with its carry folders (`carry/<layout>` and every
    `carry-back/` folder naming it), so not while those are needed
    (`retention.carry_folders_needed`: the layout exists, or a carry names it)."""
    if not isinstance(action, DeleteArtifacts):
        return None
    router = ctx.observed.router
    live = {
        ctx.target_layout,
        *(layout for layout in (router.written_layout, router.confirmed_layout) if layout is not None),
        *ctx.records,
        *(layout.id for layout in ctx.observed.layouts),
    }
    return carry_folders_needed(action.layout_id, live=live, carries=ctx.carries.values())


def never_delete_artifacts_of_a_live_layout(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """Artifacts are deleted only for layouts that run nowhere: not the target, not named by the
    router topology, not recorded in status.layouts (which covers the rollback window)."""
    if not isinstance(action, DeleteArtifacts):
        return None
    router = ctx.observed.router
    if action.layout_id in (ctx.target_layout, router.written_layout, router.confirmed_layout):
        return f"layout {action.layout_id} is the target or named by the router topology"
    if action.layout_id in ctx.records or ctx.observed.layout(action.layout_id) is not None:
        return f"layout {action.layout_id} still exists (it may serve again within its rollback window)"
    return None


def _replaced_pod(ctx: PredicateContext, action: ReplaceShardPod) -> tuple[ObservedShard, bool] | None:
    """The shard of a pod replacement on the serving layout, and whether the pod is Ready now;
    None when the rule does not apply (another layout, or the pod is gone already)."""
    if action.layout_id != ctx.serving_layout:
        return None
    layout = ctx.observed.layout(action.layout_id)
    shard = layout.shard(action.shard) if layout is not None else None
    if shard is None:
        return None
    pod = next((pod for pod in shard.live_pods() if pod.name == action.pod), None)
    return (shard, pod.ready) if pod is not None else None


def replace_one_shard_at_a_time(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """A Ready pod of the serving layout is replaced only while every other shard is at rest (its
    replica count, all Ready, none starting or terminating): one shard is in motion at a time."""
    if not isinstance(action, ReplaceShardPod):
        return None
    found = _replaced_pod(ctx, action)
    if found is None or not found[1]:
        return None
    replicas = ctx.spec.replicas_per_shard
    layout = ctx.observed.layout(action.layout_id)
    assert layout is not None  # _replaced_pod found it
    for number in range(layout.spec.shards):
        if number == action.shard:
            continue
        other = layout.shard(number)
        if other is None:
            return f"shard {number} of layout {action.layout_id} has no workload"
        if other.desired_replicas != replicas:
            return f"shard {number} runs {other.desired_replicas} replicas, not {replicas} (resizing)"
        ready = other.serving_replicas()
        if ready < replicas:
            return f"shard {number} has {ready} of {replicas} replicas Ready"
        if not other.at_rest(replicas):
            return f"shard {number} still has a pod starting or terminating"
    return None


def keep_ready_replicas_while_replacing(ctx: PredicateContext, action: LayoutAction) -> str | None:
    """Replacing a Ready pod of the serving layout leaves its shard `max(replicasPerShard - 1, 1)`
    other replicas that have been Ready for `REPLACEMENT_SETTLE_SECONDS`: never 0 (a
    single-replica shard waits for its surge replica).

    Why the settle time: Kubernetes calls a pod Ready before the routers can use it. Routers
    reach replicas by DNS name and probe them every 0.5 s; a replica that was just (re)created
    may still be cached as unresolvable or dead by them for a few seconds. Measured on the real
    node: without it, deleting a shard's last old pod the moment its new pod turned Ready gave
    one ~3 s window of 503s per shard (e2e/node image roll scenario)."""
    if not isinstance(action, ReplaceShardPod):
        return None
    found = _replaced_pod(ctx, action)
    if found is None or not found[1]:
        return None
    shard, _ = found
    floor = max(ctx.spec.replicas_per_shard - 1, 1)
    now = ctx.observed.now
    others = [pod for pod in shard.live_pods() if pod.ready and pod.name != action.pod]
    settled = sum(1 for pod in others if pod.settled(now, REPLACEMENT_SETTLE_SECONDS))
    if settled >= floor:
        return None
    waiting = [pod.name for pod in shard.live_pods() if not pod.ready]
    settling = [pod.name for pod in others if not pod.settled(now, REPLACEMENT_SETTLE_SECONDS)]
    for_whom = f"; waiting for {', '.join(waiting)} to be Ready" if waiting else ""
    if settling:
        for_whom += (
            f"; {', '.join(settling)} Ready for less than {REPLACEMENT_SETTLE_SECONDS:g} s "
            "(routers may not reach it yet)"
        )
    return (
        f"replacing {action.pod} would leave shard {action.shard} {settled} other settled Ready "
        f"replicas, {floor} needed{for_whom}"
    )


PREDICATES: tuple[Predicate, ...] = (
    Predicate("paused", paused),
    Predicate("failed_layout_not_retried", failed_layout_not_retried),
    Predicate("meets_quality_gate", meets_quality_gate),
    Predicate("writes_carried_to_new_layout", writes_carried_to_new_layout),
    Predicate("carry_back_after_carry_into_serving_done", carry_back_after_carry_into_serving_done),
    Predicate("rollout_within_timeout", rollout_within_timeout),
    Predicate("build_after_carry_cut", build_after_carry_cut),
    Predicate("traffic_after_carry_caught_up", traffic_after_carry_caught_up),
    Predicate("wait_for_router_to_confirm_switch", wait_for_router_to_confirm_switch),
    Predicate("never_switch_to_layout_with_missing_shard", never_switch_to_layout_with_missing_shard),
    Predicate("switch_only_when_every_router_prepared", switch_only_when_every_router_prepared),
    Predicate("never_delete_serving_layout", never_delete_serving_layout),
    Predicate("keep_carry_source_until_done", keep_carry_source_until_done),
    Predicate("open_fenced_source_before_deleting", open_fenced_source_before_deleting),
    Predicate(
        "never_delete_last_ready_replica_of_serving_shard", never_delete_last_ready_replica_of_serving_shard
    ),
    Predicate("never_delete_artifacts_of_a_live_layout", never_delete_artifacts_of_a_live_layout),
    Predicate("never_delete_carry_folders_in_use", never_delete_carry_folders_in_use),
    Predicate("wait_for_artifact_deletion", wait_for_artifact_deletion),
    Predicate("replace_one_shard_at_a_time", replace_one_shard_at_a_time),
    Predicate("keep_ready_replicas_while_replacing", keep_ready_replicas_while_replacing),
    Predicate("switch_after_hand_over", switch_after_hand_over),
)
"""Every rule, in the order they are asked; the first veto is the one reported."""


def first_veto(
    ctx: PredicateContext, action: LayoutAction, predicates: tuple[Predicate, ...] = PREDICATES
) -> tuple[str, str] | None:
    """(predicate name, reason) of the first predicate vetoing `action`, or None if all pass."""
    for predicate in predicates:
        reason = predicate.check(ctx, action)
        if reason is not None:
            return predicate.name, reason
    return None
