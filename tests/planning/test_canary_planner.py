"""The canary inside the planner: the switch waits for every step, a failing step rolls the
candidate back (Event, condition, numbers in status), commands, pause, and restarts at every pass
(the fake world persists the status as JSON, so each pass starts from what a fresh process reads)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shardrec.api.canary import CanaryStats
from shardrec.api.v1alpha1 import RecommenderClusterSpec
from shardrec.planning import LayoutSpec, Observed, Plan, RecordEvent, SwitchRouter, plan
from shardrec.planning.actions import DeleteLayout, RouteCanary, StageRouter
from tests.planning.world import (
    CLUSTER,
    FakeWorld,
    assert_invariants,
    make_spec,
    run_until_settled,
    with_version,
)

STEPS = [
    {"shadow": {"sampleRate": 0.2}, "minDurationSeconds": 20, "minRequests": 50},
    {"weight": 5, "minDurationSeconds": 20, "minRequests": 50},
    {"weight": 25, "minDurationSeconds": 20, "minRequests": 50},
]


def canary_spec(version: str = "v1", **changes: Any) -> RecommenderClusterSpec:
    rollout = {"strategy": "Canary", "canary": {"steps": STEPS}, "timeoutSeconds": 600}
    return with_version(make_spec(rollout=rollout, **changes), version)


Measure = Callable[[str, int], CanaryStats]


def healthy(layout: str, step: int) -> CanaryStats:
    return CanaryStats(
        layout=layout,
        step=step,
        requests=60,
        compared=60,
        overlap_sum=0.8 * 60,
        active_requests=600,
        candidate_p99_ms=4.0,
        active_p99_ms=4.0,
    )


def shuffled(layout: str, step: int) -> CanaryStats:
    return CanaryStats(layout=layout, step=step, requests=60, compared=60, overlap_sum=0.6)


@dataclass
class CanaryWorld(FakeWorld):
    """The fake hands plus routers that apply RouteCanary and measure the step it names."""

    measure: Measure = healthy
    command: str | None = None
    canary_section: RouteCanary | None = None
    routed: list[RouteCanary] = field(default_factory=list)

    def observe(self) -> Observed:
        observed = super().observe()
        section = self.canary_section
        reports = (
            ()
            if section is None or section.layout is None
            else (self.measure(section.layout.id, section.step),)
        )
        return replace(observed, canary_reports=reports, canary_command=self.command)

    def execute(self, action: Any) -> None:
        if isinstance(action, RouteCanary):
            self.routed.append(action)
            self.canary_section = action
            self.executed.append(action)
            return
        if isinstance(action, SwitchRouter) and self.confirmed is not None:
            section = self.canary_section
            assert (
                section is not None and section.layout is not None and section.layout.id == action.layout_id
            ), "switched to a candidate that did not go through its canary"
        super().execute(action)


def check(world: FakeWorld, result: Plan) -> None:
    assert_invariants(world, result)
    # Deterministic: planning the same observation again (a restart mid-pass) gives the same plan.
    assert plan(CLUSTER, world_spec[0], world.observe()) == result


world_spec: list[RecommenderClusterSpec] = []


def settle(world: CanaryWorld, spec: RecommenderClusterSpec) -> list[Plan]:
    world_spec[:] = [spec]
    return run_until_settled(world, spec, check=check)


def serve_v1(measure: Measure = healthy) -> CanaryWorld:
    world = CanaryWorld(measure=measure)
    settle(world, canary_spec("v1"))
    assert world.serving_version() == "v1"  # a first layout has nothing to compare with: switched at once
    assert world.routed == [] and world.stored_status().canary is None
    return world


def test_a_good_candidate_goes_through_every_step_before_the_switch() -> None:
    world = serve_v1()
    spec = canary_spec("v2")
    plans = settle(world, spec)
    assert world.serving_version() == "v2"
    running = [r for r in world.routed if r.layout is not None]
    steps = [(r.step, r.weight, r.sample_rate) for r in running]
    assert list(dict.fromkeys(steps)) == [(0, 0, 0.2), (1, 5, 0.1), (2, 25, 0.1)]
    assert world.routed[-1].layout is None  # the canary section is cleared after promotion
    status = world.stored_status()
    assert status.canary is not None and status.canary.phase == "Promoted"
    assert status.canary.analysis is not None and status.canary.analysis.overlap_at10 == 0.8
    reasons = [e.reason for e in world.events if e.reason.startswith("Canary")]
    assert reasons == ["CanaryStarted", "CanaryStepPassed", "CanaryStepPassed", "CanaryPromoted"]
    # Progressing says where the canary is while it runs.
    messages = [p.status.conditions[1].message for p in plans if p.status.conditions[1].reason == "Canary"]
    assert any("step 2/3 (weight 5%)" in m for m in messages)
    switch_at = next(i for i, p in enumerate(plans) if p.of_type(SwitchRouter))
    assert all(not p.of_type(SwitchRouter) for p in plans[:switch_at])
    assert not [c for c in status.conditions if c.type == "CanaryRolledBack" and c.status == "True"]


def test_a_shuffled_candidate_is_rolled_back_and_v1_never_stops_serving() -> None:
    world = serve_v1(measure=shuffled)
    spec = canary_spec("v2")
    v2 = LayoutSpec.from_spec(spec).id
    plans = settle(world, spec)
    assert world.serving_version() == "v1"
    assert all(not p.of_type(SwitchRouter) for p in plans)
    status = world.stored_status()
    assert status.phase == "Failed"
    assert status.canary is not None and status.canary.phase == "RolledBack" and status.canary.step == 0
    assert status.canary.analysis is not None and status.canary.analysis.overlap_at10 == 0.01
    condition = next(c for c in status.conditions if c.type == "CanaryRolledBack")
    assert (condition.status, condition.reason) == ("True", "AnalysisFailed")
    assert "overlap@10 0.010 < 0.3" in condition.message
    warnings = [e for e in world.events if e.type == "Warning" and e.reason == "CanaryRolledBack"]
    assert len(warnings) == 1 and "overlap@10" in warnings[0].message
    assert world.routed[-1].layout is None and world.routed[-1].unstage == v2
    assert any(isinstance(a, DeleteLayout) and a.layout_id == v2 for p in plans for a in p.actions)
    assert v2 not in world.layouts
    # Not retried in this generation; a new spec (v3) starts a new canary and clears the condition.
    world.generation += 1
    world.measure = healthy
    settle(world, canary_spec("v3"))
    assert world.serving_version() == "v3"
    final = world.stored_status()
    condition = next(c for c in final.conditions if c.type == "CanaryRolledBack")
    assert condition.status == "False"


def test_abort_command_rolls_back_and_promote_command_switches_at_once() -> None:
    world = serve_v1()
    spec = canary_spec("v2")
    world_spec[:] = [spec]
    for _ in range(6):
        world.step(spec, check)
    status = world.stored_status()
    assert status.canary is not None and status.canary.phase == "Running"
    world.command = "abort"
    settle(world, spec)
    assert world.serving_version() == "v1"
    final = world.stored_status()
    assert final.canary is not None and final.canary.phase == "Aborted"
    assert any(e.reason == "CanaryAborted" for e in world.events)
    condition = next(c for c in final.conditions if c.type == "CanaryRolledBack")
    assert (condition.status, condition.reason) == ("True", "Aborted")

    world.command = None  # the next canary must not be aborted by a stale annotation
    world.generation += 1
    spec = canary_spec("v3")
    world_spec[:] = [spec]
    for _ in range(6):
        world.step(spec, check)
    assert world.serving_version() == "v1"
    world.command = "promote"
    world.step(spec, check)
    status = world.stored_status()
    assert status.canary is not None and status.canary.phase == "Promoted"
    settle(world, spec)
    assert world.serving_version() == "v3"


def test_a_stale_command_does_not_apply_to_a_new_canary() -> None:
    world = serve_v1(measure=shuffled)
    world.command = "promote"  # left over from an earlier canary
    settle(world, canary_spec("v2"))
    assert world.serving_version() == "v1"
    status = world.stored_status()
    assert status.canary is not None and status.canary.phase == "RolledBack"
    assert status.canary.ignored_command == "promote"


def test_paused_freezes_the_canary_where_it_is() -> None:
    world = serve_v1()
    spec = canary_spec("v2")
    world_spec[:] = [spec]
    for _ in range(6):
        world.step(spec, check)
    before = world.stored_status().canary
    assert before is not None and before.phase == "Running"
    paused = spec.model_copy(update={"paused": True})
    world_spec[:] = [paused]
    for _ in range(5):
        result = world.step(paused, check)
        assert not result.of_type(RouteCanary) and not result.of_type(SwitchRouter)
    assert world.stored_status().canary == before


def test_blue_green_never_routes_a_canary() -> None:
    world = FakeWorld()
    spec = make_spec()
    run_until_settled(world, spec)
    plans = run_until_settled(world, with_version(spec, "v2"))
    assert world.serving_version() == "v2"
    assert not [a for p in plans for a in p.actions if isinstance(a, RouteCanary)]
    assert all(p.status.canary is None for p in plans)
    assert not [e for e in world.events if isinstance(e, RecordEvent) and e.reason.startswith("Canary")]
    assert all(not p.of_type(StageRouter) or p.of_type(SwitchRouter) for p in plans)
