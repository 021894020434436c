"""Item writes on Kubernetes: the write-log claims of shard StatefulSets and the router's ack policy.

Why the shape matters: a StatefulSet's volumeClaimTemplates cannot change, so the write-log
claim is part of the layout (a new layout, with new StatefulSets, whenever writes are turned on
or off or the log volume changes), and a layout without writes builds exactly what it built
before writes existed.
"""

from __future__ import annotations

from typing import Any

import pytest

from shardrec.serving.router.config import RouterConfig
from shardrec_operator.desired import names
from shardrec_operator.desired.router import (
    CONFIG_HASH_ANNOTATION,
    ROUTER_CONFIG_KEY,
    build_router_config,
    build_router_deployment,
)
from shardrec_operator.desired.shard import (
    SHARD_CONTAINER,
    WRITE_LOG_MOUNT,
    WRITE_LOG_VOLUME,
    build_shard_statefulset,
)
from shardrec_operator.desired.validation import kubernetes_spec_errors
from tests.controller.samples import cluster, layout_of

WRITES = {"enabled": True, "ack": "majority", "logVolume": {"size": "2Gi", "storageClassName": "fast-ssd"}}


def _container(statefulset: dict[str, Any]) -> dict[str, Any]:
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = next(c for c in containers if c["name"] == SHARD_CONTAINER)
    return found


def test_each_replica_gets_its_own_read_write_once_log_claim_mounted_as_write_log_dir() -> None:
    sample = cluster(writes=WRITES)
    statefulset = build_shard_statefulset(sample, layout_of(sample), 1, 3)
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == WRITE_LOG_VOLUME
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "2Gi"}},
        "storageClassName": "fast-ssd",
    }
    # Claims carry the shard's labels, so `kubectl get pvc -l shardrec.io/layout=...` finds them.
    assert claim["metadata"]["labels"] == statefulset["metadata"]["labels"]
    container = _container(statefulset)
    assert {"name": WRITE_LOG_VOLUME, "mountPath": WRITE_LOG_MOUNT} in container["volumeMounts"]
    command = container["command"]
    assert command[command.index("--write-log-dir") + 1] == WRITE_LOG_MOUNT
    # The claim is not a pod volume: the StatefulSet controller adds it per ordinal.
    volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    assert WRITE_LOG_VOLUME not in {v["name"] for v in volumes}


def test_claims_go_with_their_layout_and_with_scaled_away_followers() -> None:
    sample = cluster(writes=WRITES)
    statefulset = build_shard_statefulset(sample, layout_of(sample), 0, 2)
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete",
        "whenScaled": "Delete",
    }


def test_without_a_storage_class_the_cluster_default_is_used() -> None:
    sample = cluster(writes={"enabled": True})
    (claim,) = build_shard_statefulset(sample, layout_of(sample), 0, 2)["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in claim["spec"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"


def test_writes_off_builds_exactly_what_was_built_before_writes_existed() -> None:
    plain = cluster()
    off = cluster(writes={"enabled": False, "ack": "majority", "logVolume": {"size": "9Gi"}})
    assert build_shard_statefulset(off, layout_of(off), 1, 2) == build_shard_statefulset(
        plain, layout_of(plain), 1, 2
    )
    statefulset = build_shard_statefulset(off, layout_of(off), 1, 2)
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert "persistentVolumeClaimRetentionPolicy" not in statefulset["spec"]
    assert "--write-log-dir" not in _container(statefulset)["command"]
    assert build_router_config(off) == build_router_config(plain)


def test_turning_writes_on_makes_new_statefulsets_instead_of_changing_immutable_ones() -> None:
    # The API server refuses a volumeClaimTemplates change on an existing StatefulSet; a new
    # layout id means new StatefulSet names, created beside the old ones (blue/green).
    off, on = cluster(), cluster(writes=WRITES)
    old = build_shard_statefulset(off, layout_of(off), 0, 2)
    new = build_shard_statefulset(on, layout_of(on), 0, 2)
    assert old["metadata"]["name"] != new["metadata"]["name"]
    assert new["metadata"]["name"] == names.shard_set("recs", layout_of(on).id, 0)
    # The old layout's StatefulSet, rebuilt while the spec says writes are on, keeps its shape:
    # the builder reads the layout, never the current spec, for the claims.
    assert build_shard_statefulset(on, layout_of(off), 0, 2) == old


def test_the_router_gets_the_ack_policy_it_loads() -> None:
    sample = cluster(writes=WRITES)
    text = build_router_config(sample)["data"][ROUTER_CONFIG_KEY]
    assert RouterConfig.model_validate_json(text).writes.ack == "majority"
    default_ack = build_router_config(cluster(writes={"enabled": True}))["data"][ROUTER_CONFIG_KEY]
    assert RouterConfig.model_validate_json(default_ack).writes.ack == "all"


def test_changing_the_ack_policy_restarts_the_routers_and_no_shard() -> None:
    all_acks, majority = cluster(writes={"enabled": True}), cluster(writes=WRITES | {"logVolume": {}})
    hashes = [
        build_router_deployment(c)["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        for c in (all_acks, majority)
    ]
    assert hashes[0] != hashes[1]
    assert layout_of(all_acks) == layout_of(majority)


@pytest.mark.parametrize("enabled", [True, False])
def test_a_pod_template_volume_named_like_the_log_claim_is_refused_only_with_writes(enabled: bool) -> None:
    sample = cluster(
        writes={"enabled": enabled},
        podTemplates={"shard": {"volumes": [{"name": WRITE_LOG_VOLUME, "emptyDir": {}}]}},
    )
    errors = kubernetes_spec_errors(sample)
    assert any("spec.podTemplates.shard.volumes[write-log]" in e for e in errors) is enabled


def test_a_pod_template_mount_over_the_log_directory_is_refused() -> None:
    sample = cluster(
        writes={"enabled": True},
        podTemplates={
            "shard": {
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "volumeMounts": [{"name": "scratch", "mountPath": WRITE_LOG_MOUNT}],
            }
        },
    )
    assert any("overlaps" in e and WRITE_LOG_MOUNT in e for e in kubernetes_spec_errors(sample))
