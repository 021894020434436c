"""Canary rollouts on Kubernetes: the operator writes the topology's canary section while the
candidate is staged, reads every router's measurements from its pod annotation, and runs the same
canary state machine as the local runtime: a good candidate is promoted after its steps, a bad one
rolled back (unstaged, deleted), and `shardrec.io/canary-command: abort` ends a canary by hand.

The routers are the doubles of test_router_acknowledgements.py, which also report measurements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardrec.api.topology import ROUTER_SERVING_ANNOTATION, RouterServing
from shardrec.api.v1alpha1 import CANARY_COMMAND_ANNOTATION
from shardrec_operator.reconcile import resources as kinds
from tests.controller.samples import NAMESPACE, body
from tests.controller.test_router_acknowledgements import ROUTERS, ack, add_routers
from tests.controller.world import World

STEPS = [
    {"shadow": {"sampleRate": 0.5}, "minDurationSeconds": 10, "minRequests": 40},
    {"weight": 20, "minDurationSeconds": 10, "minRequests": 40},
]
CANARY = {
    "strategy": "Canary",
    "keepPreviousLayouts": 0,
    "drainSeconds": 0,
    "rollbackWindowSeconds": 30,
    "canary": {"steps": STEPS},
}

Measure = Callable[[str, int], dict[str, Any]]


def good(layout: str, step: int) -> dict[str, Any]:
    """One router's sums for the step: 30 answers (two routers: 60 >= minRequests)."""
    return {"layout": layout, "step": step, "requests": 30, "compared": 30, "overlapSum": 24.0}


def shuffled(layout: str, step: int) -> dict[str, Any]:
    return {"layout": layout, "step": step, "requests": 30, "compared": 30, "overlapSum": 0.3}


def report_canary(world: World, measure: Measure) -> None:
    """What each router reports on its pod while the topology names a canary."""
    topology = world.topology()
    assert topology is not None
    for name in ROUTERS:
        pod = world.api.get(kinds.POD, NAMESPACE, name)
        assert pod is not None
        annotations = pod["metadata"]["annotations"]
        serving = RouterServing.model_validate_json(annotations[ROUTER_SERVING_ANNOTATION])
        canary = topology.canary
        stats = measure(canary.layout, canary.step) if canary is not None else None
        annotations[ROUTER_SERVING_ANNOTATION] = serving.model_copy(
            update={"canary": stats}
        ).model_dump_json()
        world.api.put(pod)


def serving_v1() -> World:
    world = World(body(rollout=CANARY))
    add_routers(world)
    for _ in range(12):
        world.reconcile()
        ack(world, *ROUTERS)
    assert world.status["phase"] == "Ready" and world.status.get("canary") is None
    return world


def roll_v2(world: World, measure: Measure, passes: int, *, switch: bool = True) -> list[Any]:
    world.change(index={"version": "v2"})
    canaries = []
    for _ in range(passes):
        world.reconcile()
        ack(world, *ROUTERS, switch=switch)
        report_canary(world, measure)
        topology = world.topology()
        canaries.append(topology.canary if topology is not None else None)
    return canaries


def test_a_good_candidate_is_promoted_after_its_steps_from_the_routers_reports() -> None:
    world = serving_v1()
    old = world.status["activeLayout"]
    canaries = roll_v2(world, good, 30)
    steps = [(c.step, c.weight, c.sample_rate) for c in canaries if c is not None]
    assert list(dict.fromkeys(steps)) == [(0, 0, 0.5), (1, 20, 0.1)]
    assert world.status["activeVersion"] == "v2" and world.status["activeLayout"] != old
    canary = world.status["canary"]
    assert canary["phase"] == "Promoted" and canary["analysis"]["overlapAt10"] == 0.8
    assert canary["analysis"]["requests"] == 60  # both routers' reports added up
    topology = world.topology()
    assert topology is not None and topology.canary is None and topology.staged is None
    reasons = world.event_reasons()
    assert reasons.count("CanaryStepPassed") == 1 and "CanaryPromoted" in reasons


def test_a_shuffled_candidate_is_rolled_back_unstaged_and_deleted() -> None:
    world = serving_v1()
    old = world.status["activeLayout"]
    roll_v2(world, shuffled, 20)
    status = world.status
    assert status["activeLayout"] == old and status["phase"] == "Failed"
    assert status["canary"]["phase"] == "RolledBack" and status["canary"]["analysis"]["overlapAt10"] == 0.01
    condition = world.condition("CanaryRolledBack")
    assert condition["status"] == "True" and "overlap@10 0.010 < 0.3" in condition["message"]
    topology = world.topology()
    assert topology is not None and topology.canary is None and topology.staged is None
    assert world.layouts_with_statefulsets() == {old}
    assert "CanaryRolledBack" in world.event_reasons()


def test_the_abort_annotation_ends_a_running_canary() -> None:
    world = serving_v1()
    old = world.status["activeLayout"]
    roll_v2(world, lambda layout, step: {"layout": layout, "step": step, "requests": 1}, 10)
    assert world.status["canary"]["phase"] == "Running"
    world.body["metadata"]["annotations"] = {CANARY_COMMAND_ANNOTATION: "abort"}
    for _ in range(6):
        world.reconcile()
        ack(world, *ROUTERS)
    assert world.status["canary"]["phase"] == "Aborted" and world.status["activeLayout"] == old
    assert world.condition("CanaryRolledBack")["reason"] == "Aborted"
