"""examples/: every manifest parses, every RecommenderCluster passes the model and its CEL rules,
and the README lists every file. (The real API server checks them too: tests/ship/test_controlplane.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shardrec.api.v1alpha1 import RecommenderCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def test_there_are_examples() -> None:
    names = {p.name for p in FILES}
    assert {"minimal.yaml", "production.yaml", "available.yaml", "store-pvc.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_recommendercluster_validates(path: Path) -> None:
    for doc in _docs(path):
        if doc["kind"] == "RecommenderCluster":
            RecommenderCluster.model_validate(doc)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_example_explains_itself(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), f"{path.name} starts with a comment that says what it shows"
    assert "kubectl apply -f examples/" in text


def test_the_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in FILES:
        assert f"]({path.name})" in readme, path.name


def test_the_examples_show_what_they_claim() -> None:
    production = RecommenderCluster.model_validate(_docs(EXAMPLES / "production.yaml")[0]).spec
    assert production.auth.api_keys_secret_ref is not None
    assert production.monitoring.service_monitor
    assert production.resources.shard.requests and production.resources.router.requests
    assert production.replicas_per_shard >= 3
    available = RecommenderCluster.model_validate(_docs(EXAMPLES / "available.yaml")[0]).spec
    assert available.router.consistency == "available"
    templated = RecommenderCluster.model_validate(_docs(EXAMPLES / "pod-templates.yaml")[0]).spec
    templates = templated.pod_templates
    assert templates.shard is not None and templates.router is not None and templates.build is not None
    assert (
        templates.shard.zone_spread == "Hard"
        and templates.shard.tolerations
        and templates.build.node_selector
    )
    assert templated.resources.build is not None and templated.resources.build.requests["cpu"] == "8"
    hpa = _docs(EXAMPLES / "shard-autoscaling.yaml")[0]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "name": RecommenderCluster.model_validate(_docs(EXAMPLES / "production.yaml")[0]).metadata.name,
    }
    minimal = _docs(EXAMPLES / "minimal.yaml")[0]
    assert set(minimal["spec"]) == {"shards", "replicasPerShard", "index"}
    # Open on purpose, and says so: the chart's admission policy refuses it otherwise.
    assert minimal["metadata"]["annotations"] == {"shardrec.io/allow-unauthenticated": "true"}
    assert available.auth.api_keys_secret_ref is not None


def test_every_store_claim_is_the_one_store_pvc_yaml_creates() -> None:
    claim = _docs(EXAMPLES / "store-pvc.yaml")[0]["metadata"]["name"]
    for path in FILES:
        for doc in _docs(path):
            if doc["kind"] != "RecommenderCluster":
                continue
            index = doc["spec"]["index"]
            if "objectStore" in index["store"]:
                continue  # object-store.yaml: no claim at all
            assert index["store"]["persistentVolumeClaim"]["claimName"] == claim
            assert index["source"].startswith(f"pvc://{claim}/")


def test_the_object_store_example_mounts_nothing_and_keeps_secrets_out() -> None:
    (doc,) = _docs(EXAMPLES / "object-store.yaml")
    spec = RecommenderCluster.model_validate(doc).spec
    assert spec.index.store.persistent_volume_claim is None and spec.index.store.object_store is not None
    assert spec.index.source.startswith("s3://") and spec.index.object_store is not None
    assert spec.index.object_store.credentials_secret_ref is not None
    assert "secret-access-key:" not in (EXAMPLES / "object-store.yaml").read_text(encoding="utf-8")
