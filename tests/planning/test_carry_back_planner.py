"""A rollback to a kept layout with item writes on is a carry back (`shardrec.planning.carrying`):
the writes acknowledged on the serving layout are carried into the kept layout (its running
replicas take the serving layout's logs replayed from their start), then the routers switch to it.

`CarryWorld` (test_carry_planner) plays the carriers: a back carrier cuts nothing and reports
`caught_up` a tick after it starts forwarding. Every pass plans from the observation and the stored
status alone; `test_a_restart_at_every_step_of_a_carry_back_plans_the_same` checks it directly.
"""

from __future__ import annotations

from shardrec.planning import (
    DeleteCarrier,
    DeleteLayout,
    EnsureBuild,
    EnsureCarrier,
    LayoutSpec,
    Plan,
    StageRouter,
    SwitchRouter,
    plan,
)
from tests.planning.test_carry_planner import ON1, ON2, V2, WRITES_ON, CarryWorld, serving_v1
from tests.planning.world import CLUSTER, run_until_settled, with_version

KEEP_TWO = WRITES_ON.rollout.model_copy(update={"keep_previous_layouts": 2})


def serving_v2_with_v1_kept() -> CarryWorld:
    """v1 -> v2 carried and done (its carrier gone), v1 kept within its rollback window."""
    world = serving_v1()
    for _ in range(40):
        world.step(V2)
        if world.confirmed == ON2.id and not world.carriers:
            break
    assert world.confirmed == ON2.id and not world.carriers and ON1.id in world.layouts
    world.generation += 1
    world.executed.clear()
    world.events.clear()
    return world


def _first(world: CarryWorld, check: type, layout: str, **attrs: object) -> int:
    for i, action in enumerate(world.executed):
        if (
            isinstance(action, check)
            and getattr(action, "layout_id", None) == layout
            and all(getattr(action, key) == value for key, value in attrs.items())
        ):
            return i
    raise AssertionError(f"no {check.__name__} of {layout} with {attrs}")


def _carry_back_of_v2_into_v1(world: CarryWorld) -> int:
    return next(
        i
        for i, a in enumerate(world.executed)
        if isinstance(a, EnsureCarrier) and a.layout_id == ON1.id and a.back and a.hand_over is not None
    )


def test_a_rollback_to_a_kept_layout_with_writes_on_is_carried_back_then_switched() -> None:
    world = serving_v2_with_v1_kept()
    first = world.step(WRITES_ON)
    (created,) = first.of_type(EnsureCarrier)
    assert (created.layout, created.source, created.back, created.prior) == (ON1, ON2, True, False)
    assert created.hand_over is None and created.open is None and created.finish is None
    assert not first.of_type(StageRouter) and not first.of_type(SwitchRouter)
    assert [e.reason for e in first.actions if getattr(e, "reason", "") == "CarryingWritesBack"] == [
        "CarryingWritesBack"
    ]
    assert "writes_carried_to_new_layout" not in [b.predicate for b in first.status.blocked_by]
    assert "traffic_after_carry_caught_up" in [b.predicate for b in first.status.blocked_by]
    progressing = next(c for c in first.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("True", "CarryingWritesBack")
    assert f"carrying the item writes layout {ON2.id} logged back into kept layout {ON1.id}" in (
        progressing.message
    )
    plans = run_until_settled(world, WRITES_ON)
    assert world.confirmed == ON1.id and set(world.layouts) == {ON1.id}, "v2 deleted after its window"
    assert not any(isinstance(a, EnsureBuild) for a in world.executed), "a carry back builds nothing"
    stage = next(
        i for i, a in enumerate(world.executed) if isinstance(a, StageRouter) and a.layout_id == ON1.id
    )
    hand_over = _carry_back_of_v2_into_v1(world)
    switch = _first(world, SwitchRouter, ON1.id)
    finish = next(
        i
        for i, a in enumerate(world.executed)
        if isinstance(a, EnsureCarrier) and a.layout_id == ON1.id and a.finish is not None
    )
    done = _first(world, DeleteCarrier, ON1.id)
    v2_gone = _first(world, DeleteLayout, ON2.id)
    assert stage < switch and hand_over < switch < finish < done < v2_gone
    assert all(a.back for a in world.executed if isinstance(a, EnsureCarrier))
    reasons = [e.reason for e in world.events]
    assert "WritesCarriedBack" in reasons and "HandOverRequested" in reasons
    assert plans[-1].requeue_after_seconds is None
    status = world.stored_status()
    assert status.blocked_by == [] and status.active_layout == ON1.id
    # v2 went, and with it the memory of the carry into it; the carry back stays while v1 exists.
    assert [(c.layout, c.from_layout, c.back, c.done, c.fenced) for c in status.carries] == [
        (ON1.id, ON2.id, True, True, False)
    ]


def test_after_the_switch_back_the_former_serving_layout_is_kept_for_its_window() -> None:
    world = serving_v2_with_v1_kept()
    for _ in range(40):
        result = world.step(WRITES_ON)
        if world.confirmed == ON1.id and not world.carriers:
            break
    assert world.confirmed == ON1.id and not world.carriers
    record = next(entry for entry in result.status.layouts if entry.name == ON2.id)
    assert record.state == "Retiring" and ON2.id in world.layouts
    assert sorted((c.layout, c.from_layout, c.back, c.done) for c in world.stored_status().carries) == sorted(
        [(ON1.id, ON2.id, True, True), (ON2.id, ON1.id, False, True)]
    )
    run_until_settled(world, WRITES_ON)
    assert set(world.layouts) == {ON1.id}


def test_the_carry_back_holds_the_former_serving_layout_until_done() -> None:
    world = serving_v2_with_v1_kept()
    world.stalled = {"finish"}
    for _ in range(60):  # far past v2's rollback window once v1 serves
        result = world.step(WRITES_ON)
    assert world.confirmed == ON1.id and ON2.id in world.layouts
    assert "keep_carry_source_until_done" in [b.predicate for b in result.status.blocked_by]
    world.stalled = set()
    run_until_settled(world, WRITES_ON)
    assert set(world.layouts) == {ON1.id}


def test_stage_and_switch_back_wait_for_caught_up_and_the_hand_over() -> None:
    world = serving_v2_with_v1_kept()
    world.stalled = {"catch_up"}
    for _ in range(8):
        result = world.step(WRITES_ON)
    assert world.confirmed == ON2.id and world.written == ON2.id
    assert not any(isinstance(a, StageRouter | SwitchRouter) for a in world.executed)
    assert world.carriers[ON1.id].hand_over is None, "nothing fenced while it catches up"
    assert "traffic_after_carry_caught_up" in [b.predicate for b in result.status.blocked_by]
    world.stalled = {"hand_over"}
    for _ in range(8):
        result = world.step(WRITES_ON)
    assert world.confirmed == ON2.id and world.carriers[ON1.id].hand_over is not None
    assert [b.predicate for b in result.status.blocked_by] == ["switch_after_hand_over"]
    world.stalled = set()
    run_until_settled(world, WRITES_ON)
    assert world.confirmed == ON1.id


def test_a_restart_at_every_step_of_a_carry_back_plans_the_same() -> None:
    """Each pass plans from the observation and the stored status alone: planning it again, as a
    freshly started operator would, gives the same actions and status at every step of the carry
    back (creation, caught up, hand-over, switch, finish, done, the kept layout's deletion)."""
    world = serving_v2_with_v1_kept()
    steps = 0
    while steps < 200:
        first: Plan = plan(CLUSTER, WRITES_ON, world.observe())
        again = plan(CLUSTER, WRITES_ON, world.observe())
        assert first.actions == again.actions and first.status == again.status
        result = world.step(WRITES_ON)
        steps += 1
        if result.requeue_after_seconds is None:
            break
    assert world.confirmed == ON1.id and set(world.layouts) == {ON1.id}


def test_a_carrier_lost_mid_carry_back_is_recreated_as_a_carry_back() -> None:
    world = serving_v2_with_v1_kept()
    world.stalled = {"hand_over"}
    for _ in range(6):
        world.step(WRITES_ON)
    assert world.carriers[ON1.id].back
    del world.carriers[ON1.id]  # deleted by hand
    result = world.step(WRITES_ON)
    (again,) = result.of_type(EnsureCarrier)
    assert again.layout == ON1 and again.source == ON2 and again.back
    world.stalled = set()
    run_until_settled(world, WRITES_ON)
    assert world.confirmed == ON1.id


def test_an_abandoned_carry_back_opens_the_fenced_leaders_before_its_layout_goes() -> None:
    """Reverted after the hand-over: the kept layout, made the target and left before it served, is
    superseded (as any abandoned rollback); it goes, its carrier with it, only once the carrier has
    opened the serving layout's leaders again."""
    world = serving_v2_with_v1_kept()
    world.stalled = {"open"}
    for _ in range(30):
        carrier = world.carriers.get(ON1.id)
        if carrier is not None and carrier.hand_over is not None:
            break
        world.step(WRITES_ON)
    world.tick()  # the back carrier fences v2's leaders and reports the hand-over
    world.generation += 1  # the rollback is reverted before the switch
    for _ in range(3):
        result = world.step(V2)
    assert world.confirmed == ON2.id and ON1.id in world.layouts
    (opening,) = result.of_type(EnsureCarrier)
    assert opening.back and opening.open is not None
    assert "open_fenced_source_before_deleting" in [b.predicate for b in result.status.blocked_by]
    assert "OpeningFencedLeaders" in [e.reason for e in world.events]
    world.stalled = set()
    run_until_settled(world, V2)
    assert set(world.layouts) == {ON2.id} and not world.carriers


def test_an_abandoned_carry_back_before_its_hand_over_goes_with_its_layout() -> None:
    world = serving_v2_with_v1_kept()
    world.stalled = {"catch_up"}
    for _ in range(3):
        world.step(WRITES_ON)
    assert world.carriers[ON1.id].back
    world.generation += 1
    result = world.step(V2)
    assert [a.layout_id for a in result.of_type(DeleteLayout)] == [ON1.id]
    assert not world.carriers and world.confirmed == ON2.id
    world.stalled = set()
    run_until_settled(world, V2)
    assert set(world.layouts) == {ON2.id}


def test_rolling_forward_again_is_a_carry_back_the_other_way() -> None:
    world = serving_v2_with_v1_kept()
    for _ in range(40):
        world.step(WRITES_ON)
        if world.confirmed == ON1.id and not world.carriers:
            break
    assert world.confirmed == ON1.id and ON2.id in world.layouts
    world.generation += 1
    result = world.step(V2)
    (created,) = result.of_type(EnsureCarrier)
    assert (created.layout, created.source, created.back, created.prior) == (ON2, ON1, True, False)
    run_until_settled(world, V2)
    assert world.confirmed == ON2.id
    assert not any(isinstance(a, EnsureBuild) and a.layout_id == ON2.id for a in world.executed[-80:])
    statuses = [(c.layout, c.from_layout, c.back, c.done) for c in world.stored_status().carries]
    # v2's own (forward) carry stays listed beside the carry back into it.
    assert statuses == [(ON2.id, ON1.id, False, True), (ON2.id, ON1.id, True, True)]


def test_a_carry_from_a_layout_carried_back_into_folds_in_its_own_carry_only() -> None:
    world = serving_v2_with_v1_kept()
    run_until_settled(world, WRITES_ON)  # v1 serves again (carried back), v2 gone
    world.generation += 1
    v3 = with_version(WRITES_ON, "v3")
    run_until_settled(world, v3)
    on3 = LayoutSpec.from_spec(v3)
    first = next(a for a in world.executed if isinstance(a, EnsureCarrier) and a.layout == on3)
    # v1 was built without a carry folder: the carry back into it is not one to fold in.
    assert first.source == ON1 and not first.back and not first.prior
    assert world.confirmed == on3.id


def test_a_rollback_past_the_kept_layouts_window_is_refused() -> None:
    world = serving_v1()
    run_until_settled(world, V2)  # v1 deleted after its window (its artifacts are stored)
    assert set(world.layouts) == {ON2.id} and ON1.id in world.artifacts
    world.generation += 1
    for _ in range(5):
        result = world.step(WRITES_ON)
    assert world.confirmed == ON2.id and not world.carriers
    (blocked,) = [b for b in result.status.blocked_by if b.predicate == "writes_carried_to_new_layout"]
    assert "a rollback to a kept layout" in blocked.reason
    assert "write logs are gone" in blocked.reason
    progressing = next(c for c in result.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("False", "WritesNotCarried")


def test_a_rollback_two_layouts_back_is_refused() -> None:
    world = serving_v2_with_v1_kept()
    world.stalled = {"finish"}  # v1 and v2 both stay kept
    v3 = with_version(WRITES_ON, "v3").model_copy(update={"rollout": KEEP_TWO})
    for _ in range(20):
        world.step(v3)
    on3 = LayoutSpec.from_spec(v3)
    assert world.confirmed == on3.id and ON1.id in world.layouts
    world.stalled = set()
    for _ in range(3):
        world.step(v3)  # the carry into v3 is done
    world.generation += 1
    for _ in range(3):
        result = world.step(WRITES_ON.model_copy(update={"rollout": KEEP_TWO}))
    assert world.confirmed == on3.id and ON1.id not in world.carriers
    (blocked,) = [b for b in result.status.blocked_by if b.predicate == "writes_carried_to_new_layout"]
    assert f"layout {on3.id} was carried from layout {ON2.id}, not from layout {ON1.id}" in blocked.reason


def test_a_carry_back_whose_hand_over_never_reports_times_out_and_opens_the_leaders() -> None:
    """rollout.timeoutSeconds bounds a carry back like a forward carry: the kept layout, made the
    target, is abandoned (and deleted: Failed) once its carry waited that long after it turned
    Ready; the hand-over it asked for may have fenced the serving layout's leaders, so they are
    opened first. The serving layout keeps serving and taking writes."""
    world = serving_v2_with_v1_kept()
    world.stalled = {"hand_over", "open"}
    for _ in range(90):
        result = world.step(WRITES_ON)
        record = next(entry for entry in result.status.layouts if entry.name == ON1.id)
        if record.state == "Failed":
            break
    assert record.state == "Failed" and "not carried within 600s" in record.message
    assert "hand-over" in record.message
    for _ in range(5):
        result = world.step(WRITES_ON)
    assert ON1.id in world.layouts and world.carriers[ON1.id].open is not None
    assert "open_fenced_source_before_deleting" in [b.predicate for b in result.status.blocked_by]
    world.stalled = set()
    run_until_settled(world, WRITES_ON)
    assert world.confirmed == ON2.id and set(world.layouts) == {ON2.id} and not world.carriers
    opened = next(
        i
        for i, a in enumerate(world.executed)
        if isinstance(a, EnsureCarrier) and a.layout_id == ON1.id and a.open is not None
    )
    assert opened < _first(world, DeleteLayout, ON1.id)
    assert not any(isinstance(a, SwitchRouter) and a.layout_id == ON1.id for a in world.executed)
