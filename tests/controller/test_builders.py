"""Properties every built manifest must have, beyond the snapshots: security, storage, safety."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from shardrec.api import v1alpha1 as api
from shardrec.api.topology import LayoutTopology
from shardrec.serving.router.config import RouterConfig
from shardrec_operator.desired import labels, names, pods
from shardrec_operator.desired.cluster import build_cluster_objects
from shardrec_operator.desired.index_build import (
    JOB_GRACE_SECONDS,
    build_artifact_gc_job,
    build_cleanup_job,
    build_index_job,
    resolve_source,
)
from shardrec_operator.desired.network import build_shard_network_policy
from shardrec_operator.desired.rbac import build_router_role
from shardrec_operator.desired.router import (
    CONFIG_HASH_ANNOTATION,
    ROUTER_CONFIG_KEY,
    build_router_config,
    build_router_deployment,
    build_router_pdb,
)
from shardrec_operator.desired.shard import build_shard_pdb, build_shard_service, build_shard_statefulset
from shardrec_operator.desired.topology_configmap import build_layout_topology
from shardrec_operator.desired.validation import kubernetes_spec_errors
from tests.controller.samples import cluster, layout_of

SAMPLE = cluster()
LAYOUT = layout_of(SAMPLE)


def _pod_specs() -> dict[str, dict[str, Any]]:
    return {
        "shard": build_shard_statefulset(SAMPLE, LAYOUT, 0, 2)["spec"]["template"]["spec"],
        "router": build_router_deployment(SAMPLE)["spec"]["template"]["spec"],
        "build": build_index_job(SAMPLE, LAYOUT, "a1")["spec"]["template"]["spec"],
        "cleanup": build_cleanup_job(SAMPLE)["spec"]["template"]["spec"],
    }


@pytest.mark.parametrize("component", ["shard", "router", "build", "cleanup"])
def test_every_pod_passes_the_restricted_pod_security_standard(component: str) -> None:
    pod = _pod_specs()[component]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert not any("hostPath" in volume for volume in pod["volumes"])
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert security.get("privileged") is not True
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert any(v["name"] == tmp["name"] and "emptyDir" in v for v in pod["volumes"])


def _store(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = next(v for v in pod["volumes"] if v["name"] == pods.STORE_VOLUME)
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == pods.STORE_VOLUME)
    return volume, mount


@pytest.mark.parametrize(("component", "read_only"), [("shard", True), ("router", True), ("build", False)])
def test_index_store_is_read_only_except_in_the_build_job(component: str, read_only: bool) -> None:
    volume, mount = _store(_pod_specs()[component])
    assert volume["persistentVolumeClaim"] == {"claimName": "index-store", "readOnly": read_only}
    assert mount["readOnly"] is read_only
    assert mount["subPath"] == "shardrec"


def test_only_the_router_mounts_an_api_token() -> None:
    specs = _pod_specs()
    assert specs["router"]["automountServiceAccountToken"] is True
    for component in ("shard", "build", "cleanup"):
        assert specs[component]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("replicas", [1, 2, 5])
def test_pdb_never_deadlocks_a_drain_even_for_single_replica_shards(replicas: int) -> None:
    sample = cluster(replicasPerShard=replicas)
    pdb = build_shard_pdb(sample, layout_of(sample), 0)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    statefulset = build_shard_statefulset(sample, layout_of(sample), 0, replicas)
    assert pdb["spec"]["selector"] == statefulset["spec"]["selector"]


def test_router_pdb_allows_one_disruption_and_selects_the_router_pods() -> None:
    pdb = build_router_pdb(SAMPLE)
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"] == build_router_deployment(SAMPLE)["spec"]["selector"]


@pytest.mark.parametrize("drain", [0, 5, 30])
def test_pre_stop_drains_fit_in_the_grace_period(drain: int) -> None:
    sample = cluster(rollout={"drainSeconds": drain})
    shard_pod = build_shard_statefulset(sample, layout_of(sample), 0, 2)["spec"]["template"]["spec"]
    router_pod = build_router_deployment(sample)["spec"]["template"]["spec"]
    shard, router = shard_pod["containers"][0], router_pod["containers"][0]
    assert shard["lifecycle"]["preStop"]["httpGet"] == {"path": "/prestop", "port": "http"}
    assert shard["command"][shard["command"].index("--drain-seconds") + 1] == str(drain)
    if drain:
        assert router["lifecycle"]["preStop"] == {"sleep": {"seconds": drain}}
    else:
        assert "lifecycle" not in router, "a zero-second sleep action needs a newer feature gate"
    for pod in (shard_pod, router_pod):
        # The kubelet counts the preStop hook against the grace period; shutdown needs the rest.
        assert pod["terminationGracePeriodSeconds"] >= drain + 10


def test_job_pods_are_stopped_within_seconds() -> None:
    """A Job's command runs as PID 1 of its container, and `recctl` / `python -c` install no SIGTERM
    handler: the kernel drops the signal, so a deleted build or cleanup pod would go on for the
    default 30 s until SIGKILL (holding its CPU and memory while a newer build waits). Their work
    is idempotent (a build publishes layout.json last; deletes may repeat), so a short grace
    bounds that."""
    jobs = {
        "build": build_index_job(SAMPLE, LAYOUT, "a1"),
        "artifact gc": build_artifact_gc_job(SAMPLE, "layout-0123456789", "v1"),
        "cleanup": build_cleanup_job(SAMPLE),
    }
    for name, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        assert pod.get("terminationGracePeriodSeconds") == JOB_GRACE_SECONDS, name
    assert JOB_GRACE_SECONDS <= 10


@pytest.mark.parametrize(
    ("resources", "threads"),
    [
        ({"requests": {"cpu": "500m"}}, "1"),
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "2500m"}}, "3"),
        ({"requests": {"cpu": "4"}}, "4"),
        ({"limits": {"cpu": "1.5"}, "requests": {"cpu": "250m"}}, "2"),
        ({"requests": {"memory": "1Gi"}}, None),
    ],
)
def test_thread_counts_follow_the_cpu_limit_or_request(
    resources: dict[str, Any], threads: str | None
) -> None:
    sample = cluster(resources={"shard": resources, "build": resources, "router": resources})
    shard = build_shard_statefulset(sample, layout_of(sample), 0, 2)["spec"]["template"]["spec"][
        "containers"
    ][0]
    build = build_index_job(sample, layout_of(sample), "a")["spec"]["template"]["spec"]["containers"][0]
    router = build_router_deployment(sample)["spec"]["template"]["spec"]["containers"][0]
    for command, flag in (
        (shard["command"], "--search-threads"),
        (build["command"], "--workers"),
        (router["command"], "--workers"),  # router worker processes (router/workers.py)
    ):
        assert (command[command.index(flag) + 1] if flag in command else None) == threads


def test_build_resources_default_to_the_shards_and_can_be_set_apart() -> None:
    build = build_index_job(SAMPLE, LAYOUT, "a")["spec"]["template"]["spec"]["containers"][0]
    assert build["resources"] == pods.resources(SAMPLE.spec.resources.shard)
    apart = cluster(resources={"build": {"requests": {"cpu": "8", "memory": "16Gi"}}})
    build = build_index_job(apart, layout_of(apart), "a")["spec"]["template"]["spec"]["containers"][0]
    assert build["resources"] == {"requests": {"cpu": "8", "memory": "16Gi"}}


@pytest.mark.parametrize(
    ("quantity", "cores"), [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), ("1k", 1000.0), ("0", None)]
)
def test_cpu_quantities_in_cores(quantity: str, cores: float | None) -> None:
    assert pods.cpu_cores(quantity) == cores


def test_statefulset_selects_its_own_pods_and_only_one_shard_of_one_layout() -> None:
    statefulset = build_shard_statefulset(SAMPLE, LAYOUT, 1, 2)
    selector = statefulset["spec"]["selector"]["matchLabels"]
    template_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    assert selector[labels.LAYOUT] == LAYOUT.id and selector[labels.SHARD] == "1"
    other = build_shard_statefulset(SAMPLE, LAYOUT, 0, 2)["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= other.items()
    service = build_shard_service(SAMPLE, LAYOUT, 1)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == selector
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]


def test_shard_probes_placement_and_command() -> None:
    statefulset = build_shard_statefulset(SAMPLE, LAYOUT, 1, 3)
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    spread = pod["topologySpreadConstraints"][0]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (pods.ZONE_KEY, "ScheduleAnyway")
    command = container["command"]
    assert command[command.index("--layout-dir") + 1] == f"/store/recs/layouts/{LAYOUT.id}"
    assert command[command.index("--shard") + 1] == "1"
    assert "--ef-search" not in command  # efSearch travels in the topology: changing it restarts no pod
    assert statefulset["spec"]["replicas"] == 3


def test_build_job_builds_the_layout_it_was_asked_for_not_the_current_spec() -> None:
    newer = cluster(index={**SAMPLE.spec.index.model_dump(by_alias=True), "version": "v2"})
    job = build_index_job(newer, LAYOUT, "attempt-1")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--version") + 1] == "v1"
    assert command[command.index("--out") + 1] == pods.layout_dir("recs", LAYOUT.id)
    assert job["metadata"]["annotations"][labels.BUILD_ATTEMPT_ANNOTATION] == "attempt-1"
    assert json.loads(job["metadata"]["annotations"][labels.LAYOUT_SPEC_ANNOTATION])["version"] == "v1"
    assert job["spec"]["activeDeadlineSeconds"] == newer.spec.rollout.timeout_seconds
    assert "ttlSecondsAfterFinished" not in job["spec"]


@pytest.mark.parametrize(
    ("source", "path", "claim"),
    [
        ("pvc://embeddings/movielens/v1", "/source/movielens/v1", "embeddings"),
        ("/data/emb", "/store/data/emb", None),
        ("file:///data/emb/", "/store/data/emb", None),
    ],
)
def test_embeddings_source_resolves_to_a_container_path(source: str, path: str, claim: str | None) -> None:
    resolved = resolve_source(source)
    assert (resolved.path, resolved.claim) == (path, claim)


def test_build_job_mounts_the_source_claim_read_only_and_the_store_writable() -> None:
    """A separate source claim is its own read-only volume. The store's own claim as the source is the store
    volume mounted again, read-only, at /source: a second volume naming the same claim read-only is one
    volume to the kubelet, and it made /store read-only too (EROFS in the build on a real node)."""

    def volumes_and_mounts(source: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        sample = cluster(index={**SAMPLE.spec.index.model_dump(by_alias=True), "source": source})
        pod = build_index_job(sample, layout_of(sample), "a1")["spec"]["template"]["spec"]
        return pod["volumes"], pod["containers"][0]["volumeMounts"]

    volumes, mounts = volumes_and_mounts("pvc://embeddings/movielens/v1")
    claims = {v["name"]: v["persistentVolumeClaim"] for v in volumes if "persistentVolumeClaim" in v}
    assert claims == {
        pods.STORE_VOLUME: {"claimName": "index-store", "readOnly": False},
        pods.SOURCE_VOLUME: {"claimName": "embeddings", "readOnly": True},
    }
    by_path = {m["mountPath"]: m for m in mounts}
    assert by_path[pods.SOURCE_MOUNT] == {
        "name": pods.SOURCE_VOLUME,
        "mountPath": pods.SOURCE_MOUNT,
        "readOnly": True,
    }

    volumes, mounts = volumes_and_mounts("pvc://index-store/embeddings/v1")
    claims = {v["name"]: v["persistentVolumeClaim"] for v in volumes if "persistentVolumeClaim" in v}
    assert claims == {pods.STORE_VOLUME: {"claimName": "index-store", "readOnly": False}}
    by_path = {m["mountPath"]: m for m in mounts}
    assert by_path[pods.STORE_MOUNT]["readOnly"] is False
    assert by_path[pods.STORE_MOUNT]["subPath"] == "shardrec"
    # The whole claim (no subPath): pvc://<claim>/<path> names a path from the claim's root.
    assert by_path[pods.SOURCE_MOUNT] == {
        "name": pods.STORE_VOLUME,
        "mountPath": pods.SOURCE_MOUNT,
        "readOnly": True,
    }


def test_bad_pvc_source_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec\.index\.source"):
        resolve_source("pvc://Bad_Claim/x")


def test_router_config_is_what_the_router_loads() -> None:
    sample = cluster(router={"timeoutMs": 750, "consistency": "available"}, auth={"rateLimitPerSecond": 9})
    text = build_router_config(sample)["data"][ROUTER_CONFIG_KEY]
    loaded = RouterConfig.model_validate_json(text)
    assert loaded.router == sample.spec.router and loaded.auth == sample.spec.auth


def test_router_config_change_rolls_the_router_and_autoscaling_hands_replicas_to_the_hpa() -> None:
    fixed = build_router_deployment(SAMPLE)
    assert fixed["spec"]["replicas"] == 2
    changed = build_router_deployment(cluster(router={"timeoutMs": 500}))
    annotation = fixed["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    assert changed["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] != annotation
    scaled = build_router_deployment(cluster(router={"autoscaling": {"minReplicas": 2, "maxReplicas": 4}}))
    assert "replicas" not in scaled["spec"]


def test_router_role_reads_only_its_topology_configmap_and_reports_on_pods() -> None:
    topology, pods = build_router_role(SAMPLE)["rules"]
    assert topology == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [names.topology("recs")],
        "verbs": ["get", "list", "watch"],
    }
    # What a router serves goes into its own pod's annotation: get + patch, nothing else.
    assert pods == {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}


def test_router_pods_know_their_own_name_to_report_on() -> None:
    (container,) = build_router_deployment(SAMPLE)["spec"]["template"]["spec"]["containers"]
    env = {entry["name"]: entry["valueFrom"]["fieldRef"]["fieldPath"] for entry in container["env"]}
    assert env == {
        "SHARDREC_ROUTER_POD_NAME": "metadata.name",
        "SHARDREC_ROUTER_POD_NAMESPACE": "metadata.namespace",
        # its zone, to prefer shard replicas there (empty where Kubernetes sets no such label)
        "SHARDREC_ROUTER_ZONE": "metadata.labels['topology.kubernetes.io/zone']",
    }


def test_network_policy_admits_only_router_pods_unless_monitoring_is_on() -> None:
    policy = build_shard_network_policy(SAMPLE)
    assert policy["spec"]["podSelector"]["matchLabels"] == labels.component_selector("recs", "shard")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": labels.component_selector("recs", "router")}}]
    monitored = build_shard_network_policy(cluster(monitoring={"serviceMonitor": True}))
    assert len(monitored["spec"]["ingress"]) == 2


def test_cluster_objects_are_owned_and_labelled_and_optional_ones_follow_the_spec() -> None:
    kinds = [m["kind"] for m in build_cluster_objects(SAMPLE)]
    assert "HorizontalPodAutoscaler" not in kinds and "ServiceMonitor" not in kinds
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
    full = cluster(
        router={"autoscaling": {"minReplicas": 2, "maxReplicas": 4}}, monitoring={"serviceMonitor": True}
    )
    for manifest in build_cluster_objects(full):
        meta = manifest["metadata"]
        assert meta["ownerReferences"][0]["uid"] == full.metadata.uid
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"][labels.MANAGED_BY] == "shardrec-operator"
    assert {"HorizontalPodAutoscaler", "ServiceMonitor"} <= {m["kind"] for m in build_cluster_objects(full)}


def test_topology_lists_every_replica_by_stable_dns_name() -> None:
    topology = build_layout_topology(SAMPLE, LAYOUT, {0: 2, 1: 1})
    LayoutTopology.model_validate(topology.model_dump())
    assert [len(entry.replicas) for entry in topology.endpoints] == [2, 1]
    replica = topology.endpoints[1].replicas[0]
    service = names.shard_set("recs", LAYOUT.id, 1)
    assert replica.name == f"{service}-0"
    assert replica.url == f"http://{service}-0.{service}.ml.svc:8080"
    assert topology.artifact_dir == pods.layout_dir("recs", LAYOUT.id)
    assert (topology.version, topology.metric, topology.dimension) == ("v1", "cosine", 32)


def test_a_valid_sample_has_no_kubernetes_errors() -> None:
    assert kubernetes_spec_errors(SAMPLE) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"index": {"version": "v1", "source": "/x", "dimension": 8}},
            "spec.index.store.persistentVolumeClaim",
        ),
        ({"router": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}, "resources": {}}, "requests.cpu"),
        ({"shards": 1000}, "metadata.name"),
    ],
)
def test_kubernetes_only_requirements_name_the_field(change: dict[str, Any], field: str) -> None:
    sample = cluster(**change)
    if field == "metadata.name":
        sample = sample.model_copy(update={"metadata": replace_name(sample, "r" * 40)})
    errors = kubernetes_spec_errors(sample)
    assert errors and any(field in error for error in errors), errors


def test_quality_gate_is_accepted_on_kubernetes_now_that_build_pods_report_layout_metrics() -> None:
    sample = SAMPLE.model_copy(
        update={
            "spec": SAMPLE.spec.model_copy(
                update={
                    "index": SAMPLE.spec.index.model_copy(
                        update={"quality_gate": api.QualityGateSpec(min_ndcg_at10=0.03)}
                    )
                }
            )
        }
    )
    assert kubernetes_spec_errors(sample) == []


def test_cluster_names_that_are_not_dns_labels_are_rejected() -> None:
    sample = SAMPLE.model_copy(update={"metadata": replace_name(SAMPLE, "my.recs")})
    assert any("metadata.name" in error for error in kubernetes_spec_errors(sample))


def test_longest_accepted_name_fits_every_kubernetes_limit() -> None:
    name = "r" * 38  # what validation accepts for 2 shards: <cluster>-<10 hex>-<shard> <= 52
    sample = SAMPLE.model_copy(update={"metadata": replace_name(SAMPLE, name)})
    assert kubernetes_spec_errors(sample) == []
    assert len(names.shard_set(name, LAYOUT.id, 1)) <= 52
    for child in (
        names.router_config(name),
        names.build_job(name, LAYOUT.id),
        names.shard_pod(name, LAYOUT.id, 1, 15),
    ):
        assert len(child) <= 63


def replace_name(sample: Any, name: str) -> Any:
    return sample.metadata.model_copy(update={"name": name})


def test_layout_labels_track_the_layout_not_the_spec() -> None:
    older = replace(LAYOUT, version="v0")
    statefulset = build_shard_statefulset(SAMPLE, older, 0, 2)
    assert statefulset["metadata"]["labels"][labels.INDEX_VERSION] == "v0"
    assert statefulset["metadata"]["name"] == names.shard_set("recs", older.id, 0)


def test_ef_search_lives_in_the_topology_not_in_the_pod_template() -> None:
    """Changing efSearch rewrites the topology the routers watch and changes no pod template."""
    tuned = cluster(index={**SAMPLE.spec.index.model_dump(by_alias=True), "hnsw": {"efSearch": 300}})
    assert build_layout_topology(SAMPLE, LAYOUT, {0: 1, 1: 1}).ef_search == 64
    assert build_layout_topology(tuned, LAYOUT, {0: 1, 1: 1}).ef_search == 300
    assert layout_of(tuned) == LAYOUT
    before = build_shard_statefulset(SAMPLE, LAYOUT, 0, 2)["spec"]["template"]
    assert build_shard_statefulset(tuned, LAYOUT, 0, 2)["spec"]["template"] == before
