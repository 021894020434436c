"""Manifests with the artifacts in an object store: no PVC anywhere, an init container per shard pod
that copies only its shard, credentials only as Secret references, and the GC and cleanup Jobs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shardrec.api import v1alpha1 as api
from shardrec_operator.desired import artifacts, names
from shardrec_operator.desired.index_build import (
    build_artifact_gc_job,
    build_cleanup_job,
    build_index_job,
)
from shardrec_operator.desired.router import build_router_deployment
from shardrec_operator.desired.shard import build_shard_statefulset
from shardrec_operator.desired.topology_configmap import build_layout_topology
from shardrec_operator.desired.validation import kubernetes_spec_errors
from tests.controller.samples import cluster, layout_of, spec_document

STORE_URL = "s3://artifacts/recs-prod"
CONNECTION = {
    "endpoint": "http://seaweedfs.storage:8333",
    "region": "eu-west-1",
    "pathStyle": True,
    "credentialsSecretRef": {"name": "s3-creds", "sessionTokenKey": "session-token"},
}
INDEX = {
    "version": "v1",
    "source": "s3://embeddings/movielens/v1",
    "dimension": 32,
    "objectStore": CONNECTION,
    "store": {"objectStore": {"url": STORE_URL}, "retention": {"keepLayouts": 2}},
}
SAMPLE = cluster(index=INDEX)
LAYOUT = layout_of(SAMPLE)
FLAGS = ["--s3-endpoint", "http://seaweedfs.storage:8333", "--s3-region", "eu-west-1", "--s3-path-style"]
PREFIX = f"{STORE_URL}/ml/recs/layouts"


def _pods() -> dict[str, dict[str, Any]]:
    return {
        "shard": build_shard_statefulset(SAMPLE, LAYOUT, 1, 2)["spec"]["template"]["spec"],
        "router": build_router_deployment(SAMPLE)["spec"]["template"]["spec"],
        "build": build_index_job(SAMPLE, LAYOUT, "a1")["spec"]["template"]["spec"],
        "gc": build_artifact_gc_job(SAMPLE, "0123456789", "v0")["spec"]["template"]["spec"],
        "cleanup": build_cleanup_job(SAMPLE)["spec"]["template"]["spec"],
    }


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("component", ["shard", "router", "build", "gc", "cleanup"])
def test_no_pvc_is_mounted_and_every_container_is_restricted(component: str) -> None:
    pod = _pods()[component]
    assert not any("persistentVolumeClaim" in volume for volume in pod["volumes"]), pod["volumes"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in _containers(pod):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert security["runAsNonRoot"] is True


@pytest.mark.parametrize("component", ["shard", "router", "build", "gc", "cleanup"])
def test_credentials_come_only_from_the_secret(component: str) -> None:
    pod = _pods()[component]
    text = json.dumps(pod)
    for container in _containers(pod):
        if container["name"] == "shard":
            assert "env" not in container, "the shard server never talks to the store"
            continue
        env = {
            entry["name"]: entry["valueFrom"]["secretKeyRef"]
            for entry in container["env"]
            if "valueFrom" in entry and "secretKeyRef" in entry["valueFrom"]
        }
        assert env == {
            "AWS_ACCESS_KEY_ID": {"name": "s3-creds", "key": "access-key-id"},
            "AWS_SECRET_ACCESS_KEY": {"name": "s3-creds", "key": "secret-access-key"},
            "AWS_SESSION_TOKEN": {"name": "s3-creds", "key": "session-token"},
        }
    assert 'AWS_SECRET_ACCESS_KEY", "value"' not in text, "no literal credential"


def test_router_gets_the_connection_as_environment_and_no_claim() -> None:
    (router,) = _pods()["router"]["containers"]
    plain = {entry["name"]: entry["value"] for entry in router["env"] if "value" in entry}
    assert plain == {
        "SHARDREC_S3_ENDPOINT": "http://seaweedfs.storage:8333",
        "SHARDREC_S3_REGION": "eu-west-1",
        "SHARDREC_S3_PATH_STYLE": "1",
    }
    pvc_router = build_router_deployment(cluster())["spec"]["template"]["spec"]["containers"][0]
    assert not any(entry["name"].startswith(("SHARDREC_S3_", "AWS_")) for entry in pvc_router["env"])


def test_shard_pod_fetches_only_its_shard_into_an_empty_dir_then_serves_from_it() -> None:
    pod = _pods()["shard"]
    (fetch,) = pod["initContainers"]
    assert fetch["command"] == [
        "recctl", "index", "fetch",
        "--store", PREFIX, "--layout", LAYOUT.id, "--dest", "/layout", "--shard", "1", *FLAGS,
    ]  # fmt: skip
    assert {"name": "layout", "mountPath": "/layout"} in fetch["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == artifacts.LAYOUT_VOLUME)
    assert volume == {"name": "layout", "emptyDir": {"sizeLimit": "2Gi"}}  # the shard's memory limit
    (shard,) = pod["containers"]
    assert shard["command"][shard["command"].index("--layout-dir") + 1] == "/layout"
    assert {"name": "layout", "mountPath": "/layout", "readOnly": True} in shard["volumeMounts"]
    # Readiness is still the shard's own /readyz: it turns ready after loading what was fetched.
    assert shard["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_without_a_memory_setting_the_copy_has_no_size_limit() -> None:
    sample = cluster(index=INDEX, resources={})
    assert artifacts.layout_volume(sample.spec) == {"name": "layout", "emptyDir": {}}


def test_build_job_uploads_to_the_layout_prefix_with_build_resources() -> None:
    sample = cluster(
        index=INDEX,
        resources={**spec_document()["resources"], "build": {"requests": {"cpu": "4", "memory": "8Gi"}}},
    )
    job = build_index_job(sample, LAYOUT, "a1")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[command.index("--embeddings") + 1] == "s3://embeddings/movielens/v1"
    assert command[command.index("--out") + 1] == f"{PREFIX}/{LAYOUT.id}"
    assert command[-len(FLAGS) - 2 :] == [*FLAGS, "--work-dir", "/work"]
    assert {"name": "build-work", "mountPath": "/work"} in container["volumeMounts"]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"}}
    # Without resources.build the build keeps the shard's resources (as before).
    default = build_index_job(SAMPLE, LAYOUT, "a1")["spec"]["template"]["spec"]["containers"][0]
    assert default["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}


def test_a_layout_of_several_shards_is_built_by_an_indexed_job_one_pod_per_shard() -> None:
    sample = cluster(
        index=INDEX,
        resources={**spec_document()["resources"], "build": {"requests": {"cpu": "2", "memory": "3Gi"}}},
    )
    job = build_index_job(sample, LAYOUT, "a1")
    assert LAYOUT.shards == 2
    assert {k: job["spec"][k] for k in ("completionMode", "completions", "parallelism", "backoffLimit")} == {
        "completionMode": "Indexed",
        "completions": 2,
        "parallelism": 2,
        "backoffLimit": 4,
    }
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    at = command.index("--only-shard")
    assert command[at : at + 3] == ["--only-shard", "$(JOB_COMPLETION_INDEX)", "--publish-when-complete"]
    assert container["env"][0] == {
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {
            "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
        },
    }
    # Each shard's pod has resources.build, not resources.shard.
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "3Gi"}}
    assert kubernetes_spec_errors(sample) == []


def test_one_shard_and_a_pvc_store_keep_one_job_that_builds_every_shard() -> None:
    for sample in (cluster(index=INDEX, shards=1), cluster()):
        job = build_index_job(sample, layout_of(sample), "a1")
        assert "completionMode" not in job["spec"] and job["spec"]["backoffLimit"] == 2
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert "--only-shard" not in command and "--publish-when-complete" not in command


def test_gc_job_deletes_one_layout_and_goes_away_after_an_hour() -> None:
    job = build_artifact_gc_job(SAMPLE, "0123456789", "v0")
    assert job["metadata"]["name"] == names.artifact_gc_job("recs", "0123456789")
    assert job["metadata"]["labels"]["shardrec.io/layout"] == "0123456789"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "artifact-gc"
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [
        "recctl", "index", "delete", "--store", PREFIX, "--layout", "0123456789",
        "--carry-store", PREFIX.removesuffix("/layouts"), *FLAGS,
    ]  # fmt: skip  # the layout's carry folders go with it (carry/ and carry-back/ beside layouts/)


def test_gc_job_on_a_pvc_store_deletes_the_layout_folder_on_the_claim() -> None:
    job = build_artifact_gc_job(cluster(), "0123456789", "v0")
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == [
        "recctl", "index", "delete", "--store", "/store/recs/layouts", "--layout", "0123456789",
        "--carry-store", "/store/recs",
    ]  # fmt: skip
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "index-store" for v in pod["volumes"])


def test_cleanup_job_deletes_every_layout_the_status_knows() -> None:
    stamp = "2026-11-23T12:00:00Z"
    status = api.RecommenderClusterStatus.model_validate(
        {
            "layouts": [
                {
                    "name": "aaaaaaaaaa",
                    "version": "v2",
                    "shards": 2,
                    "state": "Serving",
                    "createdAt": stamp,
                    "stateSince": stamp,
                }
            ],
            "storedLayouts": [
                {"name": "aaaaaaaaaa", "version": "v2", "builtAt": stamp},
                {"name": "bbbbbbbbbb", "version": "v1", "builtAt": stamp},
            ],
        }
    )
    script = build_cleanup_job(SAMPLE, status)["spec"]["template"]["spec"]["containers"][0]["command"][2]
    for layout in ("aaaaaaaaaa", "bbbbbbbbbb"):
        assert script.count(f"'--layout', '{layout}'") == 1
    # ... with their carry folders (an object store has no cluster folder to remove at once).
    assert script.count(f"'--carry-store', '{PREFIX.removesuffix('/layouts')}'") == 2
    assert "subprocess.run(command, check=True)" in script
    assert "'--s3-path-style'" in script


def test_deletion_passes_the_stored_status_to_the_cleanup_job() -> None:
    from shardrec_operator.reconcile import resources as kinds
    from shardrec_operator.reconcile.cleanup import clean_artifacts
    from tests.controller.fake_api import FakeClusterApi

    fake = FakeClusterApi()
    stamp = "2026-11-23T12:00:00Z"
    status = api.RecommenderClusterStatus(
        stored_layouts=[api.StoredLayoutStatus(name="cccccccccc", version="v1", built_at=stamp)]
    )
    state, _ = clean_artifacts(fake, SAMPLE, status)
    assert state == "running"
    job = fake.get(kinds.JOB, "ml", names.cleanup_job("recs"))
    assert job is not None
    assert "'cccccccccc'" in job["spec"]["template"]["spec"]["containers"][0]["command"][2]


def test_topology_names_the_layout_in_the_object_store() -> None:
    topology = build_layout_topology(SAMPLE, LAYOUT, {0: 2, 1: 2})
    assert topology.artifact_dir == f"{PREFIX}/{LAYOUT.id}"


def test_a_pvc_store_keeps_todays_manifests() -> None:
    sample = cluster()
    pod = build_shard_statefulset(sample, layout_of(sample), 0, 2)["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert any("persistentVolumeClaim" in volume for volume in pod["volumes"])


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({**INDEX, "store": {}}, "spec.index.store.persistentVolumeClaim or spec.index.store.objectStore"),
        ({**INDEX, "source": "/data/embeddings"}, "use s3:// or pvc://"),
    ],
)
def test_kubernetes_needs_a_store_and_a_reachable_source(index: dict[str, Any], message: str) -> None:
    errors = kubernetes_spec_errors(cluster(index=index))
    assert any(message in error for error in errors), errors


def test_the_object_store_sample_is_valid_on_kubernetes() -> None:
    assert kubernetes_spec_errors(SAMPLE) == []
