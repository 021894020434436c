"""Scenario 8: deleting a cluster garbage-collects every child; its namespace never hangs.

Without `deleteArtifactsOnDelete` the cluster carries no finalizer, so its deletion needs no
operator at all (shown by stopping the operator first). With it, a cleanup Job runs while a
finalizer holds the object, then the finalizer goes.
"""

from __future__ import annotations

from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

CHILD_KINDS = (
    kinds.STATEFUL_SET,
    kinds.POD,
    kinds.SERVICE,
    kinds.PDB,
    kinds.JOB,
    kinds.CONFIG_MAP,
    kinds.SERVICE_ACCOUNT,
    kinds.ROLE,
    kinds.ROLE_BINDING,
    kinds.NETWORK_POLICY,
    kinds.DEPLOYMENT,
)


def _children(scenario: Any) -> dict[str, list[str]]:
    found = {resource.kind: scenario.names(resource) for resource in CHILD_KINDS}
    return {kind: names for kind, names in found.items() if names}


def _gone(scenario: Any, path: str) -> bool:
    return scenario.kube.get(path) is None


def test_delete_collects_children_without_a_finalizer_even_with_the_operator_down(
    scenario: Any, harness: Any
) -> None:
    def ready_without_finalizer() -> None:
        scenario.wait_ready("v1")
        assert not scenario.body()["metadata"].get("finalizers"), "no finalizer unless artifacts are cleaned"

    def delete_with_the_operator_stopped() -> None:
        scenario.operator.stop()
        scenario.kube.kubectl("-n", scenario.namespace, "delete", "recc", "recs", "--wait=false")
        harness.wait_for("the RecommenderCluster to go", lambda: _gone(scenario, scenario.path), timeout=30)
        harness.wait_for("every child to be garbage-collected", lambda: not _children(scenario), timeout=90)

    def namespace_deletes_cleanly() -> None:
        scenario.kube.kubectl("delete", "namespace", scenario.namespace, "--wait=false")
        harness.wait_for(
            "the namespace to be deleted (not stuck Terminating)",
            lambda: _gone(scenario, f"/api/v1/namespaces/{scenario.namespace}"),
            timeout=120,
        )

    scenario.create()
    scenario.run(
        [
            ("Ready, with no finalizer", ready_without_finalizer),
            (
                "delete it while the operator is down: children are collected",
                delete_with_the_operator_stopped,
            ),
            ("its namespace deletes cleanly", namespace_deletes_cleanly),
        ]
    )


def test_delete_with_artifact_cleanup_runs_a_job_then_releases_the_finalizer(
    scenario: Any, harness: Any
) -> None:
    def ready_with_finalizer() -> None:
        scenario.wait_ready("v1")
        harness.wait_for(
            "the artifact-cleanup finalizer",
            lambda: "shardrec.io/artifact-cleanup" in (scenario.body()["metadata"].get("finalizers") or []),
        )

    def delete_runs_cleanup_and_goes() -> None:
        scenario.kube.kubectl("-n", scenario.namespace, "delete", "recc", "recs", "--wait=false")
        harness.wait_for("the RecommenderCluster to go", lambda: _gone(scenario, scenario.path), timeout=90)
        reasons = [event["reason"] for event in scenario.events()]
        assert "ArtifactsDeleted" in reasons, reasons
        harness.wait_for("every child to be garbage-collected", lambda: not _children(scenario), timeout=90)

    scenario.create(deleteArtifactsOnDelete=True)
    scenario.run(
        [
            ("Ready, with the cleanup finalizer", ready_with_finalizer),
            ("delete: cleanup Job, then the object and its children go", delete_runs_cleanup_and_goes),
        ]
    )
