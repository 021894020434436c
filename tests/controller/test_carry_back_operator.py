"""A rollback with item writes on, operator side: the carry back through the API double (the test
plays the carrier, patching its pod's `shardrec.io/carry-progress` as the real one would): v1 is
carried into v2, v2 serves, the spec goes back to v1 while v1 is kept; the carrier Deployment of v1
is created as a carry back (`back: true` in its config, the `shardrec.io/carry-back` annotation,
its progress in `carry-back/<v1>/<v2>`, no build, no prior carry), each step waits for its report,
the routers switch back to v1 after the hand-over, and v2 is kept until the carrier is done and its
rollback window passed."""

from __future__ import annotations

from datetime import timedelta

from shardrec.api.carry import (
    CARRY_CONFIG_KEY,
    FINISH_REQUESTED_ANNOTATION,
    HAND_OVER_REQUESTED_ANNOTATION,
    CarrierConfig,
)
from shardrec_operator.desired import labels, names
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.expectations import Expectations
from shardrec_operator.reconcile.observe import Children, carrier_observations
from tests.controller.samples import NAME, NAMESPACE
from tests.controller.test_carry_operator import WRITES, _deployment_annotations, _report
from tests.controller.test_reconcile import ready_world
from tests.controller.world import World


def _carried_to_v2() -> tuple[World, str, str]:
    """v1 carried into v2 (every step reported), the carrier done and gone, v1 kept."""
    world = ready_world(writes=WRITES)
    v1 = world.status["activeLayout"]
    world.change(index={"version": "v2"})
    world.settle()
    v2 = world.status["targetLayout"]
    _report(world, v2, phase="forwarding", cut=[5, 7], after=[5, 7])
    world.settle()
    _report(world, v2, phase="forwarding", cut=[5, 7], after=[9, 7], caught_up=True)
    world.settle()
    request = _deployment_annotations(world, v2)[HAND_OVER_REQUESTED_ANNOTATION]
    _report(world, v2, phase="forwarding", cut=[5, 7], after=[9, 8], caught_up=True, handed_over=request)
    world.settle()
    assert world.active_layout() == v2
    _report(world, v2, phase="done", cut=[5, 7], after=[9, 8], caught_up=True, handed_over=request, done=True)
    world.settle()
    assert names.carrier(NAME, v2) not in world.api.names(kinds.DEPLOYMENT)
    assert world.layouts_with_statefulsets() == {v1, v2}, "v1 is kept for its rollback window"
    return world, v1, v2


def _config(world: World, layout_id: str) -> CarrierConfig:
    configmap = world.api.get(kinds.CONFIG_MAP, NAMESPACE, names.carrier(NAME, layout_id))
    assert configmap is not None
    return CarrierConfig.model_validate_json(configmap["data"][CARRY_CONFIG_KEY])


def _blocked(world: World) -> list[str]:
    return [b["predicate"] for b in world.status["blockedBy"]]


def test_a_rollback_with_writes_on_is_carried_back_step_by_step() -> None:
    world, v1, v2 = _carried_to_v2()
    jobs = sorted(world.api.names(kinds.JOB))
    world.change(index={"version": "v1"})
    world.settle()
    carrier = names.carrier(NAME, v1)
    config = _config(world, v1)
    assert (config.from_layout, config.to_layout, config.back, config.prior_carry) == (v2, v1, True, None)
    assert config.carry_store == f"/store/recs/carry-back/{v1}/{v2}"
    assert (config.from_shards, len(config.old_leaders), config.to_shards, len(config.new_replicas)) == (
        2,
        2,
        2,
        2,
    )
    annotations = _deployment_annotations(world, v1)
    assert annotations[labels.CARRY_BACK_ANNOTATION] == "true"
    assert annotations[labels.CARRY_FROM_ANNOTATION] == v2
    children = Children()
    deployment = world.api.get(kinds.DEPLOYMENT, NAMESPACE, carrier)
    assert deployment is not None
    children.objects[(deployment["kind"], carrier)] = deployment
    (observed,) = carrier_observations(children)
    assert observed.back and (observed.layout, observed.source) == (v1, v2)
    assert sorted(world.api.names(kinds.JOB)) == jobs, "a carry back builds nothing"
    assert world.active_layout() == v2
    assert "writes_carried_to_new_layout" not in _blocked(world)
    assert "traffic_after_carry_caught_up" in _blocked(world)
    progressing = world.condition("Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "CarryingWritesBack")
    back = [c for c in world.status["carries"] if c["back"]]
    assert [(c["layout"], c["fromLayout"], c["done"]) for c in back] == [(v1, v2, False)]
    assert "CarryingWritesBack" in world.event_reasons()

    # caught up (no cut in a carry back): staged, then the hand-over is asked
    _report(world, v1, phase="forwarding", after=[4, 3], caught_up=True)
    world.settle()
    request = _deployment_annotations(world, v1).get(HAND_OVER_REQUESTED_ANNOTATION)
    assert request is not None and world.active_layout() == v2
    assert _blocked(world) == ["switch_after_hand_over"]

    world.expectations = Expectations()  # a restarted operator: only what it observes
    world.settle()
    assert _deployment_annotations(world, v1)[HAND_OVER_REQUESTED_ANNOTATION] == request
    assert _config(world, v1).back

    _report(world, v1, phase="forwarding", after=[4, 4], caught_up=True, handed_over=request)
    world.settle()
    assert world.status["activeLayout"] == v1 and world.active_layout() == v1
    assert FINISH_REQUESTED_ANNOTATION in _deployment_annotations(world, v1)

    world.now += timedelta(hours=2)  # far past v2's rollback window: it waits for the carrier
    world.settle()
    assert v2 in world.layouts_with_statefulsets()
    assert "keep_carry_source_until_done" in _blocked(world)

    _report(world, v1, phase="done", after=[4, 4], caught_up=True, handed_over=request, done=True)
    world.settle()
    assert carrier not in world.api.names(kinds.DEPLOYMENT)
    assert carrier not in world.api.names(kinds.CONFIG_MAP)
    assert world.layouts_with_statefulsets() == {v1}
    assert world.status["blockedBy"] == []
    assert [(c["layout"], c["fromLayout"], c["back"], c["done"]) for c in world.status["carries"]] == [
        (v1, v2, True, True)
    ]
    reasons = world.event_reasons()
    assert [r for r in reasons if r in ("CarryingWritesBack", "WritesCarriedBack")] == [
        "CarryingWritesBack",
        "WritesCarriedBack",
    ]


def test_the_preview_of_a_rollback_says_it_is_carried_back() -> None:
    world, v1, _ = _carried_to_v2()
    world.change(paused=True, index={"version": "v1"})
    world.settle()
    text = world.status["planPreview"]["text"]
    assert "[info] WritesCarriedBack: the operator carries the logged item writes back into the kept" in text
    assert names.carrier(NAME, v1) not in world.api.names(kinds.DEPLOYMENT)  # paused: no carrier yet
