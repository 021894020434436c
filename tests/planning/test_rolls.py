"""Template rolls (`shardrec.planning.rolls`): one shard, one pod at a time, never a shard at 0.

A small fake StatefulSet world plays the hands: EnsureShards sets each shard's replica count
(new ordinals start from the current template), ReplaceShardPod marks a pod terminating, a
terminating pod is recreated from the current template on the next tick, and a pod becomes Ready
one tick after it is created. The invariants are checked on every observation, including runs in
which the hands crash half way through a pass (some actions executed, the status not written).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import pytest

from shardrec.api.v1alpha1 import RecommenderClusterSpec, RecommenderClusterStatus
from shardrec.planning import (
    EnsureShards,
    LayoutSpec,
    Observed,
    ObservedBuild,
    ObservedLayout,
    ObservedPod,
    ObservedRouter,
    ObservedShard,
    Plan,
    ReplaceShardPod,
    plan,
)
from shardrec.planning.rolls import propose_roll
from tests.planning.world import CLUSTER, T0, make_spec


@dataclass
class Pod:
    revision: str
    ready: bool = False
    terminating: bool = False


@dataclass
class Shard:
    desired: int
    pods: dict[int, Pod] = field(default_factory=dict)


class RollWorld:
    """One serving layout whose shards are StatefulSets with `updateStrategy: OnDelete`."""

    def __init__(self, spec: RecommenderClusterSpec) -> None:
        self.spec = spec
        self.layout = LayoutSpec.from_spec(spec)
        self.revision = "r1"
        self.settled = True
        replicas = spec.replicas_per_shard
        self.shards = [
            Shard(replicas, {o: Pod("r1", ready=True) for o in range(replicas)})
            for _ in range(self.layout.shards)
        ]
        self.status = RecommenderClusterStatus()
        self.ticks = 0
        self.deleted: list[str] = []

    def change_template(self, revision: str) -> None:
        """A new pod template: the controller sees it on the next tick (until then: unsettled)."""
        self.revision = revision
        self.settled = False

    def pod_name(self, shard: int, ordinal: int) -> str:
        return f"{CLUSTER}-{self.layout.id}-{shard}-{ordinal}"

    def observed(self) -> Observed:
        shards = []
        for number, shard in enumerate(self.shards):
            pods = tuple(
                ObservedPod(
                    name=self.pod_name(number, ordinal),
                    ordinal=ordinal,
                    ready=pod.ready and not pod.terminating,
                    updated=pod.revision == self.revision,
                    terminating=pod.terminating,
                )
                for ordinal, pod in sorted(shard.pods.items())
            )
            ready = frozenset(p.ordinal for p in pods if p.ready)
            shards.append(
                ObservedShard(
                    shard=number,
                    desired_replicas=shard.desired,
                    ready_replicas=len(ready),
                    ready_ordinals=ready,
                    pods=pods,
                    template_settled=self.settled,
                )
            )
        lid = self.layout.id
        return Observed(
            generation=1,
            now=T0 + timedelta(seconds=5 * self.ticks),
            layouts=(ObservedLayout(self.layout, ObservedBuild("Succeeded"), tuple(shards)),),
            router=ObservedRouter(written_layout=lid, confirmed_layout=lid),
            previous_status=self.status,
        )

    def execute(self, the_plan: Plan, *, crash_after: int | None = None) -> None:
        """Run the plan's actions (only the first `crash_after` when the hands crash), then the
        status write (skipped on a crash)."""
        actions = [a for a in the_plan.actions if isinstance(a, EnsureShards | ReplaceShardPod)]
        for action in actions[:crash_after]:
            if isinstance(action, EnsureShards):
                for number, shard in enumerate(self.shards):
                    shard.desired = action.replicas_of(number)
                    for ordinal in range(shard.desired):
                        shard.pods.setdefault(ordinal, Pod(self.revision))
                    for ordinal in [o for o in shard.pods if o >= shard.desired]:
                        shard.pods[ordinal].terminating = True
            else:
                number, ordinal = int(action.pod.split("-")[-2]), int(action.pod.split("-")[-1])
                assert number == action.shard
                self.shards[number].pods[ordinal].terminating = True
                self.deleted.append(action.pod)
        if crash_after is None:
            self.status = RecommenderClusterStatus.model_validate_json(the_plan.status.model_dump_json())

    def tick(self) -> None:
        """Controllers act: terminating pods go (and are recreated below the replica count), new
        pods get Ready, the StatefulSet controller observes the template."""
        self.ticks += 1
        self.settled = True
        for shard in self.shards:
            for ordinal, pod in list(shard.pods.items()):
                if pod.terminating:
                    del shard.pods[ordinal]
                    if ordinal < shard.desired:
                        shard.pods[ordinal] = Pod(self.revision)
                elif not pod.ready:
                    pod.ready = True

    def done(self) -> bool:
        replicas = self.spec.replicas_per_shard
        return all(
            shard.desired == replicas
            and sorted(shard.pods) == list(range(replicas))
            and all(p.revision == self.revision and p.ready for p in shard.pods.values())
            for shard in self.shards
        )


def check_invariants(world: RollWorld) -> None:
    """No shard below max(R - 1, 1) Ready, and at most one shard in motion (below its replica
    count, or with a pod starting, terminating or surging)."""
    replicas = world.spec.replicas_per_shard
    floor = max(replicas - 1, 1)
    moving = []
    for number, shard in enumerate(world.shards):
        ready = sum(1 for p in shard.pods.values() if p.ready and not p.terminating)
        assert ready >= floor, f"shard {number} has {ready} Ready replicas, floor {floor}"
        if ready < replicas or len(shard.pods) != replicas or any(not p.ready for p in shard.pods.values()):
            moving.append(number)
    assert len(moving) <= 1, f"shards {moving} are in motion together"


def roll(world: RollWorld, *, crash_at: int | None = None, limit: int = 200) -> list[Plan]:
    plans = []
    for step in range(limit):
        check_invariants(world)
        the_plan = plan(CLUSTER, world.spec, world.observed())
        plans.append(the_plan)
        if world.done() and not the_plan.of_type(ReplaceShardPod):
            return plans
        world.execute(the_plan, crash_after=1 if step == crash_at else None)
        check_invariants(world)
        world.tick()
    raise AssertionError(f"the roll did not finish in {limit} passes")


@pytest.mark.parametrize(("shards", "replicas"), [(3, 1), (3, 2), (2, 3)])
def test_a_template_change_rolls_shard_by_shard_and_finishes(shards: int, replicas: int) -> None:
    world = RollWorld(make_spec(shards=shards, replicasPerShard=replicas))
    world.change_template("r2")
    plans = roll(world)
    assert world.done()
    # every pod was replaced exactly once, shard after shard
    shard_order = [int(name.split("-")[-2]) for name in world.deleted]
    assert shard_order == sorted(shard_order)
    assert len(world.deleted) == shards * replicas
    rolling = [p.status.template_roll for p in plans if p.status.template_roll is not None]
    assert [r.shard for r in rolling] == sorted(r.shard for r in rolling)
    assert any(r.surge for r in rolling) == (replicas == 1)
    assert plans[-1].status.template_roll is None
    assert plans[-1].status.conditions[1].reason == "RolloutComplete"


def test_single_replica_shard_surges_before_its_pod_goes() -> None:
    world = RollWorld(make_spec(shards=2, replicasPerShard=1))
    world.change_template("r2")
    first = plan(CLUSTER, world.spec, world.observed())
    assert first.of_type(ReplaceShardPod) == ()  # the controller has not seen the template yet
    world.execute(first)
    world.tick()
    second = plan(CLUSTER, world.spec, world.observed())
    (ensure,) = second.of_type(EnsureShards)
    assert ensure.surge == frozenset({0})
    assert ensure.replicas_of(0) == 2 and ensure.replicas_of(1) == 1
    assert second.of_type(ReplaceShardPod) == ()  # held until ordinal 1 is Ready
    roll_status = second.status.template_roll
    assert roll_status is not None and roll_status.surge and roll_status.shard == 0
    assert roll_status.waiting_for.startswith("keep_ready_replicas_while_replacing")
    world.execute(second)
    world.tick()  # ordinal 1 Ready on r2
    third = plan(CLUSTER, world.spec, world.observed())
    assert [a.pod for a in third.of_type(ReplaceShardPod)] == [world.pod_name(0, 0)]
    assert third.status.conditions[1].reason == "RollingPodTemplate"


def test_with_two_replicas_the_next_pod_waits_for_the_replaced_one() -> None:
    world = RollWorld(make_spec(shards=2, replicasPerShard=2))
    world.change_template("r2")
    world.tick()
    first = plan(CLUSTER, world.spec, world.observed())
    assert [a.pod for a in first.of_type(ReplaceShardPod)] == [world.pod_name(0, 1)]
    world.execute(first)
    world.tick()  # ordinal 1 recreated, not Ready yet
    second = plan(CLUSTER, world.spec, world.observed())
    assert second.of_type(ReplaceShardPod) == ()
    assert second.status.template_roll is not None
    assert "keep_ready_replicas_while_replacing" in second.status.template_roll.waiting_for


def test_another_shard_short_of_replicas_holds_the_roll() -> None:
    world = RollWorld(make_spec(shards=2, replicasPerShard=2))
    world.change_template("r2")
    world.tick()
    world.shards[1].pods[0] = Pod("r2", ready=False)  # shard 1 lost a replica, recreated, starting
    the_plan = plan(CLUSTER, world.spec, world.observed())
    assert the_plan.of_type(ReplaceShardPod) == ()
    roll_status = the_plan.status.template_roll
    assert roll_status is not None
    assert roll_status.waiting_for == "replace_one_shard_at_a_time: shard 1 has 1 of 2 replicas Ready"


def test_an_unready_outdated_pod_is_replaced_at_once() -> None:
    """A roll to a broken image stalls after one pod; the next template change repairs it."""
    world = RollWorld(make_spec(shards=2, replicasPerShard=2))
    world.change_template("broken")
    world.tick()
    world.execute(plan(CLUSTER, world.spec, world.observed()))
    world.tick()  # shard 0 ordinal 1 runs "broken" and never gets Ready
    world.shards[0].pods[1].ready = False
    world.change_template("fixed")
    world.tick()
    world.shards[0].pods[1].ready = False
    the_plan = plan(CLUSTER, world.spec, world.observed())
    assert [a.pod for a in the_plan.of_type(ReplaceShardPod)] == [world.pod_name(0, 1)]


@pytest.mark.parametrize("replicas", [1, 2])
def test_hands_crashing_at_any_step_still_finish_safely(replicas: int) -> None:
    clean = RollWorld(make_spec(shards=3, replicasPerShard=replicas))
    clean.change_template("r2")
    steps = len(roll(clean))
    for crash_at in range(steps):
        world = RollWorld(make_spec(shards=3, replicasPerShard=replicas))
        world.change_template("r2")
        roll(world, crash_at=crash_at)
        assert world.done(), f"crash at step {crash_at}"


def test_paused_freezes_the_roll() -> None:
    world = RollWorld(make_spec(shards=2, replicasPerShard=2))
    world.spec = world.spec.model_copy(update={"paused": True})
    world.change_template("r2")
    world.tick()
    assert plan(CLUSTER, world.spec, world.observed()).of_type(ReplaceShardPod) == ()


def test_a_layout_that_does_not_serve_replaces_every_outdated_pod_at_once() -> None:
    world = RollWorld(make_spec(shards=2, replicasPerShard=2))
    world.change_template("r2")
    world.tick()
    observed = world.observed().layouts[0]
    proposal = propose_roll(world.layout, observed, 2, serving=False)
    assert len(proposal.replace) == 4 and proposal.surge == frozenset()


def test_pods_not_reported_means_no_roll() -> None:
    layout = LayoutSpec.from_spec(make_spec())
    shard = ObservedShard(shard=0, desired_replicas=2, ready_replicas=2)
    observed = ObservedLayout(layout, ObservedBuild("Succeeded"), (shard, replace(shard, shard=1)))
    proposal = propose_roll(layout, observed, 2, serving=True)
    assert proposal.replace == () and proposal.shard is None


def test_a_replacement_must_have_been_ready_for_the_settle_time_before_the_last_old_pod_goes() -> None:
    """Kubernetes calls a pod Ready before routers reach it (DNS, probe interval): deleting the
    last old pod at once gave 503s on the real node. Ready for less than the settle time holds."""
    from shardrec.planning.predicates import REPLACEMENT_SETTLE_SECONDS

    world = RollWorld(make_spec(shards=1, replicasPerShard=2))
    world.change_template("r2")
    world.tick()
    first = plan(CLUSTER, world.spec, world.observed())
    assert [a.pod for a in first.of_type(ReplaceShardPod)] == [world.pod_name(0, 1)]
    world.execute(first)
    world.tick()  # ordinal 1 recreated on r2
    world.tick()  # and Ready
    observed = world.observed()
    fresh = observed.now - timedelta(seconds=REPLACEMENT_SETTLE_SECONDS / 5)
    settled = observed.now - timedelta(seconds=REPLACEMENT_SETTLE_SECONDS)

    def with_ready_since(moment: datetime) -> Observed:
        (layout,) = observed.layouts
        (shard,) = layout.shards
        assert shard.pods is not None
        pods = tuple(replace(pod, ready_since=moment) if pod.ordinal == 1 else pod for pod in shard.pods)
        assert pods[1].ready and pods[1].updated
        return replace(observed, layouts=(replace(layout, shards=(replace(shard, pods=pods),)),))

    held = plan(CLUSTER, world.spec, with_ready_since(fresh))
    assert held.of_type(ReplaceShardPod) == ()
    assert held.status.template_roll is not None
    assert "Ready for less than" in held.status.template_roll.waiting_for
    assert held.requeue_after_seconds is not None  # it looks again without an event
    moved = plan(CLUSTER, world.spec, with_ready_since(settled))
    assert [a.pod for a in moved.of_type(ReplaceShardPod)] == [world.pod_name(0, 0)]
