"""`spec.index.qualityGate` on Kubernetes: the build pod reports the model's offline metrics in its
termination message, the operator keeps them in `status.layouts[].quality` and the planner's
gate refuses a worse layout before any of its shards starts."""

from __future__ import annotations

from datetime import timedelta

from shardrec.api.commands import BUILD_REPORT_PATH, IndexBuildFlags, build_report
from shardrec.planning import layout_id
from shardrec_operator.desired import names
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.loading import load_cluster
from tests.controller.samples import NAME, body
from tests.controller.world import World


def _target(world: World) -> str:
    return layout_id(load_cluster(world.body).spec)


def _report_for_target(world: World, ndcg: float | None) -> None:
    """The next build Job of the spec's target completes with this report in its pod."""
    lid = _target(world)
    version = load_cluster(world.body).spec.index.version
    quality = {"split": "test", "ndcg_at_10": ndcg, "hit_rate_at_10": 0.07} if ndcg is not None else None
    world.api.job_reports[names.build_job(NAME, lid)] = build_report(lid, version, quality)


def _quality_of(world: World, lid: str) -> dict[str, object] | None:
    entry = next(e for e in world.status["layouts"] if e["name"] == lid)
    quality: dict[str, object] | None = entry.get("quality")
    return quality


def _delete_build_pods(world: World) -> None:
    for pod in world.api.of_kind(kinds.POD):
        if pod["metadata"]["labels"].get("app.kubernetes.io/component") == "index-build":
            del world.api.objects[(kinds.POD.kind, pod["metadata"]["namespace"], pod["metadata"]["name"])]


def test_the_build_pod_reports_its_metrics_through_the_termination_message() -> None:
    world = World(body(index={**body()["spec"]["index"], "qualityGate": {"minNdcgAt10": 0.03}}))
    world.reconcile()
    container = world.api.of_kind(kinds.JOB)[0]["spec"]["template"]["spec"]["containers"][0]
    # The container writes its report where the kubelet reads a termination message from.
    command = container["command"]
    assert command[command.index(IndexBuildFlags.REPORT_FILE) + 1] == BUILD_REPORT_PATH
    assert container.get("terminationMessagePath", BUILD_REPORT_PATH) == BUILD_REPORT_PATH


def test_a_worse_version_is_refused_before_its_shards_start_and_the_serving_one_keeps_its_metrics() -> None:
    world = World(body(index={**body()["spec"]["index"], "qualityGate": {"minRelativeToActive": 0.98}}))
    _report_for_target(world, 0.040)
    world.settle()
    v1 = _target(world)
    assert world.status["phase"] == "Ready" and world.active_layout() == v1
    assert _quality_of(world, v1) == {"ndcgAt10": 0.04, "hitRateAt10": 0.07, "split": "test"}
    # The build pod goes (Job cleanup, node loss): the metrics stay in the status.
    _delete_build_pods(world)
    world.settle()
    assert _quality_of(world, v1) == {"ndcgAt10": 0.04, "hitRateAt10": 0.07, "split": "test"}

    world.change(index={"version": "v2"})
    _report_for_target(world, 0.030)
    world.reconcile()
    world.reconcile()
    world.settle()
    v2 = _target(world)
    assert world.active_layout() == v1, "the worse layout never serves"
    assert v2 not in world.layouts_with_statefulsets(), "no shard of the refused layout starts"
    blocked = [e for e in world.status.get("blockedBy", []) if e["predicate"] == "meets_quality_gate"]
    assert blocked and "NDCG@10 0.0300 (test split) is below" in blocked[0]["reason"]
    assert "0.0392" in blocked[0]["reason"], "0.98 x the serving layout's 0.0400, read back from the status"
    assert any(kind == "Warning" and "0.0300" in message for kind, _, message in world.events)

    world.change(index={"version": "v3"})
    _report_for_target(world, 0.041)
    world.settle()
    world.now += timedelta(seconds=5)
    world.settle()
    assert world.active_layout() == _target(world), "a version that meets the gate rolls out"
    assert _quality_of(world, _target(world)) == {"ndcgAt10": 0.041, "hitRateAt10": 0.07, "split": "test"}


def test_a_layout_whose_build_reports_no_metrics_is_refused_by_a_gate() -> None:
    world = World(body(index={**body()["spec"]["index"], "qualityGate": {"minNdcgAt10": 0.01}}))
    _report_for_target(world, None)
    world.settle()
    assert world.active_layout() is None
    assert world.api.of_kind(kinds.STATEFUL_SET) == []
    blocked = world.status.get("blockedBy", [])
    assert any("records no offline metrics" in entry["reason"] for entry in blocked), world.status
