"""The reconcile pass against the API double: observe -> plan -> execute, end to end."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shardrec.planning import EnsureBuild, LayoutSpec, layout_id
from shardrec_operator.desired import names
from shardrec_operator.desired.index_build import build_index_job
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.apply import ForeignObjectError
from shardrec_operator.reconcile.execute import ensure_build
from shardrec_operator.reconcile.expectations import Expectations
from shardrec_operator.reconcile.loading import load_cluster
from shardrec_operator.reconcile.observe import list_children
from shardrec_operator.reconcile.session import Session
from tests.controller.samples import NAME, NAMESPACE, body
from tests.controller.world import World


def ready_world(**spec_overrides: object) -> World:
    world = World(body(**spec_overrides))
    world.settle()
    assert world.status["phase"] == "Ready", world.status
    return world


def target_id(world: World) -> str:
    return layout_id(load_cluster(world.body).spec)


def test_a_new_cluster_builds_starts_switches_and_reports_ready() -> None:
    world = World()
    first = world.reconcile()
    assert world.api.names(kinds.JOB) == [names.build_job(NAME, target_id(world))]
    assert world.api.of_kind(kinds.STATEFUL_SET) == [], "no shard starts before its index is built"
    assert first.status is not None and first.status["phase"] == "Building"
    world.settle()
    lid = target_id(world)
    assert world.active_layout() == lid
    assert sorted(world.api.names(kinds.STATEFUL_SET)) == [names.shard_set(NAME, lid, s) for s in (0, 1)]
    assert sorted(world.api.names(kinds.PDB)) == [
        *(names.shard_set(NAME, lid, s) for s in (0, 1)),
        names.router(NAME),
    ], "a PDB per shard and one for the routers"
    assert {"recs-router", names.shard_service_account(NAME)} <= set(world.api.names(kinds.SERVICE_ACCOUNT))
    assert world.api.names(kinds.DEPLOYMENT) == ["recs-router"]
    assert world.api.names(kinds.NETWORK_POLICY) == ["recs-shards"]
    status = world.status
    assert (status["phase"], status["activeVersion"], status["readyReplicas"], status["replicas"]) == (
        "Ready",
        "v1",
        4,
        4,
    )
    assert status["routerEndpoint"] == "http://recs-router.ml.svc:8080"
    # The scale subresource: replicas per shard now, and the serving layout's shard pods.
    assert status["replicasPerShard"] == 2
    assert status["selector"] == (
        f"app.kubernetes.io/component=shard,shardrec.io/cluster={NAME},shardrec.io/layout={lid}"
    )
    assert world.condition("Ready")["status"] == "True"
    assert world.condition("Degraded")["status"] == "False"
    topology = world.topology()
    assert topology is not None and topology.active is not None
    assert [len(entry.replicas) for entry in topology.active.endpoints] == [2, 2]
    assert "Switched" in world.event_reasons()


def test_a_pass_with_nothing_to_change_writes_nothing() -> None:
    world = ready_world()
    versions = world.api.resource_versions()
    writes = len(world.api.writes)
    for _ in range(3):
        result = world.reconcile()
        assert (result.writes, result.status, result.events) == (0, None, ())
    assert world.api.resource_versions() == versions
    assert len(world.api.writes) == writes


def test_index_version_change_builds_switches_keeps_then_deletes_the_old_layout() -> None:
    world = ready_world()
    old = target_id(world)
    world.change(index={"version": "v2", "source": "pvc://embeddings/movielens/v2"})
    new = target_id(world)
    assert new != old
    switched_at_pass = None
    for number in range(12):
        world.reconcile()
        if switched_at_pass is None and world.active_layout() == new:
            switched_at_pass = number
            assert {old, new} <= world.layouts_with_statefulsets(), "old layout kept after the switch"
            new_sets = [s for s in world.api.of_kind(kinds.STATEFUL_SET) if new in s["metadata"]["name"]]
            assert len(new_sets) == 2, "switched only with every shard of the new layout running"
    assert switched_at_pass is not None
    assert world.status["activeVersion"] == "v2"
    assert world.layouts_with_statefulsets() == {new, old}, "kept for the rollback window"
    assert all(old not in name for name in world.api.names(kinds.PDB)), "a retired layout keeps no PDB"
    world.now += timedelta(seconds=301)
    world.settle()
    assert world.layouts_with_statefulsets() == {new}
    assert all(old not in name for name in world.api.names(kinds.JOB) + world.api.names(kinds.SERVICE))
    reasons = world.event_reasons()
    assert reasons.index("SwitchingRouter") < reasons.index("DeletingLayout")


def test_a_failed_build_leaves_the_old_layout_serving_with_a_condition_and_event() -> None:
    world = ready_world()
    old = target_id(world)
    world.change(index={"version": "v2"})
    world.api.failing_jobs.add(names.build_job(NAME, target_id(world)))
    world.settle()
    assert world.active_layout() == old
    assert world.status["phase"] == "Failed"
    assert world.status["activeVersion"] == "v1" and world.status["targetVersion"] == "v2"
    progressing = world.condition("Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "RolloutFailed")
    assert "build failed" in progressing["message"]
    assert world.condition("Ready")["status"] == "True", "the old layout still serves"
    assert ("Warning", "LayoutFailed") in [(t, r) for t, r, _ in world.events]


def test_a_build_that_never_finishes_is_abandoned_after_the_rollout_timeout() -> None:
    world = ready_world(rollout={"timeoutSeconds": 60})
    old = target_id(world)
    world.change(index={"version": "v3"})
    world.api.stuck_jobs.add(names.build_job(NAME, target_id(world)))
    for _ in range(4):
        world.reconcile(advance=20)
    world.settle()
    assert world.active_layout() == old
    assert world.status["phase"] == "Failed"
    assert "RolloutTimedOut" in world.event_reasons()


def test_reverting_to_a_kept_version_switches_back_without_a_rebuild() -> None:
    world = ready_world()
    old = target_id(world)
    world.change(index={"version": "v2"})
    world.settle()
    assert world.active_layout() != old
    jobs_before = world.api.names(kinds.JOB)
    world.change(index={"version": "v1"})
    world.reconcile()
    world.reconcile()
    assert world.active_layout() == old
    assert world.api.names(kinds.JOB) == jobs_before, "the kept layout is reused, not rebuilt"


def test_shard_count_change_rebalances_into_a_new_layout() -> None:
    world = ready_world()
    old = target_id(world)
    world.change(shards=3)
    world.settle()
    new = target_id(world)
    assert world.active_layout() == new
    topology = world.topology()
    assert topology is not None and topology.active is not None and topology.active.shards == 3
    world.now += timedelta(seconds=301)
    world.settle()
    assert world.layouts_with_statefulsets() == {new}
    assert len(world.api.names(kinds.STATEFUL_SET)) == 3
    assert old not in "".join(world.api.names(kinds.SERVICE))


def test_replica_change_scales_in_place_and_refreshes_the_topology() -> None:
    world = ready_world()
    lid = target_id(world)
    world.change(replicasPerShard=3)
    world.settle()
    assert target_id(world) == lid
    assert {s["spec"]["replicas"] for s in world.api.of_kind(kinds.STATEFUL_SET)} == {3}
    topology = world.topology()
    assert topology is not None and topology.active is not None
    assert [len(entry.replicas) for entry in topology.active.endpoints] == [3, 3]
    assert world.status["readyReplicas"] == 6


def test_paused_freezes_changes_and_unpausing_releases_them() -> None:
    world = ready_world()
    old = target_id(world)
    world.change(paused=True, index={"version": "v2"})
    before = len(world.api.writes)
    world.settle()
    assert len(world.api.writes) == before, "paused: the operator writes nothing but status"
    assert world.status["phase"] == "Paused" and world.active_layout() == old
    assert world.status["blockedBy"][0]["predicate"] == "paused"
    world.change(paused=False)
    world.settle()
    assert world.status["activeVersion"] == "v2"
    assert "Resumed" in world.event_reasons()


def test_missing_shard_replicas_make_the_cluster_degraded_until_they_return() -> None:
    world = ready_world(replicasPerShard=1)
    world.api.unschedulable = True
    world.api.delete_pod(names.shard_pod(NAME, target_id(world), 0, 0), NAMESPACE)
    world.reconcile()
    assert world.status["phase"] == "Degraded"
    degraded = world.condition("Degraded")
    assert degraded["status"] == "True" and "[0]" in degraded["message"]
    assert world.condition("Ready")["status"] == "False"
    world.api.unschedulable = False
    world.api.run_controllers()
    world.settle()
    assert world.status["phase"] == "Ready"
    assert {"ShardsUnavailable", "ShardsRecovered"} <= set(world.event_reasons())


def test_pods_on_a_long_lost_node_are_force_deleted_with_an_event() -> None:
    world = ready_world()
    world.api.add_node("node-a", "zone-a", ready=False, since="2026-11-23T11:00:00Z")
    lost = [p for p in world.api.of_kind(kinds.POD) if p["spec"]["nodeName"] == "node-a"]
    assert lost
    for pod in lost:
        world.api.set_pod_ready(pod["metadata"]["name"], NAMESPACE, False)
    world.reconcile(controllers=False)
    remaining = {p["metadata"]["name"] for p in world.api.of_kind(kinds.POD)}
    assert not remaining & {p["metadata"]["name"] for p in lost}
    assert world.event_reasons().count("ForceDeletedPod") == len(lost)


def test_without_node_access_unready_pods_never_freeze_the_status() -> None:
    """rbac.nodeAccess: false (the chart grants no Node read): a pass with an unready shard pod asked
    for its Node, got 403, and the error escaped the pass, so status and Events stopped exactly when
    they mattered (every rollout and outage). Failover degrades to no force-delete instead."""
    world = ready_world()
    world.api.forbidden_kinds.add(kinds.NODE.kind)
    pod = next(p for p in world.api.of_kind(kinds.POD) if p["metadata"]["labels"].get("shardrec.io/shard"))
    world.api.set_pod_ready(pod["metadata"]["name"], NAMESPACE, False)
    for _ in range(2):
        world.reconcile(controllers=False)
    assert world.status["readyReplicas"] == 3, "the status follows the unready pod"
    assert world.event_reasons().count("FailoverWithoutNodeAccess") == 1, "said once, not every pass"
    assert pod["metadata"]["name"] in {p["metadata"]["name"] for p in world.api.of_kind(kinds.POD)}
    failover = world.condition("FailoverDegraded")
    assert (failover["status"], failover["reason"]) == ("True", "NodeAccessDenied")
    assert "rbac.nodeAccess" in failover["message"]


def test_node_access_denied_stands_while_pods_are_ready_and_clears_when_rbac_allows() -> None:
    world = ready_world()
    assert world.condition("FailoverDegraded")["status"] == "False"
    world.api.forbidden_kinds.add(kinds.NODE.kind)
    pod = next(p for p in world.api.of_kind(kinds.POD) if p["metadata"]["labels"].get("shardrec.io/shard"))
    world.api.set_pod_ready(pod["metadata"]["name"], NAMESPACE, False)
    world.reconcile(controllers=False)
    world.api.set_pod_ready(pod["metadata"]["name"], NAMESPACE, True)
    world.reconcile(controllers=False)
    assert world.condition("FailoverDegraded")["reason"] == "NodeAccessDenied", (
        "all pods ready: still unproven"
    )
    world.api.forbidden_kinds.clear()
    world.reconcile(controllers=False)
    failover = world.condition("FailoverDegraded")
    assert (failover["status"], failover["reason"]) == ("False", "FailoverAvailable")
    world.api.read_kinds.clear()
    world.reconcile(controllers=False)
    assert "Node" not in world.api.read_kinds, "every pod ready and access proven: Nodes are not read"


def _lose_node_a(world: World) -> list[str]:
    world.api.add_node("node-a", "zone-a", ready=False, since="2026-11-23T11:00:00Z")
    lost = [p["metadata"]["name"] for p in world.api.of_kind(kinds.POD) if p["spec"]["nodeName"] == "node-a"]
    for name in lost:
        world.api.set_pod_ready(name, NAMESPACE, False)
    return lost


def test_paused_keeps_failing_over_by_default() -> None:
    world = ready_world()
    world.change(paused=True)
    world.settle()
    lost = _lose_node_a(world)
    world.reconcile(controllers=False)
    assert not set(lost) & set(world.api.names(kinds.POD)), "failover goes on while paused"
    assert world.event_reasons().count("ForceDeletedPod") == len(lost)
    assert world.status["phase"] == "Paused"


def test_paused_with_failover_while_paused_false_stops_force_deletes_with_a_condition() -> None:
    world = ready_world()
    world.change(paused=True, failover={"whilePaused": False})
    world.settle()
    lost = _lose_node_a(world)
    world.reconcile(controllers=False)
    assert set(lost) <= set(world.api.names(kinds.POD))
    assert "ForceDeletedPod" not in world.event_reasons()
    failover = world.condition("FailoverDegraded")
    assert (failover["status"], failover["reason"]) == ("True", "Paused")


def test_a_hand_scaled_statefulset_and_an_edited_label_are_restored_with_an_event() -> None:
    world = ready_world()
    statefulset = world.api.of_kind(kinds.STATEFUL_SET)[0]
    name = statefulset["metadata"]["name"]
    statefulset["spec"]["replicas"] = 0  # `kubectl scale --replicas=0`: the hash annotation stays
    statefulset["metadata"]["labels"]["shardrec.io/index-version"] = "tampered"
    world.api.put(statefulset)
    result = world.reconcile(controllers=False)
    restored = world.api.get(kinds.STATEFUL_SET, NAMESPACE, name)
    assert restored is not None and restored["spec"]["replicas"] == 2
    assert restored["metadata"]["labels"]["shardrec.io/index-version"] == "v1"
    assert result.drift_corrections == 1
    (message,) = [m for _, reason, m in world.events if reason == "DriftCorrected"]
    assert name in message and "spec.replicas" in message
    assert "metadata.labels.shardrec.io/index-version" in message
    assert world.settle().drift_corrections == 0, "corrected once, then quiet"


def test_pods_on_a_recently_lost_node_are_left_alone() -> None:
    world = ready_world()
    world.api.add_node("node-a", "zone-a", ready=False, since=world.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    for pod in world.api.of_kind(kinds.POD):
        world.api.set_pod_ready(pod["metadata"]["name"], NAMESPACE, False)
    pods_before = world.api.names(kinds.POD)
    world.reconcile(controllers=False)
    assert world.api.names(kinds.POD) == pods_before
    assert "ForceDeletedPod" not in world.event_reasons()


def test_a_restarted_operator_resumes_a_rollout_at_every_step_without_duplicates() -> None:
    reference = ready_world()
    reference.change(index={"version": "v2"})
    reference.settle()
    for restart_after in range(6):
        world = ready_world()
        world.change(index={"version": "v2"})
        for _ in range(restart_after):
            world.reconcile()
        world.expectations = Expectations()  # a fresh process remembers nothing
        world.settle()
        assert world.status["activeVersion"] == "v2", restart_after
        assert sorted(world.api.names(kinds.STATEFUL_SET)) == sorted(reference.api.names(kinds.STATEFUL_SET))
        assert sorted(world.api.names(kinds.JOB)) == sorted(reference.api.names(kinds.JOB))


def test_optional_objects_follow_the_spec_and_a_missing_crd_is_reported_once() -> None:
    world = ready_world(router={"autoscaling": {"minReplicas": 2, "maxReplicas": 4}})
    assert world.api.names(kinds.HPA) == ["recs-router"]
    world.change(router={"autoscaling": None}, monitoring={"serviceMonitor": True})
    world.settle()
    world.settle()
    assert world.api.names(kinds.HPA) == []
    assert world.event_reasons().count("ServiceMonitorUnavailable") == 1
    world.api.missing_kinds.clear()
    world.settle()
    assert world.api.names(kinds.SERVICE_MONITOR) == ["recs"]


def test_a_same_named_object_we_do_not_control_is_never_taken_over() -> None:
    world = World()
    world.api.put(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": names.shard_service_account(NAME), "namespace": NAMESPACE},
        }
    )
    with pytest.raises(ForeignObjectError, match="not controlled"):
        world.reconcile()


def test_the_pause_annotation_freezes_like_spec_paused() -> None:
    world = ready_world()
    world.body["metadata"]["annotations"] = {"shardrec.io/paused": "true"}
    world.change(index={"version": "v2"})
    before = len(world.api.writes)
    world.settle()
    assert len(world.api.writes) == before
    assert world.status["phase"] == "Paused"
    world.body["metadata"]["annotations"] = {"shardrec.io/paused": "false"}
    world.settle()
    assert world.status["activeVersion"] == "v2"


def test_a_failed_build_is_retried_with_a_new_job_when_the_spec_changes_again() -> None:
    world = ready_world()
    world.change(index={"version": "v2"})
    job = names.build_job(NAME, target_id(world))
    world.api.failing_jobs.add(job)
    world.settle()
    assert world.status["phase"] == "Failed"
    world.api.failing_jobs.clear()
    world.change(router={"timeoutMs": 900})  # any new generation retries the failed target
    world.settle()
    assert world.status["activeVersion"] == "v2"
    job_writes = [verb for verb, kind, name in world.api.writes if kind == "Job" and name == job]
    assert job_writes == ["apply", "delete", "apply"], "built, deleted when abandoned, rebuilt on retry"


def test_ensure_build_replaces_a_job_that_failed_under_an_older_attempt() -> None:
    world = World()
    sample = load_cluster(world.body)
    layout = LayoutSpec.from_spec(sample.spec)
    failed = build_index_job(sample, layout, "attempt-1")
    failed["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    }
    world.api.put(failed)
    session = Session(world.api, sample, list_children(world.api, sample), world.expectations, world.now)
    ensure_build(session, EnsureBuild(layout, "attempt-2", "retry"))
    (job,) = world.api.of_kind(kinds.JOB)
    assert job["metadata"]["annotations"]["shardrec.io/build-attempt"] == "attempt-2"
    assert "status" not in job
    session = Session(world.api, sample, list_children(world.api, sample), world.expectations, world.now)
    ensure_build(session, EnsureBuild(layout, "attempt-2", "again"))
    assert session.writes == 0, "the current attempt's Job is left alone"
