"""Retention through the operator against the API double: one GC Job per collected layout, the
status forgets a layout once its Job completed, and a build waits for a deletion under way."""

from __future__ import annotations

from datetime import timedelta

from shardrec.planning import layout_id
from shardrec_operator.desired import names
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.loading import load_cluster
from tests.controller.samples import NAME, body, spec_document
from tests.controller.world import World

INDEX = spec_document()["index"]


def _index(version: str) -> dict[str, object]:
    store = {**INDEX["store"], "retention": {"keepLayouts": 1}}
    return {**INDEX, "version": version, "store": store}


def _target(world: World) -> str:
    return layout_id(load_cluster(world.body).spec)


def _roll(world: World, version: str) -> str:
    world.change(index=_index(version))
    world.settle(max_passes=20)
    world.now += timedelta(seconds=301)  # past the rollback window
    world.settle(max_passes=20)
    assert world.status["activeVersion"] == version
    return _target(world)


def _gc_jobs(world: World) -> list[str]:
    return [
        job["metadata"]["name"]
        for job in world.api.of_kind(kinds.JOB)
        if job["metadata"]["labels"].get("app.kubernetes.io/component") == "artifact-gc"
    ]


def test_layouts_beyond_retention_get_one_gc_job_each_and_leave_the_status() -> None:
    world = World(body(index=_index("v1")))
    world.settle(max_passes=20)
    v1 = _target(world)
    v2 = _roll(world, "v2")
    assert _gc_jobs(world) == [names.artifact_gc_job(NAME, v1)]
    v3 = _roll(world, "v3")
    assert sorted(_gc_jobs(world)) == sorted(names.artifact_gc_job(NAME, i) for i in (v1, v2))
    assert [entry["name"] for entry in world.status["storedLayouts"]] == [v3]
    reasons = world.event_reasons()
    assert reasons.count("DeletingArtifacts") == 2 and reasons.count("ArtifactsDeleted") == 2
    job = world.api.get(kinds.JOB, "ml", names.artifact_gc_job(NAME, v1))
    assert job is not None
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == [
        "recctl", "index", "delete", "--store", "/store/recs/layouts", "--layout", v1,
        "--carry-store", "/store/recs",  # its carry folders go with it
    ]  # fmt: skip


def test_a_rollback_to_a_collected_layout_waits_for_its_deletion_then_rebuilds() -> None:
    world = World(body(index=_index("v1")))
    world.settle(max_passes=20)
    v1 = _target(world)
    world.change(index=_index("v2"))
    world.settle(max_passes=20)
    world.now += timedelta(seconds=301)
    world.api.stuck_jobs.add(names.artifact_gc_job(NAME, v1))  # the deletion takes its time
    for _ in range(4):
        world.reconcile()
    assert _gc_jobs(world) == [names.artifact_gc_job(NAME, v1)]
    world.change(index=_index("v1"))
    for _ in range(3):
        world.reconcile()
    assert world.api.get(kinds.JOB, "ml", names.build_job(NAME, v1)) is None, "built while being deleted"
    assert any(b["predicate"] == "wait_for_artifact_deletion" for b in world.status["blockedBy"])
    world.api.stuck_jobs.discard(names.artifact_gc_job(NAME, v1))
    world.api.run_controllers()  # the deletion finishes
    for _ in range(6):
        world.reconcile()
    assert world.status["activeVersion"] == "v1" and world.status["phase"] == "Ready"
    assert _gc_jobs(world) == [], "the finished deletion was forgotten before the rebuild"
    assert v1 in [entry["name"] for entry in world.status["storedLayouts"]]
