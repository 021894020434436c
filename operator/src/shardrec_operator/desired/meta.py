"""Object metadata shared by every builder: name, namespace, labels and the owner reference.

The owner reference makes the RecommenderCluster the controller of each child, so deleting the
cluster garbage-collects everything (no finalizer needed for that), and `blockOwnerDeletion`
keeps foreground deletion honest.
"""

from __future__ import annotations

from typing import Any

from shardrec.api import v1alpha1 as api

Manifest = dict[str, Any]


def owner_reference(cluster: api.RecommenderCluster) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": cluster.metadata.name,
        "uid": cluster.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    cluster: api.RecommenderCluster,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": cluster.metadata.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(cluster)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def manifest(
    api_version: str,
    kind: str,
    cluster: api.RecommenderCluster,
    name: str,
    labels: dict[str, str],
    *,
    annotations: dict[str, str] | None = None,
    **top_level: Any,
) -> Manifest:
    """A complete object; `top_level` carries the kind's own keys: `spec`, `data`, `rules`..."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": object_meta(cluster, name, labels, annotations),
        **top_level,
    }
