"""Scenario 9: a reconcile with nothing to change writes nothing, and other managers' fields survive."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

WRITTEN_KINDS = (
    kinds.STATEFUL_SET,
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


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(part in (match.group(1) or "") for part in wanted.split(",") if part):
            total += float(match.group(2))
    return total


def _versions(scenario: Any) -> dict[str, str]:
    versions = {f"RecommenderCluster/{scenario.name}": scenario.body()["metadata"]["resourceVersion"]}
    for resource in WRITTEN_KINDS:
        for obj in scenario.children(resource):
            versions[f"{resource.kind}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return versions


def test_quiet_reconciles_and_respect_for_other_field_managers(scenario: Any, harness: Any) -> None:
    before: dict[str, Any] = {}

    def settled_passes_write_nothing() -> None:
        before["versions"] = _versions(scenario)
        metrics = scenario.operator.metrics()
        timer_passes = _metric(metrics, "shardrec_operator_reconciles_total", trigger="timer", outcome="ok")
        writes = _metric(metrics, "shardrec_operator_api_writes_total")
        status_writes = _metric(metrics, "shardrec_operator_status_writes_total")
        harness.wait_for(
            "three more timer passes",
            lambda: (
                _metric(
                    scenario.operator.metrics(),
                    "shardrec_operator_reconciles_total",
                    trigger="timer",
                    outcome="ok",
                )
                >= timer_passes + 3
            ),
            timeout=60,
        )
        # The API server swallows no-op writes without a new resourceVersion, so the operator's own
        # counts prove that nothing was even sent; the resourceVersions prove nothing changed.
        after = scenario.operator.metrics()
        assert _metric(after, "shardrec_operator_api_writes_total") == writes
        assert _metric(after, "shardrec_operator_status_writes_total") == status_writes
        assert _versions(scenario) == before["versions"], "a pass with nothing to change wrote something"

    def another_manager_sets_fields_we_do_not_own() -> None:
        scenario.kube.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "recs-router",
                    "namespace": scenario.namespace,
                    "labels": {"team": "search"},
                },
                "spec": {"revisionHistoryLimit": 3},
            },
            manager="team-search",
        )

    def operator_reapplies_after_a_spec_change_and_keeps_them() -> None:
        scenario.patch_spec({"router": {"replicas": 3}})

        def rolled() -> bool:
            deployment = scenario.kube.get(kinds.DEPLOYMENT.path(scenario.namespace, "recs-router"))
            return bool(deployment and deployment["spec"]["replicas"] == 3)

        harness.wait_for("the router Deployment to get 3 replicas", rolled)
        deployment = scenario.kube.get(kinds.DEPLOYMENT.path(scenario.namespace, "recs-router"))
        assert deployment is not None
        assert deployment["metadata"]["labels"]["team"] == "search"
        assert deployment["spec"]["revisionHistoryLimit"] == 3
        managers = {entry["manager"] for entry in deployment["metadata"]["managedFields"]}
        assert {"shardrec-operator", "team-search"} <= managers

    scenario.create()
    scenario.run(
        [
            ("the cluster becomes Ready", lambda: scenario.wait_ready("v1")),
            ("settled passes leave every resourceVersion unchanged", settled_passes_write_nothing),
            ("another field manager applies its own fields", another_manager_sets_fields_we_do_not_own),
            ("the operator's next apply keeps them", operator_reapplies_after_a_spec_change_and_keeps_them),
        ]
    )
