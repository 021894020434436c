"""Scenario 15: a layout of several shards in an object store is built per shard (#14).

The build Job is an Indexed Job, one completion per shard, each pod running
`recctl index build --only-shard $(JOB_COMPLETION_INDEX) --publish-when-complete` with
`resources.build`; the last part to finish publishes layout.json, so the Job completing means the
layout is built and the planner goes on exactly as with the one-shot Job. kwok completes each
indexed pod and runs no container: this proves the orchestration (both indexes ran, the cluster
became Ready); the data side (parts, then publish, equal to a one-shot build) is
tests/serving/test_shard_parts.py. Then shards 2 -> 1: a one-shard layout is built by a plain Job.
"""

from __future__ import annotations

from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

INDEX = {
    "source": "s3://embeddings/movielens",
    "objectStore": {"endpoint": "http://seaweedfs.storage:8333", "pathStyle": True},
    "store": {"objectStore": {"url": "s3://artifacts/e2e"}},
}
BUILD = {"requests": {"cpu": "2", "memory": "3Gi"}}


def _build_job(scenario: Any, layout: str) -> dict[str, Any]:
    job = scenario.kube.get(kinds.JOB.path(scenario.namespace, f"{scenario.name}-{layout}-build"))
    assert job is not None, f"no build Job for layout {layout}"
    return dict(job)


def test_several_shards_build_as_an_indexed_job_then_one_shard_as_one_job(scenario: Any) -> None:
    layouts: dict[str, str] = {}

    def create_with_two_shards() -> None:
        resources = {"shard": {"requests": {"cpu": "100m", "memory": "128Mi"}}, "build": BUILD}
        scenario.create(index=INDEX, resources=resources)
        layouts["v1"] = scenario.wait_ready("v1")["activeLayout"]

    def the_build_was_an_indexed_job_of_two_pods() -> None:
        job = _build_job(scenario, layouts["v1"])
        spec = job["spec"]
        assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
        assert job["status"].get("succeeded") == 2, job["status"]
        assert job["status"].get("completedIndexes") == "0,1", job["status"]
        (container,) = spec["template"]["spec"]["containers"]
        assert "$(JOB_COMPLETION_INDEX)" in container["command"]
        assert container["resources"] == BUILD
        pods = scenario.children(kinds.POD, f"job-name={job['metadata']['name']}")
        indexes = sorted(
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods
        )
        assert indexes == ["0", "1"], indexes

    def one_shard_is_built_by_one_job() -> None:
        scenario.patch_spec({"shards": 1, "index": {"version": "v2"}})
        layouts["v2"] = scenario.wait_ready("v2")["activeLayout"]
        spec = _build_job(scenario, layouts["v2"])["spec"]
        assert "completionMode" not in spec or spec["completionMode"] == "NonIndexed", spec
        assert "--only-shard" not in spec["template"]["spec"]["containers"][0]["command"]

    scenario.run(
        [
            ("2 shards on an object store: v1 Ready", create_with_two_shards),
            ("the build was an Indexed Job, one pod per shard", the_build_was_an_indexed_job_of_two_pods),
            ("1 shard: v2 Ready, built by one Job", one_shard_is_built_by_one_job),
        ]
    )
