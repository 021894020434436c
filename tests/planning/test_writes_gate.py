"""The planner refuses to move off a layout that logs item writes while writes are on and the
hands cannot carry them (`writes_carried_to_new_layout`): on Kubernetes nothing cuts, folds in
and forwards the write logs yet, so a new layout would silently lose acknowledged writes."""

from __future__ import annotations

import pytest

from shardrec.api.v1alpha1 import RecommenderClusterSpec
from shardrec.planning import (
    EnsureBuild,
    EnsureShards,
    LayoutSpec,
    Observed,
    ObservedRouter,
    RecordEvent,
    RetireLayout,
    StageRouter,
    SwitchRouter,
    layout_id,
)
from shardrec.planning.actions import LayoutAction
from shardrec.planning.predicates import PredicateContext, first_veto, writes_carried_to_new_layout
from tests.planning.world import T0, FakeWorld, make_spec, ready_layout, run_until_settled, with_version

WRITES_ON = make_spec(writes={"enabled": True})
WRITES_ON_V2 = with_version(WRITES_ON, "v2")
WRITES_OFF_V2 = with_version(make_spec(), "v2")
ON1, ON2 = LayoutSpec.from_spec(WRITES_ON), LayoutSpec.from_spec(WRITES_ON_V2)
OFF1 = LayoutSpec.from_spec(make_spec())


def ctx(
    serving: RecommenderClusterSpec, spec: RecommenderClusterSpec, *, carries: bool = False
) -> PredicateContext:
    layout = ready_layout(serving)
    observed = Observed(
        generation=2,
        now=T0,
        layouts=(layout,),
        router=ObservedRouter(layout.id, layout.id),
        carries_writes=carries,
    )
    return PredicateContext(spec, observed, {}, layout_id(spec))


ADVANCES: list[LayoutAction] = [
    EnsureBuild(ON2, "attempt", "r"),
    EnsureShards(ON2, 2, "r"),
    StageRouter(ON2, "r"),
    SwitchRouter(ON2, "r"),
]


@pytest.mark.parametrize("action", ADVANCES, ids=lambda a: type(a).__name__)
def test_no_new_layout_advances_while_the_serving_one_logs_writes(action: LayoutAction) -> None:
    blocked = ctx(WRITES_ON, WRITES_ON_V2)
    reason = writes_carried_to_new_layout(blocked, action)
    assert reason is not None
    assert f"layout {ON1.id} serves with spec.writes.enabled" in reason
    assert f"cannot carry into layout {ON2.id} (version v2, 2 shards)" in reason
    assert "set spec.writes.enabled false" in reason
    assert first_veto(blocked, action) == ("writes_carried_to_new_layout", reason)


def test_the_serving_layout_itself_scales_and_retirements_pass() -> None:
    blocked = ctx(WRITES_ON, WRITES_ON_V2)
    assert writes_carried_to_new_layout(blocked, EnsureShards(ON1, 3, "r")) is None
    assert writes_carried_to_new_layout(blocked, RetireLayout(OFF1, T0, "r")) is None


def test_writes_just_turned_on_change_the_layout_freely() -> None:
    # The serving layout keeps no log: there is nothing to carry.
    assert writes_carried_to_new_layout(ctx(make_spec(), WRITES_ON), SwitchRouter(ON1, "r")) is None


def test_turning_writes_off_or_hands_that_carry_lift_the_rule() -> None:
    off = LayoutSpec.from_spec(WRITES_OFF_V2)
    assert writes_carried_to_new_layout(ctx(WRITES_ON, WRITES_OFF_V2), EnsureBuild(off, "a", "r")) is None
    carried = ctx(WRITES_ON, WRITES_ON_V2, carries=True)
    assert writes_carried_to_new_layout(carried, SwitchRouter(ON2, "r")) is None


def test_a_version_change_with_writes_on_keeps_the_serving_layout_and_says_why() -> None:
    world = FakeWorld()
    run_until_settled(world, WRITES_ON)
    assert world.confirmed == ON1.id
    blocked = world.step(WRITES_ON_V2)
    assert [b.predicate for b in blocked.status.blocked_by] == ["writes_carried_to_new_layout"]
    assert not blocked.of_type(EnsureBuild)
    warnings = [e for e in blocked.of_type(RecordEvent) if "cannot carry" in e.message]
    assert [e.type for e in warnings] == ["Warning"]
    progressing = next(c for c in blocked.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("False", "WritesNotCarried")
    assert "the serving layout keeps serving" in progressing.message
    for _ in range(100):  # far past rollout.timeoutSeconds: held, never failed or built
        world.step(WRITES_ON_V2)
    # Nothing to wait for: only a spec change moves it, so the pass settles (no requeue).
    assert run_until_settled(world, WRITES_ON_V2)[-1].requeue_after_seconds is None
    assert blocked.status.phase == "Ready"
    assert world.confirmed == ON1.id and set(world.layouts) == {ON1.id}
    status = world.stored_status()
    assert status.active_version == "v1" and status.target_version == "v2"
    assert [b.predicate for b in status.blocked_by] == ["writes_carried_to_new_layout"]
    assert sum("cannot carry" in e.message for e in world.events) == 1  # one Warning, when it began


def test_with_writes_turned_off_the_new_version_rolls_out() -> None:
    world = FakeWorld()
    run_until_settled(world, WRITES_ON)
    world.step(WRITES_ON_V2)
    world.generation += 1
    run_until_settled(world, WRITES_OFF_V2)
    assert world.confirmed == layout_id(WRITES_OFF_V2)
    assert world.stored_status().blocked_by == []


def test_the_local_runtime_carries_so_it_rolls_out_with_writes_on() -> None:
    world = FakeWorld(carries_writes=True)
    run_until_settled(world, WRITES_ON)
    world.generation += 1
    run_until_settled(world, WRITES_ON_V2)
    assert world.confirmed == ON2.id
