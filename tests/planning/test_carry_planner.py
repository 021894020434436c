"""The carry of logged item writes into a new layout, driven by the planner through a carrier
(`shardrec.planning.carrying`): hands that run carriers (the operator) change the layout with
writes on; each step waits for what the carrier reports.

`CarryWorld` plays a carrier per carrying layout next to `FakeWorld`'s hands. Every pass plans
from the observation and the stored status alone (a JSON round trip), so every pass is also what
an operator restarted at that step would do; `test_a_restart_at_every_step_plans_the_same` checks
it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from shardrec.api.carry import CarryProgress
from shardrec.api.v1alpha1 import LayoutStatus
from shardrec.planning import (
    Action,
    DeleteCarrier,
    DeleteLayout,
    EnsureBuild,
    EnsureCarrier,
    LayoutSpec,
    Observed,
    ObservedCarrier,
    Plan,
    StageRouter,
    SwitchRouter,
    plan,
)
from shardrec.planning.timestamps import parse_time
from tests.planning.world import CLUSTER, FakeWorld, make_spec, run_until_settled, with_version

WRITES_ON = make_spec(writes={"enabled": True})
V2 = with_version(WRITES_ON, "v2")
V2_THREE_SHARDS = V2.model_copy(update={"shards": 3})
ON1, ON2 = LayoutSpec.from_spec(WRITES_ON), LayoutSpec.from_spec(V2)


@dataclass
class FakeCarrier:
    """One carrier: it carries out each request a tick after it appears (unless stalled)."""

    source: str
    hand_over: str | None = None
    open: str | None = None
    finish: str | None = None
    progress: CarryProgress | None = None
    back: bool = False


@dataclass
class CarryWorld(FakeWorld):
    carriers: dict[str, FakeCarrier] = field(default_factory=dict)
    stalled: set[str] = field(default_factory=set)
    """Carrier steps that do not happen: cut, catch_up, hand_over, open, finish."""
    fail_hand_over: bool = False

    def observe(self) -> Observed:
        carriers = tuple(
            ObservedCarrier(
                layout=layout,
                source=carrier.source,
                hand_over_requested=carrier.hand_over,
                open_requested=carrier.open,
                finish_requested=carrier.finish,
                progress=carrier.progress,
                back=carrier.back,
            )
            for layout, carrier in sorted(self.carriers.items())
        )
        return replace(super().observe(), runs_carriers=True, carriers=carriers)

    def execute(self, action: Action) -> None:
        if isinstance(action, EnsureBuild):
            carrier = self.carriers.get(action.layout_id)
            assert carrier is None or not carrier.back, "built a layout carried back into"
        if isinstance(action, EnsureCarrier) and action.back and action.layout_id not in self.carriers:
            into_source = self.carriers.get(action.source.id)
            assert into_source is None or (into_source.progress is not None and into_source.progress.done), (
                "a carry back started while the carry into its source still forwards"
            )
        if isinstance(action, EnsureBuild) and action.carry_from is not None:
            carrier = self.carriers.get(action.layout_id)
            assert (
                carrier is not None and carrier.progress is not None and carrier.progress.cut is not None
            ), "a carried build started before the cut"
        if isinstance(action, SwitchRouter) and action.layout_id in self.carriers:
            carrier = self.carriers[action.layout_id]
            assert carrier.progress is not None and carrier.hand_over is not None
            assert carrier.progress.handed_over == carrier.hand_over, "switched before the hand-over"
        if isinstance(action, DeleteLayout):
            for layout, carrier in self.carriers.items():
                if carrier.source == action.layout_id and layout == self.confirmed:
                    assert carrier.progress is not None and carrier.progress.done, (
                        "deleted a layout whose writes are still carried"
                    )
            carrier = self.carriers.get(action.layout_id)
            if carrier is not None and carrier.progress is not None and carrier.source in self.layouts:
                progress = carrier.progress
                fenced = carrier.hand_over is not None and progress.handed_over == carrier.hand_over
                opened = carrier.open is not None and progress.opened == carrier.open
                assert not fenced or opened, "deleted the carrier that fenced the serving layout"
            self.carriers.pop(action.layout_id, None)  # the carrier goes with its layout
        super().execute(action)
        if isinstance(action, EnsureCarrier):
            carrier = self.carriers.setdefault(action.layout_id, FakeCarrier(action.source.id))
            carrier.source, carrier.back = action.source.id, action.back
            carrier.hand_over, carrier.open, carrier.finish = action.hand_over, action.open, action.finish
        elif isinstance(action, DeleteCarrier):
            self.carriers.pop(action.layout_id)

    def tick(self) -> None:
        super().tick()
        for layout, carrier in self.carriers.items():
            progress = carrier.progress or CarryProgress(
                to_layout=layout, from_layout=carrier.source, phase="cutting"
            )
            update: dict[str, object] = {}
            if carrier.back:  # no cut: the kept layout's leaders are opened, the logs forwarded from 0
                if progress.phase == "cutting":
                    update.update(phase="forwarding", after=[0, 0])
                elif not progress.caught_up and "catch_up" not in self.stalled:
                    update.update(caught_up=True, after=[5, 6])
            elif progress.cut is None and "cut" not in self.stalled:
                update.update(cut=[3, 4], after=[3, 4], phase="forwarding")
            elif progress.cut is not None and not progress.caught_up and "catch_up" not in self.stalled:
                update.update(caught_up=True)
            if carrier.hand_over is not None and "hand_over" not in self.stalled:
                if self.fail_hand_over and progress.hand_over_failed != carrier.hand_over:
                    update.update(hand_over_failed=carrier.hand_over, message="leader 1 did not answer")
                elif not self.fail_hand_over:
                    update.update(handed_over=carrier.hand_over)
            if carrier.open is not None and "open" not in self.stalled:
                update.update(opened=carrier.open)
            if carrier.finish is not None and "finish" not in self.stalled:
                update.update(done=True, phase="done")
            carrier.progress = progress.model_copy(update=update)


def _executed(world: CarryWorld, kind: type[Action]) -> list[int]:
    return [i for i, action in enumerate(world.executed) if isinstance(action, kind)]


def serving_v1() -> CarryWorld:
    world = CarryWorld()
    run_until_settled(world, WRITES_ON)
    assert world.confirmed == ON1.id and not world.carriers
    world.generation += 1
    return world


def test_a_new_version_with_writes_on_is_carried_cut_build_catch_up_hand_over_switch_done() -> None:
    world = serving_v1()
    plans = run_until_settled(world, V2)
    assert world.confirmed == ON2.id and set(world.layouts) == {ON2.id}
    assert not world.carriers  # deleted once done
    ensure = [a for a in world.executed if isinstance(a, EnsureCarrier)]
    assert ensure[0].layout == ON2 and ensure[0].source == ON1 and ensure[0].hand_over is None
    builds = [a for a in world.executed if isinstance(a, EnsureBuild) and a.layout_id == ON2.id]
    assert builds and all(b.carry_from == ON1.id for b in builds)
    first_carrier, first_build = (
        _executed(world, EnsureCarrier)[0],
        _executed(world, EnsureBuild)[-len(builds)],
    )
    assert first_carrier < first_build
    hand_over = next(i for i, a in enumerate(world.executed) if isinstance(a, EnsureCarrier) and a.hand_over)
    switch = next(
        i for i, a in enumerate(world.executed) if isinstance(a, SwitchRouter) and a.layout_id == ON2.id
    )
    finish = next(i for i, a in enumerate(world.executed) if isinstance(a, EnsureCarrier) and a.finish)
    done = _executed(world, DeleteCarrier)[0]
    old_gone = next(
        i for i, a in enumerate(world.executed) if isinstance(a, DeleteLayout) and a.layout_id == ON1.id
    )
    assert hand_over < switch < finish < done
    assert finish < old_gone
    status = world.stored_status()
    assert [(c.layout, c.from_layout, c.done, c.fenced) for c in status.carries] == [
        (ON2.id, ON1.id, True, False)
    ]
    assert status.blocked_by == [] and status.active_version == "v2"
    assert plans[-1].requeue_after_seconds is None


def test_a_new_shard_count_is_carried_too() -> None:
    world = serving_v1()
    run_until_settled(world, V2_THREE_SHARDS)
    three = LayoutSpec.from_spec(V2_THREE_SHARDS)
    assert world.confirmed == three.id
    assert any(isinstance(a, EnsureCarrier) and a.layout == three for a in world.executed)


def test_the_build_waits_for_the_cut() -> None:
    world = serving_v1()
    world.stalled = {"cut"}
    for _ in range(5):
        result = world.step(V2)
    assert not any(isinstance(a, EnsureBuild) and a.layout_id == ON2.id for a in world.executed)
    assert [b.predicate for b in result.status.blocked_by] == ["build_after_carry_cut"]
    assert "cut the write logs of layout" in result.status.blocked_by[0].reason
    progressing = next(c for c in result.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("True", "WaitingForBuild")
    world.stalled = set()
    run_until_settled(world, V2)
    assert world.confirmed == ON2.id


def test_stage_and_switch_wait_until_the_carrier_caught_up() -> None:
    world = serving_v1()
    world.stalled = {"catch_up"}
    for _ in range(12):
        result = world.step(V2)
    assert world.layouts[ON2.id].build_state == "Succeeded"
    assert not any(
        isinstance(a, StageRouter | SwitchRouter) and a.layout_id == ON2.id for a in world.executed
    )
    assert "traffic_after_carry_caught_up" in [b.predicate for b in result.status.blocked_by]
    assert world.carriers[ON2.id].hand_over is None  # nothing fenced while it catches up
    world.stalled = set()
    run_until_settled(world, V2)
    assert world.confirmed == ON2.id


def test_the_switch_waits_for_the_hand_over_and_asks_again_after_a_failure() -> None:
    world = serving_v1()
    world.stalled = {"hand_over"}
    for _ in range(12):
        result = world.step(V2)
    requested = world.carriers[ON2.id].hand_over
    assert requested is not None and world.confirmed == ON1.id
    assert [b.predicate for b in result.status.blocked_by] == ["switch_after_hand_over"]
    assert f"hand-over {requested}" in result.status.blocked_by[0].reason
    world.stalled = set()
    world.fail_hand_over = True
    world.step(V2)  # the carrier reports the failure at the tick
    result = world.step(V2)
    again = world.carriers[ON2.id].hand_over
    assert again is not None and again != requested  # a new request: the failed one is not reused
    assert "failed (leader 1 did not answer)" in result.status.blocked_by[0].reason or world.written != ON2.id
    world.fail_hand_over = False
    run_until_settled(world, V2)
    assert world.confirmed == ON2.id


def test_the_old_layout_stays_until_the_carrier_is_done() -> None:
    world = serving_v1()
    world.stalled = {"finish"}
    for _ in range(60):  # far past the rollback window (300 s at 10 s a tick)
        result = world.step(V2)
    assert world.confirmed == ON2.id and ON1.id in world.layouts
    assert world.carriers[ON2.id].finish is not None
    assert "keep_carry_source_until_done" in [b.predicate for b in result.status.blocked_by]
    world.stalled = set()
    run_until_settled(world, V2)
    assert set(world.layouts) == {ON2.id}


def test_a_rollback_before_the_carry_into_the_serving_layout_is_done_waits_for_it() -> None:
    world = serving_v1()
    world.stalled = {"finish"}  # the carry into v2 never reports done; v1 stays kept
    for _ in range(12):
        world.step(V2)
    assert world.confirmed == ON2.id
    world.generation += 1
    for _ in range(5):
        result = world.step(WRITES_ON)
    assert world.confirmed == ON2.id
    assert not world.carriers[ON2.id].progress.done  # type: ignore[union-attr]
    assert not world.carriers.get(ON1.id), "no carry back while the carry into layout 2 forwards"
    blocked = {b.predicate: b.reason for b in result.status.blocked_by}
    assert "carry_back_after_carry_into_serving_done" in blocked
    assert (
        f"carry into layout {ON2.id} from layout {ON1.id} to be done"
        in (blocked["carry_back_after_carry_into_serving_done"])
    )
    assert "writes_carried_to_new_layout" not in blocked
    progressing = next(c for c in result.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("True", "CarryingWritesBack")
    world.stalled = set()
    run_until_settled(world, WRITES_ON)
    assert world.confirmed == ON1.id and set(world.layouts) == {ON1.id}


def test_an_abandoned_switch_opens_the_fenced_leaders_before_its_carrier_goes() -> None:
    world = serving_v1()
    for _ in range(30):
        carrier = world.carriers.get(ON2.id)
        if carrier is not None and carrier.hand_over is not None:
            break
        world.step(V2)
    world.stalled = {"open"}
    world.tick()  # the carrier fences layout 1 and reports the hand-over
    carrier = world.carriers[ON2.id]
    assert carrier.progress is not None and carrier.progress.handed_over == carrier.hand_over
    world.generation += 1  # reverted before the switch: layout 2 is superseded
    result = world.step(WRITES_ON)
    assert world.confirmed == ON1.id
    assert ON2.id in world.layouts and carrier.open is not None
    assert "open_fenced_source_before_deleting" in [b.predicate for b in result.status.blocked_by]
    assert [c.fenced for c in world.stored_status().carries] == [True]
    world.stalled = set()
    run_until_settled(world, WRITES_ON)
    assert set(world.layouts) == {ON1.id} and not world.carriers
    assert world.stored_status().carries == []


def test_a_carrier_lost_after_the_hand_over_is_recreated_to_open_the_leaders() -> None:
    world = serving_v1()
    for _ in range(30):
        carrier = world.carriers.get(ON2.id)
        if carrier is not None and carrier.hand_over is not None:
            break
        world.step(V2)
    world.stalled = {"open"}
    world.tick()
    world.generation += 1
    world.step(WRITES_ON)  # remembers the fence in status.carries
    del world.carriers[ON2.id]  # deleted by hand
    result = world.step(WRITES_ON)
    (again,) = [a for a in result.actions if isinstance(a, EnsureCarrier)]
    assert again.layout == ON2 and again.open is not None
    world.stalled = set()
    run_until_settled(world, WRITES_ON)
    assert set(world.layouts) == {ON1.id}


def test_a_carrier_lost_after_the_switch_is_recreated_and_still_holds_the_old_layout() -> None:
    world = serving_v1()
    world.stalled = {"finish"}
    for _ in range(12):
        world.step(V2)
    assert world.confirmed == ON2.id
    del world.carriers[ON2.id]
    result = world.step(V2)
    assert any(isinstance(a, EnsureCarrier) and a.layout == ON2 and a.finish for a in result.actions)
    assert ON1.id in world.layouts
    world.stalled = set()
    run_until_settled(world, V2)
    assert set(world.layouts) == {ON2.id}


def test_a_chain_folds_in_the_prior_carry() -> None:
    world = serving_v1()
    run_until_settled(world, V2)
    world.generation += 1
    v3 = with_version(WRITES_ON, "v3")
    run_until_settled(world, v3)
    on3 = LayoutSpec.from_spec(v3)
    first = next(a for a in world.executed if isinstance(a, EnsureCarrier) and a.layout == on3)
    assert first.source == ON2 and first.prior
    second = next(a for a in world.executed if isinstance(a, EnsureCarrier) and a.layout == ON2)
    assert not second.prior
    assert world.confirmed == on3.id


def test_a_restart_at_every_step_plans_the_same() -> None:
    """Each pass plans from the observation and the stored status alone: planning it again, as a
    freshly started operator would, gives the same actions and status at every step."""
    world = serving_v1()
    steps = 0
    while steps < 200:
        observed = world.observe()
        first: Plan = plan(CLUSTER, V2, observed)
        again = plan(CLUSTER, V2, world.observe())
        assert first.actions == again.actions and first.status == again.status
        result = world.step(V2)
        steps += 1
        if result.requeue_after_seconds is None:
            break
    assert world.confirmed == ON2.id


def test_without_writes_nothing_is_carried() -> None:
    world = CarryWorld()
    off = make_spec()
    run_until_settled(world, off)
    world.generation += 1
    run_until_settled(world, with_version(off, "v2"))
    assert not any(isinstance(a, EnsureCarrier) for a in world.executed)
    assert world.stored_status().carries == []


def test_a_target_superseded_before_its_cut_loses_its_carrier_and_the_new_one_gets_its_own() -> None:
    world = serving_v1()
    world.stalled = {"cut"}
    for _ in range(3):
        world.step(V2)
    assert set(world.carriers) == {ON2.id} and ON2.id not in world.layouts  # no Job yet: not a layout
    world.generation += 1
    world.stalled = set()
    v3 = with_version(WRITES_ON, "v3")
    result = world.step(v3)
    assert [a.layout_id for a in result.actions if isinstance(a, DeleteCarrier)] == [ON2.id]
    run_until_settled(world, v3)
    assert world.confirmed == LayoutSpec.from_spec(v3).id and not world.carriers


def test_a_target_revived_after_its_leaders_were_opened_is_handed_over_anew() -> None:
    world = serving_v1()
    for _ in range(30):
        carrier = world.carriers.get(ON2.id)
        if carrier is not None and carrier.hand_over is not None:
            break
        world.step(V2)
    world.tick()  # handed over: layout 1's leaders fenced
    first = world.carriers[ON2.id].hand_over
    world.generation += 1
    world.step(WRITES_ON)  # reverted before the switch: open requested; opened at the tick
    assert world.carriers[ON2.id].progress.opened == world.carriers[ON2.id].open  # type: ignore[union-attr]
    world.generation += 1
    result = world.step(V2)  # back to layout 2 before it was deleted
    assert not result.of_type(SwitchRouter), "the old hand-over was undone: no switch on it"
    (ensure,) = result.of_type(EnsureCarrier)
    assert ensure.open is None and ensure.hand_over is not None and ensure.hand_over != first
    run_until_settled(world, V2)
    assert world.confirmed == ON2.id


def test_a_carrier_that_never_cuts_times_the_rollout_out_and_goes() -> None:
    world = serving_v1()
    world.stalled = {"cut"}
    for _ in range(70):  # past rollout.timeoutSeconds (600 s at 10 s a tick)
        result = world.step(V2)
    record = next(entry for entry in result.status.layouts if entry.name == ON2.id)
    assert record.state == "Failed" and "not built and ready within 600s" in record.message
    assert not world.carriers, "the abandoned carrier goes by itself (its layout has no Job)"
    assert world.confirmed == ON1.id


def _ready_since(world: CarryWorld) -> datetime:
    """Steps layout 2 (carried) until its record is Ready; the time it turned Ready."""
    for _ in range(80):
        result = world.step(V2)
        record = next((entry for entry in result.status.layouts if entry.name == ON2.id), None)
        if record is not None and record.state == "Ready":
            return parse_time(record.state_since)
    raise AssertionError("layout 2 never turned Ready")


def _timed_out(world: CarryWorld, since: datetime) -> LayoutStatus:
    """Steps until layout 2's record is Failed; checks it held for rollout.timeoutSeconds after
    `since` (the carry's clock starts when the layout turned Ready, not when it was planned)."""
    for _ in range(90):
        result = world.step(V2)
        record = next(entry for entry in result.status.layouts if entry.name == ON2.id)
        if record.state == "Failed":
            assert parse_time(record.state_since) - since >= timedelta(seconds=600)
            return record
    raise AssertionError("the stuck carry never timed out")


def test_a_carrier_that_never_catches_up_times_the_rollout_out_and_the_old_layout_keeps_serving() -> None:
    world = serving_v1()
    world.stalled = {"catch_up"}
    since = _ready_since(world)
    record = _timed_out(world, since)
    assert "not carried within 600s (rollout.timeoutSeconds)" in record.message
    assert "caught up" in record.message
    assert any(e.reason == "RolloutTimedOut" for e in world.events)
    assert not any(
        isinstance(a, StageRouter | SwitchRouter) and a.layout_id == ON2.id for a in world.executed
    )
    # Nothing was fenced, nothing is opened: the carrier went with its layout at once.
    assert not any(isinstance(a, EnsureCarrier) and (a.hand_over or a.open) for a in world.executed)
    assert ON2.id not in world.layouts and ON2.id not in world.carriers
    run_until_settled(world, V2)
    assert world.confirmed == ON1.id and set(world.layouts) == {ON1.id}
    assert not world.carriers, "the carrier goes with its abandoned layout"
    assert world.stored_status().carries == []


def test_a_hand_over_that_never_reports_times_out_and_the_leaders_are_opened_before_the_layout_goes() -> None:
    world = serving_v1()
    world.stalled = {"hand_over", "open"}
    since = _ready_since(world)
    record = _timed_out(world, since)
    assert "not carried within 600s" in record.message and "hand-over" in record.message
    carrier = world.carriers[ON2.id]
    assert carrier.hand_over is not None and carrier.open is not None
    # The carrier never said whether it fenced layout 1's leaders: they may be. Layout 2 (and its
    # carrier with it) stays until the carrier reports them opened.
    for _ in range(10):
        result = world.step(V2)
    assert ON2.id in world.layouts and world.confirmed == ON1.id
    assert "open_fenced_source_before_deleting" in [b.predicate for b in result.status.blocked_by]
    assert [c.fenced for c in world.stored_status().carries] == [True]
    world.stalled = set()
    run_until_settled(world, V2)
    opened = next(
        i for i, a in enumerate(world.executed) if isinstance(a, EnsureCarrier) and a.open is not None
    )
    gone = next(
        i for i, a in enumerate(world.executed) if isinstance(a, DeleteLayout) and a.layout_id == ON2.id
    )
    assert opened < gone
    assert world.confirmed == ON1.id and set(world.layouts) == {ON1.id} and not world.carriers
    assert not any(isinstance(a, SwitchRouter) and a.layout_id == ON2.id for a in world.executed)


def test_a_hand_over_that_keeps_failing_times_out_too() -> None:
    world = serving_v1()
    world.fail_hand_over = True
    since = _ready_since(world)
    record = _timed_out(world, since)
    assert "hand-over" in record.message
    world.fail_hand_over = False
    run_until_settled(world, V2)
    assert world.confirmed == ON1.id and set(world.layouts) == {ON1.id}


def test_a_slow_build_leaves_the_carry_its_whole_timeout() -> None:
    """The carrier forwards only once every new replica is ready: its wait is counted from the
    layout turning Ready, so a build that took most of rollout.timeoutSeconds does not abandon a
    carry that is still catching up."""
    world = serving_v1()
    world.build_ticks = 55  # 550 s of the 600 s
    world.stalled = {"catch_up"}
    _ready_since(world)
    for _ in range(10):  # 100 s after Ready: past 600 s since the layout was planned
        result = world.step(V2)
    record = next(entry for entry in result.status.layouts if entry.name == ON2.id)
    assert record.state == "Ready"
    world.stalled = set()
    run_until_settled(world, V2)
    assert world.confirmed == ON2.id


def test_a_timed_out_carry_is_forgotten_with_its_layout_and_a_retry_never_resumes_it() -> None:
    """A carry abandoned after it forwarded writes into shards that are now deleted must not be
    resumed by a retry of the same layout: its progress counts records those shards took (a
    rebuilt or reused artifact holds only the cut). Once the layout is gone the carry is
    forgotten; a retry is a rollback to a layout whose replicas are gone, which is refused."""
    world = serving_v1()
    world.stalled = {"catch_up"}
    _timed_out(world, _ready_since(world))
    run_until_settled(world, V2)
    assert world.stored_status().carries == [] and ON2.id not in world.layouts
    world.generation += 1  # "change the spec to retry"
    world.stalled = set()
    for _ in range(10):
        result = world.step(V2)
    assert not any(isinstance(a, EnsureCarrier) and a.layout == ON2 for a in result.actions)
    assert world.confirmed == ON1.id
    assert "writes_carried_to_new_layout" in [b.predicate for b in result.status.blocked_by]
