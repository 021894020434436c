"""The RecommenderCluster spec model: defaults, bounds, cross-field rules and error messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shardrec.api.v1alpha1 import RecommenderCluster, RecommenderClusterSpec, transition_errors


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "index": {"version": "v1", "source": "/data/embeddings", "dimension": 64},
    }
    spec.update(overrides)
    return spec


def test_defaults_are_what_a_user_expects() -> None:
    spec = RecommenderClusterSpec.model_validate(minimal_spec())
    assert spec.shards == 1
    assert spec.replicas_per_shard == 2
    assert spec.index.metric == "cosine"
    assert (spec.index.hnsw.m, spec.index.hnsw.ef_construction, spec.index.hnsw.ef_search) == (16, 200, 64)
    assert spec.partitioning.scheme == "jump-hash-item-id"
    assert spec.router.consistency == "strict"
    assert spec.router.hedging.enabled is True
    assert spec.router.autoscaling is None
    assert spec.rollout.strategy == "BlueGreen"
    assert spec.rollout.keep_previous_layouts == 1
    assert spec.auth.api_keys_secret_ref is None
    assert spec.paused is False


def test_wire_names_are_camel_case_and_round_trip() -> None:
    spec = RecommenderClusterSpec.model_validate(minimal_spec(replicasPerShard=3))
    dumped = spec.model_dump(by_alias=True)
    assert dumped["replicasPerShard"] == 3
    assert dumped["index"]["hnsw"]["efConstruction"] == 200
    assert RecommenderClusterSpec.model_validate(dumped) == spec


def _error_locations(exc: ValidationError) -> list[str]:
    return [".".join(str(part) for part in err["loc"]) for err in exc.errors()]


BOUNDS = [
    ({"shards": 0}, "shards"),
    ({"shards": 1025}, "shards"),
    ({"replicasPerShard": 0}, "replicasPerShard"),
    ({"replicasPerShard": 17}, "replicasPerShard"),
    ({"router": {"replicas": 0}}, "router.replicas"),
    ({"router": {"timeoutMs": 5}}, "router.timeoutMs"),
    ({"router": {"consistency": "eventual"}}, "router.consistency"),
    ({"router": {"hedging": {"budgetPercent": 101}}}, "router.hedging.budgetPercent"),
    ({"rollout": {"timeoutSeconds": 1}}, "rollout.timeoutSeconds"),
    ({"rollout": {"keepPreviousLayouts": 4}}, "rollout.keepPreviousLayouts"),
    ({"rollout": {"strategy": "Rolling"}}, "rollout.strategy"),
    ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
    ({"resources": {"shard": {"requests": {"gpu": "1"}}}}, "resources.shard.requests"),
    ({"resources": {"shard": {"limits": {"memory": "lots"}}}}, "resources.shard.limits.memory"),
    ({"unknownField": 1}, "unknownField"),
]


@pytest.mark.parametrize(("override", "field"), BOUNDS)
def test_each_bound_is_enforced_and_names_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RecommenderClusterSpec.model_validate(minimal_spec(**override))
    assert any(loc.startswith(field) for loc in _error_locations(caught.value)), caught.value


INDEX_BOUNDS = [
    ({"version": "V1"}, "index.version"),
    ({"version": ""}, "index.version"),
    ({"source": "gs://bucket/x"}, "index.source"),
    ({"store": {"objectStore": {"url": "s3://UPPER/x"}}, "objectStore": {}}, "index.store.objectStore.url"),
    ({"store": {"retention": {"keepLayouts": 0}}}, "index.store.retention.keepLayouts"),
    ({"store": {"retention": {"maxAgeHours": -1}}}, "index.store.retention.maxAgeHours"),
    ({"objectStore": {"endpoint": "seaweed:8333"}}, "index.objectStore.endpoint"),
    ({"dimension": 0}, "index.dimension"),
    ({"dimension": 5000}, "index.dimension"),
    ({"metric": "hamming"}, "index.metric"),
    ({"hnsw": {"m": 2}}, "index.hnsw.m"),
    ({"hnsw": {"efSearch": 5}}, "index.hnsw.efSearch"),
    ({"store": {"persistentVolumeClaim": {"claimName": "c", "subPath": "../x"}}}, "index.store"),
]


@pytest.mark.parametrize(("override", "field"), INDEX_BOUNDS)
def test_index_bounds_name_the_field(override: dict[str, Any], field: str) -> None:
    spec = minimal_spec()
    spec["index"] = {**spec["index"], **override}
    with pytest.raises(ValidationError) as caught:
        RecommenderClusterSpec.model_validate(spec)
    assert any(loc.startswith(field) for loc in _error_locations(caught.value)), caught.value


CROSS_FIELD = [
    (
        {"index": {"version": "v1", "source": "/d", "dimension": 8, "hnsw": {"m": 64, "efConstruction": 32}}},
        "efConstruction must be at least hnsw.m",
    ),
    ({"router": {"timeoutMs": 50, "hedging": {"afterMs": 50}}}, "afterMs must be below router.timeoutMs"),
    ({"router": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, "minReplicas must not exceed"),
    ({"shards": 1024, "replicasPerShard": 5}, "must not exceed 4096 pods"),
    (
        {"index": {"version": "v1", "source": "s3://bucket/embeddings", "dimension": 8}},
        "index.objectStore is required when index.source or index.store.objectStore is an s3:// URL",
    ),
    (
        {
            "index": {
                "version": "v1",
                "source": "/d",
                "dimension": 8,
                "store": {"objectStore": {"url": "s3://bucket/layouts"}},
            }
        },
        "index.objectStore is required when",
    ),
    (
        {
            "index": {
                "version": "v1",
                "source": "/d",
                "dimension": 8,
                "objectStore": {},
                "store": {
                    "objectStore": {"url": "s3://bucket/layouts"},
                    "persistentVolumeClaim": {"claimName": "c"},
                },
            }
        },
        "set persistentVolumeClaim or objectStore, not both",
    ),
]


def test_object_store_source_and_store_with_defaults() -> None:
    spec = RecommenderClusterSpec.model_validate(
        minimal_spec(
            index={
                "version": "v1",
                "source": "s3://embeddings/movielens/v1",
                "dimension": 8,
                "objectStore": {
                    "endpoint": "http://seaweedfs.storage:8333",
                    "pathStyle": True,
                    "credentialsSecretRef": {"name": "s3-creds"},
                },
                "store": {"objectStore": {"url": "s3://artifacts/recs"}},
            }
        )
    )
    connection = spec.index.object_store
    assert connection is not None and connection.region == "us-east-1" and connection.path_style
    ref = connection.credentials_secret_ref
    assert ref is not None
    assert (ref.access_key_id_key, ref.secret_access_key_key, ref.session_token_key) == (
        "access-key-id",
        "secret-access-key",
        None,
    )
    assert spec.index.store.retention.keep_layouts == 3
    assert spec.index.store.retention.max_age_hours == 0
    wire = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert wire["index"]["store"]["objectStore"] == {"url": "s3://artifacts/recs"}


def test_a_pvc_store_needs_no_object_store_settings() -> None:
    spec = RecommenderClusterSpec.model_validate(
        minimal_spec(
            index={
                "version": "v1",
                "source": "pvc://data/embeddings",
                "dimension": 8,
                "store": {"persistentVolumeClaim": {"claimName": "data"}},
            }
        )
    )
    assert spec.index.object_store is None and spec.index.store.object_store is None


@pytest.mark.parametrize(("override", "message"), CROSS_FIELD)
def test_cross_field_rules_reject_with_a_clear_message(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RecommenderClusterSpec.model_validate(minimal_spec(**override))


def test_hedging_disabled_lifts_the_hedge_deadline_rule() -> None:
    spec = RecommenderClusterSpec.model_validate(
        minimal_spec(router={"timeoutMs": 50, "hedging": {"enabled": False, "afterMs": 50}})
    )
    assert spec.router.hedging.enabled is False


def test_whole_object_parses_from_yaml_shape() -> None:
    obj = RecommenderCluster.model_validate(
        {
            "apiVersion": "shardrec.io/v1alpha1",
            "kind": "RecommenderCluster",
            "metadata": {"name": "movies", "namespace": "reco"},
            "spec": minimal_spec(shards=4),
        }
    )
    assert obj.metadata.name == "movies"
    assert obj.spec.shards == 4


def test_wrong_api_version_is_rejected() -> None:
    with pytest.raises(ValidationError, match="apiVersion"):
        RecommenderCluster.model_validate(
            {
                "apiVersion": "shardrec.io/v2",
                "kind": "RecommenderCluster",
                "metadata": {"name": "x"},
                "spec": minimal_spec(),
            }
        )


def test_metric_and_dimension_cannot_change_in_place() -> None:
    old = RecommenderClusterSpec.model_validate(minimal_spec())
    new_metric = RecommenderClusterSpec.model_validate(
        minimal_spec(index={"version": "v2", "source": "/d", "dimension": 64, "metric": "l2"})
    )
    new_dimension = RecommenderClusterSpec.model_validate(
        minimal_spec(index={"version": "v2", "source": "/d", "dimension": 32})
    )
    assert transition_errors(old, new_metric) == [
        "index.metric cannot change in place: create a new RecommenderCluster"
    ]
    assert transition_errors(old, new_dimension) == [
        "index.dimension cannot change in place: create a new RecommenderCluster"
    ]


def test_version_and_shard_changes_are_allowed_transitions() -> None:
    old = RecommenderClusterSpec.model_validate(minimal_spec())
    new = RecommenderClusterSpec.model_validate(
        minimal_spec(shards=3, index={"version": "v2", "source": "/other", "dimension": 64})
    )
    assert transition_errors(old, new) == []


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"metadata": {"labels": {"shardrec.io/shard": "1"}}}, "are the operator's"),
        ({"metadata": {"labels": {"app.kubernetes.io/component": "x"}}}, "are the operator's"),
        ({"metadata": {"annotations": {"shardrec.io/router-config-hash": "x"}}}, "are the operator's"),
        (
            {
                "metadata": {
                    "annotations": {"container.apparmor.security.beta.kubernetes.io/shard": "unconfined"}
                }
            },
            "AppArmor",
        ),
        ({"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}, "hostPath"),
        ({"volumes": [{"name": "bare"}]}, "exactly one source"),
        ({"volumes": [{"name": "two", "emptyDir": {}, "secret": {"secretName": "s"}}]}, "exactly one source"),
        ({"volumeMounts": [{"name": "nowhere", "mountPath": "/x"}]}, "names a volume"),
        ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}]}, "not both"),
        ({"env": [{"name": "1=A"}]}, "env.0.name"),
        ({"containers": []}, "containers"),
        ({"securityContext": {"privileged": True}}, "securityContext"),
        ({"zoneSpread": "Sometimes"}, "zoneSpread"),
    ],
)
def test_pod_templates_reject_what_they_cannot_carry(template: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RecommenderClusterSpec.model_validate(minimal_spec(podTemplates={"shard": template}))


def test_pod_templates_accept_placement_metadata_env_and_volumes() -> None:
    template = {
        "metadata": {
            "labels": {"team": "recs", "app.kubernetes.io/version": "1.2"},
            "annotations": {"example.com/owner": "recs"},
        },
        "nodeSelector": {"pool": "search"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
        },
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
        ],
        "priorityClassName": "high",
        "imagePullSecrets": [{"name": "registry"}],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "volumes": [{"name": "ca", "configMap": {"name": "ca"}}],
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
    }
    spec = RecommenderClusterSpec.model_validate(
        minimal_spec(podTemplates={"shard": {**template, "zoneSpread": "Hard"}, "build": template})
    )
    assert spec.pod_templates.shard is not None and spec.pod_templates.shard.zone_spread == "Hard"
    assert spec.pod_templates.router is None
    assert spec.model_dump(by_alias=True, exclude_none=True)["podTemplates"]["build"]["volumes"] == [
        {"name": "ca", "configMap": {"name": "ca"}}
    ]


def test_the_object_store_location_cannot_change_in_place_but_retention_can() -> None:
    from shardrec.api.v1alpha1 import transition_errors

    def spec(store: dict[str, Any]) -> RecommenderClusterSpec:
        index = {"version": "v1", "source": "/d", "dimension": 8, "objectStore": {}, "store": store}
        return RecommenderClusterSpec.model_validate(minimal_spec(index=index))

    pvc = spec({"persistentVolumeClaim": {"claimName": "c"}})
    s3 = spec({"objectStore": {"url": "s3://bucket/a"}})
    moved = spec({"objectStore": {"url": "s3://bucket/b"}})
    kept = spec({"objectStore": {"url": "s3://bucket/a"}, "retention": {"keepLayouts": 5}})
    for old, new in ((pvc, s3), (s3, pvc), (s3, moved)):
        assert any("cannot be added, removed or moved" in e for e in transition_errors(old, new))
    assert transition_errors(s3, kept) == []
    assert transition_errors(pvc, pvc) == []


def test_writes_are_off_by_default_with_all_acks_and_a_1gi_log() -> None:
    writes = RecommenderClusterSpec.model_validate(minimal_spec()).writes
    assert (writes.enabled, writes.ack, writes.log_volume.size) == (False, "all", "1Gi")
    assert writes.log_volume.storage_class_name is None


@pytest.mark.parametrize(
    ("writes", "field"),
    [
        ({"ack": "quorum"}, "writes.ack"),
        ({"ack": "ALL"}, "writes.ack"),
        ({"logVolume": {"size": "0"}}, "writes.logVolume.size"),
        ({"logVolume": {"size": "-1Gi"}}, "writes.logVolume.size"),
        ({"logVolume": {"size": "1.5Gi"}}, "writes.logVolume.size"),
        ({"logVolume": {"size": "1GB"}}, "writes.logVolume.size"),
        ({"logVolume": {"size": ""}}, "writes.logVolume.size"),
        ({"logVolume": {"storageClassName": ""}}, "writes.logVolume.storageClassName"),
        ({"logVolume": {"storageClassName": "Fast_SSD"}}, "writes.logVolume.storageClassName"),
        ({"enabled": "sometimes"}, "writes.enabled"),
        ({"acks": "all"}, "writes.acks"),
    ],
)
def test_bad_writes_settings_are_rejected_naming_the_field(writes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RecommenderClusterSpec.model_validate(minimal_spec(writes=writes))
    assert any(loc.startswith(field) for loc in _error_locations(caught.value)), caught.value


@pytest.mark.parametrize("size", ["1Gi", "500Mi", "10G", "1048576", "2Ti"])
def test_whole_sizes_with_a_suffix_are_accepted(size: str) -> None:
    spec = RecommenderClusterSpec.model_validate(minimal_spec(writes={"logVolume": {"size": size}}))
    assert spec.writes.log_volume.size == size


def test_the_log_volume_cannot_change_while_writes_stay_enabled() -> None:
    def spec(enabled: bool, size: str, storage_class: str | None = None) -> RecommenderClusterSpec:
        volume: dict[str, Any] = {"size": size}
        if storage_class is not None:
            volume["storageClassName"] = storage_class
        return RecommenderClusterSpec.model_validate(
            minimal_spec(writes={"enabled": enabled, "logVolume": volume})
        )

    on = spec(True, "1Gi")
    for changed in (spec(True, "2Gi"), spec(True, "1Gi", "fast")):
        assert any("writes.logVolume cannot change" in e for e in transition_errors(on, changed))
    # Off on either side: the claims of the new layout are new claims, nothing is resized.
    assert transition_errors(on, spec(False, "2Gi")) == []
    assert transition_errors(spec(False, "1Gi"), spec(True, "2Gi", "fast")) == []
    assert transition_errors(on, spec(True, "1Gi")) == []
