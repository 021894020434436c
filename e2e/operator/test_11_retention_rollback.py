"""Scenario 11: artifacts in an object store; a rollback an hour later reuses a retained layout, and
retention deletes exactly the layouts it should.

The cluster keeps its layouts in an object store (`spec.index.store.objectStore`), so no pod mounts
a claim: the restricted namespace admits the shard pods' fetch init containers and the Jobs that
carry the credentials Secret as environment variables. kwok completes every Job (builds and
garbage collection) and runs no container, so this proves the orchestration, not the copy.

The hour is simulated: with the operator stopped, the build times in `status.storedLayouts` (the
planner's only memory of when artifacts were built) are moved back, then the operator resumes.
Retention: keepLayouts 1, maxAgeHours 2.

1. v1 serves; v2 serves; v1's pods go after the rollback window, its artifacts stay (1 h old).
2. An hour later, the spec goes back to v1: the build Job is created again (the data side reuses
   the artifacts), v1 serves again, and nothing was garbage-collected.
3. v3 serves; another 1.5 hours pass: v2 (2.5 h old, not among the newest 1, not running) and then
   v1 (once its rollback window is over) are deleted by one GC Job each, with an Event each; the
   store keeps exactly v3.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

OBJECT_STORE_INDEX = {
    "source": "s3://embeddings/movielens",
    "objectStore": {
        "endpoint": "http://seaweedfs.storage:8333",
        "pathStyle": True,
        "credentialsSecretRef": {"name": "s3-creds"},
    },
    "store": {
        "objectStore": {"url": "s3://artifacts/e2e"},
        "retention": {"keepLayouts": 1, "maxAgeHours": 2},
    },
}


def _stored(scenario: Any) -> dict[str, Any]:
    return {entry["name"]: entry for entry in scenario.status().get("storedLayouts", [])}


def _age_artifacts(scenario: Any, harness: Any, hours: float) -> None:
    """Simulated clock: the store's artifacts become `hours` older (operator stopped meanwhile)."""
    scenario.operator.stop()
    entries = scenario.status().get("storedLayouts", [])
    for entry in entries:
        built = datetime.fromisoformat(entry["builtAt"].replace("Z", "+00:00")) - timedelta(hours=hours)
        entry["builtAt"] = built.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    scenario.kube.kubectl(
        "-n",
        scenario.namespace,
        "patch",
        "recommenderclusters",
        scenario.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"storedLayouts": entries}}),
    )
    scenario.operator.start()


def _gc_jobs(scenario: Any) -> list[str]:
    return list(scenario.names(kinds.JOB, "app.kubernetes.io/component=artifact-gc"))


def test_rollback_an_hour_later_reuses_a_retained_layout_and_retention_keeps_exactly_what_it_should(
    scenario: Any, harness: Any
) -> None:
    layouts: dict[str, str] = {}

    def create_with_an_object_store() -> None:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": scenario.namespace},
            "stringData": {"access-key-id": "e2e-access", "secret-access-key": "e2e-secret"},
        }
        scenario.kube.apply(secret)
        scenario.create(index=OBJECT_STORE_INDEX)
        layouts["v1"] = scenario.wait_ready("v1")["activeLayout"]

    def no_pod_mounts_a_claim_and_shards_fetch_first() -> None:
        for pod in scenario.children(kinds.POD):
            volumes = pod["spec"].get("volumes", [])
            assert not any("persistentVolumeClaim" in v for v in volumes), pod["metadata"]["name"]
        statefulset = scenario.children(kinds.STATEFUL_SET)[0]
        (fetch,) = statefulset["spec"]["template"]["spec"]["initContainers"]
        assert fetch["command"][:3] == ["recctl", "index", "fetch"]
        assert "e2e-secret" not in json.dumps(scenario.body()), "a credential leaked into the object"

    def roll_to_v2_and_let_v1_pods_go() -> None:
        scenario.patch_spec({"index": {"version": "v2"}})
        layouts["v2"] = scenario.wait_ready("v2")["activeLayout"]
        harness.wait_for("v1's pods to be deleted", lambda: layouts["v1"] not in scenario.layouts_running())
        stored = _stored(scenario)
        assert set(stored) == {layouts["v1"], layouts["v2"]}, stored
        assert not _gc_jobs(scenario), "v1 is younger than maxAgeHours: it must be kept"

    def an_hour_later_roll_back_to_v1() -> None:
        _age_artifacts(scenario, harness, hours=1)
        scenario.patch_spec({"index": {"version": "v1"}})
        status = scenario.wait_ready("v1")
        assert status["activeLayout"] == layouts["v1"]
        assert harness_job_complete(scenario, layouts["v1"]), "the build Job of v1 was re-created"
        assert not _gc_jobs(scenario)
        assert set(_stored(scenario)) == {layouts["v1"], layouts["v2"]}

    def roll_to_v3_and_later_retention_keeps_only_v3() -> None:
        scenario.patch_spec({"index": {"version": "v3"}})
        layouts["v3"] = scenario.wait_ready("v3")["activeLayout"]
        _age_artifacts(scenario, harness, hours=1.5)
        scenario.wait_status(
            "retention to leave exactly v3 in the store",
            lambda s: [entry["name"] for entry in s.get("storedLayouts", [])] == [layouts["v3"]],
        )
        deleted = {e["message"] for e in scenario.events("ArtifactsDeleted")}
        assert deleted == {f"deleted the artifacts of layout {layouts[v]}" for v in ("v1", "v2")}, deleted
        ordered = scenario.events("DeletingArtifacts")
        assert len(ordered) == 2, [e["message"] for e in ordered]
        assert set(_gc_jobs(scenario)) == {f"{scenario.name}-{layouts[v]}-gc" for v in ("v1", "v2")}
        assert scenario.status()["activeLayout"] == layouts["v3"]

    scenario.run(
        [
            ("create with an object store, v1 Ready", create_with_an_object_store),
            ("no claim mounted, shard pods fetch first", no_pod_mounts_a_claim_and_shards_fetch_first),
            ("v2 serves, v1's pods go, its artifacts stay", roll_to_v2_and_let_v1_pods_go),
            ("an hour later, roll back to v1", an_hour_later_roll_back_to_v1),
            ("v3, then retention keeps only v3", roll_to_v3_and_later_retention_keeps_only_v3),
        ]
    )


def harness_job_complete(scenario: Any, layout: str) -> bool:
    job = scenario.kube.get(kinds.JOB.path(scenario.namespace, f"{scenario.name}-{layout}-build"))
    conditions = (job or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)
