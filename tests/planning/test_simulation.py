"""The planner driving a fake world to a fixed point, with safety invariants checked every pass.

Invariants (checked before each pass's actions run, and across passes):
- the router never switches to a layout with a missing or unready shard, nor mid-switch;
- a layout the router names is never deleted;
- once a layout served, some layout always serves, and it exists;
- every answer comes from one layout: all its shards carry that layout's version.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from shardrec.api.v1alpha1 import RecommenderClusterSpec
from shardrec.planning import (
    EnsureBuild,
    ObservedRouter,
    Plan,
    RecordEvent,
    SwitchRouter,
    layout_id,
    plan,
)
from tests.planning.world import (
    CLUSTER,
    FakeWorld,
    assert_invariants,
    make_spec,
    run_until_settled,
    with_version,
)

FAST = {"rollout": {"timeoutSeconds": 600, "keepPreviousLayouts": 1, "rollbackWindowSeconds": 60}}


@dataclass
class Watch:
    """Invariants that span passes."""

    served: bool = False
    switches: list[str] = field(default_factory=list)

    def __call__(self, world: FakeWorld, result: Plan) -> None:
        assert_invariants(world, result)
        if world.confirmed is not None:
            self.served = True
            layout = world.layouts[world.confirmed]
            versions = {layout.spec.version for _ in layout.shards.values()}
            assert versions <= {layout.spec.version}, "an answer mixes versions"
        elif self.served:
            raise AssertionError("nothing serves any more after a layout served")
        self.switches.extend(a.layout_id for a in result.of_type(SwitchRouter))


def change(world: FakeWorld, spec: RecommenderClusterSpec, watch: Watch) -> list[Plan]:
    """Apply a new spec (a new generation) and run the planner until it settles."""
    world.generation += 1
    return run_until_settled(world, spec, check=watch)


def test_full_lifecycle_create_roll_rebalance_scale_revert() -> None:
    world, watch = FakeWorld(), Watch()
    v1 = make_spec(**FAST)
    phases = [p.status.phase for p in run_until_settled(world, v1, check=watch)]
    assert phases[0] == "Building" and "Rolling" in phases and phases[-1] == "Ready"
    assert world.serving_version() == "v1" and set(world.layouts) == {layout_id(v1)}

    v2 = with_version(v1, "v2")
    plans = change(world, v2, watch)
    assert world.serving_version() == "v2" and set(world.layouts) == {layout_id(v2)}
    assert plans[-1].status.phase == "Ready" and plans[-1].status.active_version == "v2"

    three_shards = v2.model_copy(update={"shards": 3})
    change(world, three_shards, watch)
    assert world.layouts[world.confirmed].spec.shards == 3  # type: ignore[index]
    assert set(world.layouts) == {layout_id(three_shards)}

    three_replicas = three_shards.model_copy(update={"replicas_per_shard": 3})
    plans = change(world, three_replicas, watch)
    assert layout_id(three_replicas) == layout_id(three_shards)
    assert not any(p.of_type(EnsureBuild) or p.of_type(SwitchRouter) for p in plans)
    assert {s.desired for s in world.layouts[world.confirmed].shards.values()} == {3}  # type: ignore[index]
    assert plans[-1].status.ready_replicas == 9

    assert watch.switches == [layout_id(v1), layout_id(v2), layout_id(three_shards)]


def test_revert_within_the_rollback_window_switches_back_without_a_build() -> None:
    world, watch = FakeWorld(), Watch()
    v1 = make_spec(**FAST)
    v2 = with_version(v1, "v2")
    run_until_settled(world, v1, check=watch)
    world.generation += 1
    for _ in range(6):  # v2 switched, v1 kept (rollback window 60 s = 6 ticks)
        world.step(v2, watch)
    assert world.serving_version() == "v2" and layout_id(v1) in world.layouts
    world.generation += 1
    first = world.step(v1, watch)
    assert [a.layout_id for a in first.of_type(SwitchRouter)] == [layout_id(v1)]
    assert first.of_type(EnsureBuild) == ()
    run_until_settled(world, v1, check=watch)
    assert world.serving_version() == "v1" and set(world.layouts) == {layout_id(v1)}


def test_failed_build_keeps_the_old_version_and_waits_for_a_spec_change() -> None:
    world, watch = FakeWorld(failing_versions={"bad"}), Watch()
    v1 = make_spec(**FAST)
    run_until_settled(world, v1, check=watch)
    bad = with_version(v1, "bad")
    plans = change(world, bad, watch)
    assert world.serving_version() == "v1" and layout_id(bad) not in world.layouts
    assert plans[-1].status.phase == "Failed"
    assert sum(len(p.of_type(EnsureBuild)) for p in plans) == world.build_ticks  # one attempt only
    failures = [e for e in world.events if e.reason == "LayoutFailed"]
    assert len(failures) == 1 and "build failed" in failures[0].message
    # Something unrelated changes: a new generation retries the same layout once more.
    retried = change(
        world, bad.model_copy(update={"router": bad.router.model_copy(update={"replicas": 3})}), watch
    )
    attempts = {a.attempt for p in retried for a in p.of_type(EnsureBuild)}
    assert len(attempts) == 1 and retried[-1].status.phase == "Failed"
    good = with_version(v1, "v3")
    change(world, good, watch)
    assert world.serving_version() == "v3"


def test_replicas_that_never_become_ready_time_out_and_the_old_version_serves() -> None:
    world, watch = FakeWorld(stuck_versions={"stuck"}), Watch()
    v1 = make_spec(**FAST)
    run_until_settled(world, v1, check=watch)
    stuck = with_version(v1, "stuck")
    start = world.now
    plans = change(world, stuck, watch)
    last = plans[-1].status
    assert last.phase == "Failed" and last.active_version == "v1"
    assert (world.now - start).total_seconds() >= 600
    assert any(e.reason == "RolloutTimedOut" for e in world.events)
    assert layout_id(stuck) not in world.layouts


def test_killed_serving_shard_degrades_and_recovers_without_deletions_mid_rollout() -> None:
    world, watch = FakeWorld(build_ticks=4), Watch()
    v1 = make_spec(**FAST)
    run_until_settled(world, v1, check=watch)
    v2 = with_version(v1, "v2")
    world.generation += 1
    world.step(v2, watch)
    world.kill_shard(layout_id(v1), 1)
    degraded = world.step(v2, watch)
    assert degraded.status.phase == "Degraded"
    assert any(
        c.type == "Degraded" and c.status == "True" and "[1]" in c.message for c in degraded.status.conditions
    )
    run_until_settled(world, v2, check=watch)
    assert world.serving_version() == "v2"
    reasons = [e.reason for e in world.events]
    assert reasons.count("ShardsUnavailable") == 1 and reasons.count("ShardsRecovered") == 1


def test_slow_router_confirmation_holds_deletion_with_keep_zero() -> None:
    spec = make_spec(rollout={"keepPreviousLayouts": 0, "drainSeconds": 0})
    world, watch = FakeWorld(router_lag_ticks=4), Watch()
    run_until_settled(world, spec, check=watch)
    v2 = with_version(spec, "v2")
    plans = change(world, v2, watch)
    blocked = [
        p
        for p in plans
        if any(b.predicate == "wait_for_router_to_confirm_switch" for b in p.status.blocked_by)
    ]
    waiting = [p for p in plans if p.waiting_reason.startswith("WaitingForRouter")]
    assert waiting and not blocked  # nothing to delete yet: the old layout still serves
    assert world.serving_version() == "v2" and set(world.layouts) == {layout_id(v2)}


# --- operator restarted (or crashed) at every step --------------------------------------------


def _rollout(world: FakeWorld, crash_at: int | None, mode: str) -> tuple[FakeWorld, int]:
    """v1 serving -> v2, with a crash of kind `mode` at pass `crash_at`."""
    v1 = make_spec(**FAST)
    v2 = with_version(v1, "v2")
    run_until_settled(world, v1)
    world.generation += 1
    watch = Watch(served=True)
    for index in range(200):
        observed = world.observe()
        if index == crash_at and mode == "forget_memo":
            # A fresh process has no record of its own last write: it only sees what is confirmed.
            confirmed = observed.router.confirmed_layout
            observed = replace(observed, router=ObservedRouter(confirmed, confirmed))
        result = plan(CLUSTER, v2, observed)
        watch(world, result)
        if index == crash_at and mode == "lose_actions":
            pass  # crashed after writing status, before acting
        elif index == crash_at and mode == "partial":
            for action in result.actions[: len(result.actions) // 2]:
                world.execute(action)
        else:
            for action in result.actions:
                world.execute(action)
        if not (index == crash_at and mode in ("lose_status", "partial")):
            world.status_json = result.status.model_dump(by_alias=True, mode="json")
        world.tick()
        if result.requeue_after_seconds is None and index != crash_at:
            return world, index + 1
    raise AssertionError("the rollout did not settle")


def _summary(world: FakeWorld) -> tuple[object, ...]:
    status = world.stored_status()
    switches = [a.layout_id for a in world.executed if isinstance(a, SwitchRouter)]
    deleted = [a.layout_id for a in world.executed if type(a).__name__ == "DeleteLayout"]
    return (
        world.confirmed,
        sorted(world.layouts),
        status.phase,
        status.active_layout,
        [(e.name, e.state) for e in status.layouts],
        switches,
        sorted(set(deleted)),
    )


@pytest.mark.parametrize("mode", ["forget_memo", "lose_status", "lose_actions", "partial"])
def test_a_process_restarted_at_any_step_finishes_the_same_rollout(mode: str) -> None:
    reference, passes = _rollout(FakeWorld(), None, mode)
    expected = _summary(reference)
    reference_events = {e.reason for e in reference.events}
    assert {
        "BuildingLayout",
        "SwitchingRouter",
        "Switched",
        "RetiringLayout",
        "DeletingLayout",
    } <= reference_events
    for crash_at in range(passes):
        world, _ = _rollout(FakeWorld(), crash_at, mode)
        summary = _summary(world)
        assert summary == expected, f"crash ({mode}) at pass {crash_at}"
        if mode != "lose_actions":  # hands write the status last, so only this order can lose Events
            assert {e.reason for e in world.events} >= reference_events, (
                f"an event was lost ({mode}, {crash_at})"
            )
        switches = [a.layout_id for a in world.executed if isinstance(a, SwitchRouter)]
        assert len(switches) == len(set(switches)), f"a switch was executed twice ({mode}, {crash_at})"


def test_a_fresh_process_reading_status_back_plans_exactly_the_same() -> None:
    world = FakeWorld()
    v1 = make_spec(**FAST)
    run_until_settled(world, v1)
    world.generation += 1
    v2 = with_version(v1, "v2")
    in_memory = None
    for _ in range(30):
        observed = world.observe()
        if in_memory is not None:  # the status object the running process still holds
            continuing = plan("demo", v2, replace(observed, previous_status=in_memory))
            fresh = plan("demo", v2, observed)  # status as read back from the API (JSON)
            assert continuing == fresh
        result = world.step(v2)
        in_memory = result.status
        if result.requeue_after_seconds is None:
            break
    assert world.serving_version() == "v2"


# --- random schedules ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_random_schedules_keep_the_invariants_and_converge(seed: int) -> None:
    rng = random.Random(seed)
    world = FakeWorld(
        build_ticks=rng.randint(1, 4),
        router_lag_ticks=rng.randint(0, 3),
        failing_versions={"v-bad"},
    )
    watch = Watch()
    spec = make_spec(**FAST)
    for _ in range(8):
        for _ in range(rng.randint(1, 12)):
            world.step(spec, watch)
            if rng.random() < 0.15 and world.confirmed is not None:
                layout = world.layouts[world.confirmed]
                world.kill_shard(world.confirmed, rng.randrange(layout.spec.shards))
        choice = rng.choice(["version", "shards", "replicas", "bad", "pause", "keep"])
        spec = spec.model_copy(update={"paused": False})
        if choice == "version":
            spec = with_version(spec, f"v{rng.randint(1, 4)}")
        elif choice == "shards":
            spec = spec.model_copy(update={"shards": rng.randint(1, 4)})
        elif choice == "replicas":
            spec = spec.model_copy(update={"replicas_per_shard": rng.randint(1, 3)})
        elif choice == "bad":
            spec = with_version(spec, "v-bad")
        elif choice == "pause":
            spec = with_version(spec.model_copy(update={"paused": True}), f"v{rng.randint(5, 6)}")
        else:
            keep = rng.randint(0, 2)
            spec = spec.model_copy(
                update={"rollout": spec.rollout.model_copy(update={"keep_previous_layouts": keep})}
            )
        world.generation += 1
    spec = with_version(spec.model_copy(update={"paused": False}), "final")
    world.generation += 1
    final = run_until_settled(world, spec, check=watch)[-1]
    assert world.serving_version() == "final"
    assert final.status.phase == "Ready" and final.status.blocked_by == []
    assert set(world.layouts) == {layout_id(spec)}


def test_quality_gate_refuses_a_worse_version_before_its_shards_start_and_the_old_one_keeps_serving() -> None:
    gate = {"qualityGate": {"minNdcgAt10": 0.03, "minRelativeToActive": 0.98}}
    v1 = make_spec(index={"version": "v1", "source": "/data/emb", "dimension": 8, **gate})
    world = FakeWorld(ndcg_by_version={"v1": 0.040, "v2": 0.020, "v3": 0.039, "v4": 0.041})
    run_until_settled(world, v1)
    assert world.serving_version() == "v1"

    for low in ("v2", "v3"):  # v2 under the absolute minimum, v3 under 98% of v1's 0.040
        plans = run_until_settled(world, with_version(v1, low))
        low_id = layout_id(with_version(v1, low))
        assert world.serving_version() == "v1", "the serving layout keeps serving"
        assert world.layouts[low_id].build_state == "Succeeded", "the build ran and recorded the metrics"
        assert world.layouts[low_id].shards == {}, "no shard of the refused layout was started"
        status = plans[-1].status
        assert [entry.predicate for entry in status.blocked_by] == ["meets_quality_gate"]
        progressing = next(c for c in status.conditions if c.type == "Progressing")
        assert progressing.status == "False" and progressing.reason == "QualityGateFailed"
        warnings = [e for p in plans for e in p.actions if isinstance(e, RecordEvent) and e.type == "Warning"]
        assert any(low_id in e.message and "qualityGate" in e.message for e in warnings)

    v4 = with_version(v1, "v4")
    run_until_settled(world, v4)
    assert world.serving_version() == "v4", "a version that meets the gate rolls out"
