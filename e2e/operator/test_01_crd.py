"""Scenario 1: the CRD installs, rejects invalid objects naming the field, and explains itself."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

pytestmark = [pytest.mark.controlplane]


def _set(document: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    node = changed["spec"]
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return changed


_DELETE = object()

# (field to change, value, text the API server's message must contain)
INVALID = [
    ("shards", 0, "spec.shards"),
    ("shards", 1025, "spec.shards"),
    ("replicasPerShard", 0, "spec.replicasPerShard"),
    ("replicasPerShard", 17, "spec.replicasPerShard"),
    ("index.version", "V_1", "spec.index.version"),
    ("index.dimension", 0, "spec.index.dimension"),
    ("index.metric", "dot", "spec.index.metric"),
    ("index.source", "gs://bucket/x", "spec.index.source"),
    ("index.source", "s3://bucket/x", "index.objectStore is required when index.source"),
    (
        "index.store",
        {"persistentVolumeClaim": {"claimName": "x"}, "objectStore": {"url": "s3://bucket/x"}},
        "set persistentVolumeClaim or objectStore, not both",
    ),
    ("index.store", {"objectStore": {"url": "s3://Bad_Bucket/x"}}, "spec.index.store.objectStore.url"),
    ("index.store", {"retention": {"keepLayouts": 0}}, "spec.index.store.retention.keepLayouts"),
    ("index.objectStore", {"endpoint": "seaweedfs:8333"}, "spec.index.objectStore.endpoint"),
    ("index.hnsw", {"m": 2}, "spec.index.hnsw.m"),
    ("index.hnsw", {"m": 64, "efConstruction": 32}, "hnsw.efConstruction must be at least hnsw.m"),
    ("index.store", {"persistentVolumeClaim": {"claimName": "x", "subPath": "../up"}}, "subPath"),
    ("router.hedging", {"afterMs": 2000}, "router.hedging.afterMs must be below router.timeoutMs"),
    ("router.autoscaling", {"minReplicas": 5, "maxReplicas": 2}, "minReplicas must not exceed maxReplicas"),
    ("router.consistency", "eventual", "spec.router.consistency"),
    ("rollout.timeoutSeconds", 5, "spec.rollout.timeoutSeconds"),
    ("failover.forceDeleteAfterSeconds", 10, "spec.failover.forceDeleteAfterSeconds"),
    ("image", "", "spec.image"),
    ("imagePullPolicy", "Sometimes", "spec.imagePullPolicy"),
    ("resources.shard", {"requests": {"gpu": "1"}}, "allowed keys"),
    ("resources.router", {"limits": {"memory": "lots"}}, "spec.resources.router.limits"),
    ("auth.rateLimitPerSecond", -1, "spec.auth.rateLimitPerSecond"),
    ("podTemplates.shard", {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}, "hostPath"),
    ("podTemplates.shard", {"volumes": [{"name": "bare"}]}, "exactly one source"),
    ("podTemplates.shard", {"metadata": {"labels": {"shardrec.io/shard": "9"}}}, "are the operator's"),
    (
        "podTemplates.router",
        {
            "metadata": {
                "annotations": {"container.apparmor.security.beta.kubernetes.io/router": "unconfined"}
            }
        },
        "AppArmor",
    ),
    ("podTemplates.build", {"volumeMounts": [{"name": "x", "mountPath": "/x"}]}, "names a volume"),
    ("podTemplates.shard", {"env": [{"name": "A", "value": "1", "valueFrom": {}}]}, "not both"),
    ("podTemplates.shard", {"zoneSpread": "Maybe"}, "spec.podTemplates.shard.zoneSpread"),
    ("writes.ack", "quorum", "spec.writes.ack"),
    ("writes.logVolume", {"size": "0"}, "spec.writes.logVolume.size"),
    ("writes.logVolume", {"size": "1.5Gi"}, "spec.writes.logVolume.size"),
    ("writes.logVolume", {"storageClassName": ""}, "spec.writes.logVolume.storageClassName"),
    ("unknownField", True, "unknownField"),
    ("index", _DELETE, "spec.index"),
]


def test_crd_rejects_invalid_objects_naming_the_field_and_explains_fields(
    kube: Any, namespace: str, harness: Any
) -> None:
    valid = harness.cluster_document(namespace)

    def apply(document: dict[str, Any]) -> Any:
        return kube.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(document), check=False)

    failures = []
    for field, value, expected in INVALID:
        result = apply(_set(valid, field, value))
        if result.returncode == 0 or expected not in result.stderr:
            failures.append(f"{field}={value!r}: rc={result.returncode} {result.stderr.strip()[:300]}")
    assert not failures, "\n".join(failures)
    assert len(INVALID) >= 15

    shards_times_replicas = _set(_set(valid, "shards", 512), "replicasPerShard", 9)
    result = apply(shards_times_replicas)
    assert result.returncode != 0 and "must not exceed 4096 pods" in result.stderr

    templated = _set(
        valid,
        "podTemplates",
        {
            "shard": {
                "zoneSpread": "Hard",
                "metadata": {"labels": {"team": "recs"}, "annotations": {"example.com/owner": "recs"}},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "recs", "effect": "NoSchedule"}
                ],
                "env": [{"name": "MALLOC_ARENA_MAX", "value": "2"}],
                "volumes": [{"name": "extra", "emptyDir": {}}],
                "volumeMounts": [{"name": "extra", "mountPath": "/extra"}],
            },
            "build": {"priorityClassName": "batch-low", "imagePullSecrets": [{"name": "registry"}]},
        },
    )
    assert apply(templated).returncode == 0, "a valid object with pod templates is accepted"
    assert apply(valid).returncode == 0, "the valid object is accepted"
    metric_change = apply(_set(valid, "index.metric", "ip"))
    assert metric_change.returncode != 0 and "index.metric cannot change in place" in metric_change.stderr
    to_object_store = _set(
        _set(valid, "index.store", {"objectStore": {"url": "s3://bucket/x"}}), "index.objectStore", {}
    )
    moved = apply(to_object_store)
    assert moved.returncode != 0 and "cannot be added, removed or moved in place" in moved.stderr, (
        moved.stderr
    )

    with_writes = _set(valid, "writes", {"enabled": True, "logVolume": {"size": "1Gi"}})
    assert apply(with_writes).returncode == 0, "writes can be turned on"
    resized = apply(_set(valid, "writes", {"enabled": True, "logVolume": {"size": "2Gi"}}))
    assert resized.returncode != 0 and "writes.logVolume cannot change" in resized.stderr, resized.stderr
    assert apply(_set(valid, "writes", {"enabled": False, "logVolume": {"size": "2Gi"}})).returncode == 0
    assert apply(valid).returncode == 0

    explained = kube.kubectl("explain", "recommenderclusters.spec.replicasPerShard").stdout
    assert "Replicas of every shard" in explained
    explained = kube.kubectl("explain", "recommenderclusters.spec.index.version").stdout
    assert "switches the router" in explained
