"""Observe: what the API shows, translated into the planner's model."""

from __future__ import annotations

from typing import Any

from shardrec.api.commands import build_report
from shardrec.api.topology import TOPOLOGY_CONFIGMAP_KEY, Topology
from shardrec_operator.desired.index_build import build_index_job
from shardrec_operator.desired.shard import build_shard_statefulset
from shardrec_operator.desired.topology_configmap import build_layout_topology, build_topology_configmap
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.expectations import Expectations
from shardrec_operator.reconcile.observe import (
    Children,
    build_of,
    build_quality,
    list_children,
    observe,
    observed_layouts,
    previous_status,
)
from tests.controller.fake_api import FakeClusterApi
from tests.controller.samples import NAMESPACE, T0, cluster, layout_of

SAMPLE = cluster()
LAYOUT = layout_of(SAMPLE)


def _job(*conditions: dict[str, str], attempt: str = "a1") -> dict[str, Any]:
    job = build_index_job(SAMPLE, LAYOUT, attempt)
    job["status"] = {"conditions": list(conditions)}
    return job


def test_build_state_follows_the_job_conditions_and_keeps_the_attempt() -> None:
    assert build_of(None).state == "Absent"
    assert build_of(_job()).state == "Running"
    done = build_of(_job({"type": "Complete", "status": "True"}, attempt="a7"))
    assert (done.state, done.attempt) == ("Succeeded", "a7")
    failed = build_of(
        _job({"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow"})
    )
    assert failed.state == "Failed" and "DeadlineExceeded" in failed.message and "too slow" in failed.message
    assert build_of(_job({"type": "Failed", "status": "False"})).state == "Running"


def _build_pod(message: str, exit_code: int = 0, layout: str = LAYOUT.id) -> dict[str, Any]:
    labels = {**_job()["spec"]["template"]["metadata"]["labels"], "shardrec.io/layout": layout}
    terminated = {"exitCode": exit_code, "message": message}
    return {
        "metadata": {"name": "build-0-x", "namespace": NAMESPACE, "labels": labels},
        "status": {"containerStatuses": [{"name": "build", "state": {"terminated": terminated}}]},
    }


def test_a_completed_build_carries_the_metrics_its_pod_reported() -> None:
    quality = {"split": "test", "ndcg_at_10": 0.0321, "hit_rate_at_10": 0.0721, "coverage": 0.4}
    report = build_report(LAYOUT.id, LAYOUT.version, quality)
    complete = _job({"type": "Complete", "status": "True"})
    found = build_of(complete, [_build_pod("not json"), _build_pod(report)]).quality
    assert found is not None
    assert (found.ndcg_at_10, found.hit_rate_at_10, found.split) == (0.0321, 0.0721, "test")
    # Only a successful container of this layout counts; a running Job reports nothing yet.
    assert build_quality([_build_pod(report, exit_code=1)], LAYOUT.id) is None
    assert build_quality([_build_pod(report, layout="other")], LAYOUT.id) is None
    assert build_quality([_build_pod(build_report("other", "v1", quality))], LAYOUT.id) is None
    assert build_of(_job(), [_build_pod(report)]).quality is None
    # A report without metrics (the embeddings record none) or a pod's own garbage: no metrics.
    assert build_quality([_build_pod(build_report(LAYOUT.id, "v1", None))], LAYOUT.id) is None
    assert build_quality([_build_pod('{"layout": 3}'), _build_pod("[]")], LAYOUT.id) is None


def _pod(name: str, ready: bool, **extra_meta: Any) -> dict[str, Any]:
    template = build_shard_statefulset(SAMPLE, LAYOUT, 1, 3)["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": template["metadata"]["labels"],
            **extra_meta,
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_layouts_report_ready_replicas_by_ordinal_from_the_pods() -> None:
    api = FakeClusterApi()
    for manifest in (
        build_shard_statefulset(SAMPLE, LAYOUT, 1, 3),
        _job({"type": "Complete", "status": "True"}),
    ):
        api.put(manifest)
    set_name = f"recs-{LAYOUT.id}-1"
    api.put(_pod(f"{set_name}-0", ready=True))
    api.put(_pod(f"{set_name}-1", ready=False))
    api.put(_pod(f"{set_name}-2", ready=True, deletionTimestamp="2026-11-23T12:00:00Z"))
    (layout,) = observed_layouts(list_children(api, SAMPLE))
    assert layout.spec == LAYOUT and layout.build.state == "Succeeded"
    (shard,) = layout.shards
    assert (shard.shard, shard.desired_replicas, shard.ready_replicas) == (1, 3, 1)
    assert shard.ready_ordinals == frozenset({0}), "a terminating pod is not ready"
    assert layout.missing_shards() == [0]


def test_objects_without_a_readable_layout_annotation_are_ignored() -> None:
    statefulset = build_shard_statefulset(SAMPLE, LAYOUT, 0, 2)
    statefulset["metadata"]["annotations"]["shardrec.io/layout-spec"] = "{not json"
    children = Children({("StatefulSet", "x"): statefulset})
    assert observed_layouts(children) == ()


def test_router_state_comes_from_the_stored_topology_and_our_last_write() -> None:
    api = FakeClusterApi()
    topology = Topology(revision=4, active=build_layout_topology(SAMPLE, LAYOUT, {0: 2, 1: 2}))
    api.put(build_topology_configmap(SAMPLE, topology))
    children = list_children(api, SAMPLE)
    expectations = Expectations()
    fresh = observe(SAMPLE, children, None, T0, expectations)
    assert (fresh.router.written_layout, fresh.router.confirmed_layout) == (LAYOUT.id, LAYOUT.id)
    assert fresh.router_endpoint == "", "no router Service yet"
    expectations.record_topology_write(SAMPLE.metadata.uid, "0123456789")
    moved = observe(SAMPLE, children, None, T0, expectations)
    assert moved.router.switch_in_flight


def test_an_unreadable_topology_or_status_counts_as_none() -> None:
    api = FakeClusterApi()
    configmap = build_topology_configmap(SAMPLE, Topology(revision=0))
    configmap["data"][TOPOLOGY_CONFIGMAP_KEY] = "garbage"
    api.put(configmap)
    observed = observe(SAMPLE, list_children(api, SAMPLE), {"phase": "Nonsense"}, T0, Expectations())
    assert observed.router.confirmed_layout is None
    assert previous_status({"phase": "Nonsense"}).phase == "Pending"


def test_a_missing_optional_crd_lists_as_empty() -> None:
    api = FakeClusterApi()
    assert api.missing_kinds == {kinds.SERVICE_MONITOR.kind}
    assert list_children(api, SAMPLE).of_kind(kinds.SERVICE_MONITOR) == []


def test_objects_carrying_our_labels_but_controlled_by_another_owner_are_not_children() -> None:
    api = FakeClusterApi()
    ours = build_shard_statefulset(SAMPLE, LAYOUT, 0, 2)
    leftover = build_shard_statefulset(SAMPLE, LAYOUT, 1, 2)
    leftover["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-deleted-incarnation"
    api.put(ours)
    api.put(leftover)
    children = list_children(api, SAMPLE)
    assert [s["metadata"]["name"] for s in children.of_kind(kinds.STATEFUL_SET)] == [ours["metadata"]["name"]]
