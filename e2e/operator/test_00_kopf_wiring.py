"""The kopf wiring, in-process: `kopf.testing.KopfRunner` runs the handlers module against the real
API server, and a cluster created while it runs reaches Ready through them alone."""

from __future__ import annotations

from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes.config import kube_config

pytestmark = [pytest.mark.controlplane]


def test_handlers_module_runs_under_kopf_and_reconciles(
    kube: Any, namespace: str, harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the process had started with $KUBECONFIG set: `kubernetes` (which kopf's login uses)
    # freezes its default kubeconfig path when first imported, long before this test runs.
    monkeypatch.setenv("KUBECONFIG", str(kube.cp.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube.cp.kubeconfig))
    args = ["run", "--standalone", f"--namespace={namespace}", "-m", "shardrec_operator.handlers"]
    with KopfRunner(args, timeout=120) as runner:
        kube.apply(harness.cluster_document(namespace))

        def ready() -> bool:
            found = kube.get(f"/apis/shardrec.io/v1alpha1/namespaces/{namespace}/recommenderclusters/recs")
            return bool(found and found.get("status", {}).get("phase") == "Ready")

        harness.wait_for("Ready under KopfRunner", ready, timeout=90)
        found = kube.get(f"/apis/shardrec.io/v1alpha1/namespaces/{namespace}/recommenderclusters/recs")
        assert found is not None
        annotations = found["metadata"].get("annotations", {})
        assert any(key.startswith("shardrec.io/") for key in annotations), (
            "kopf state lives in our annotations"
        )
        assert not any(key.startswith("kopf.zalando.org/") for key in annotations)
        assert set(found["status"]) <= set(
            harness.api.RecommenderClusterStatus.model_json_schema(by_alias=True)["properties"]
        )
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    assert "Traceback" not in runner.output, runner.output
