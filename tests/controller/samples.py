"""Sample RecommenderClusters and kopf-like bodies for the operator's unit tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from shardrec.api import v1alpha1 as api
from shardrec.planning import LayoutSpec

NAMESPACE = "ml"
NAME = "recs"
UID = "6f1c2a4e-0000-4000-8000-000000000001"
T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def spec_document(**overrides: Any) -> dict[str, Any]:
    """A valid wire-form spec; `overrides` replace top-level keys (camelCase)."""
    spec: dict[str, Any] = {
        "shards": 2,
        "replicasPerShard": 2,
        "index": {
            "version": "v1",
            "source": "pvc://embeddings/movielens/v1",
            "dimension": 32,
            "metric": "cosine",
            "store": {"persistentVolumeClaim": {"claimName": "index-store", "subPath": "shardrec"}},
        },
        "image": "registry.example/shardrec:1.2.3",
        "resources": {
            "shard": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            "router": {"requests": {"cpu": "250m", "memory": "256Mi"}},
        },
    }
    spec.update(overrides)
    return spec


def body(generation: int = 1, status: dict[str, Any] | None = None, **spec_overrides: Any) -> dict[str, Any]:
    """The object as kopf hands it to a handler."""
    document: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": UID, "generation": generation},
        "spec": spec_document(**spec_overrides),
    }
    if status is not None:
        document["status"] = copy.deepcopy(status)
    return document


def cluster(**spec_overrides: Any) -> api.RecommenderCluster:
    document = body(**spec_overrides)
    document.pop("status", None)
    return api.RecommenderCluster.model_validate(document)


def layout_of(sample: api.RecommenderCluster) -> LayoutSpec:
    return LayoutSpec.from_spec(sample.spec)


def with_index(sample_body: dict[str, Any], **index_overrides: Any) -> dict[str, Any]:
    """A copy of a body with `spec.index` fields replaced and the generation bumped."""
    changed = copy.deepcopy(sample_body)
    changed["spec"]["index"].update(index_overrides)
    changed["metadata"]["generation"] += 1
    return changed


def with_spec(sample_body: dict[str, Any], **spec_overrides: Any) -> dict[str, Any]:
    changed = copy.deepcopy(sample_body)
    changed["spec"].update(spec_overrides)
    changed["metadata"]["generation"] += 1
    return changed
