"""Smoke test of the local control plane (cluster.py): real apiserver, controllers, scheduler, kwok nodes.

Run from the repository root (skips with a reason when `make cluster-build` has not been run; fails
instead when SHARDREC_REQUIRE_CONTROLPLANE=1, as CI sets it):

    .venv/bin/pytest e2e/controlplane -v
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

kubernetes = pytest.importorskip(
    "kubernetes", reason="needs the `kubernetes` client (pip install kubernetes)"
)
from kubernetes import client as k8s  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]

ZONES = ("zone-a", "zone-b")
ZONE_LABEL = "topology.kubernetes.io/zone"
WAIT = 60.0

_T = TypeVar("_T")


def _load_cluster_module() -> ModuleType:
    """Import cluster.py by path: works under any pytest import mode and with no package setup."""
    name = "shardrec_e2e_controlplane_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("cluster.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is being built
    spec.loader.exec_module(module)
    return module


cluster = _load_cluster_module()


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll check() until it returns something truthy; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control_plane() -> Iterator[Any]:
    try:
        binaries = cluster.find_binaries()
    except cluster.BinariesNotFoundError as exc:
        if os.environ.get("SHARDREC_REQUIRE_CONTROLPLANE"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    cp = cluster.LocalControlPlane(binaries=binaries, zones=ZONES)
    with cp:
        print(f"\ncontrol plane started in {cp.startup_seconds:.1f}s at {cp.api_url}")
        pids = [c.pid for c in cp.components]
        yield cp
        t0 = time.monotonic()
    print(f"control plane stopped in {time.monotonic() - t0:.1f}s")
    assert not [p for p in pids if cluster.is_alive(p)], "teardown left processes running"


@pytest.fixture(scope="module")
def api(control_plane: Any) -> k8s.ApiClient:
    client: k8s.ApiClient = kubernetes.config.new_client_from_config(
        config_file=str(control_plane.kubeconfig)
    )
    return client


@pytest.fixture
def namespace(api: k8s.ApiClient) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    # The ServiceAccount admission plugin rejects pods until the KCM has created `default`.
    wait_until(f"default ServiceAccount in {name}", lambda: core.list_namespaced_service_account(name).items)
    yield name
    core.delete_namespace(name)


# --- helpers -------------------------------------------------------------------------------------------


def _present(value: _T | None, what: str) -> _T:
    """`value`, which the API must have filled in (the client types every field as optional)."""
    assert value is not None, f"the API returned no {what}"
    return value


def _label(meta: k8s.V1ObjectMeta | None, key: str) -> str:
    return _present(_present(meta, "metadata").labels, "labels")[key]


def _pod_template(labels: dict[str, str], **spec: Any) -> k8s.V1PodTemplateSpec:
    """A pause container with `labels`; `spec` adds V1PodSpec fields."""
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="app", image="registry.k8s.io/pause:3.10")], **spec
        ),
    )


def _running_and_ready(pod: k8s.V1Pod) -> bool:
    status = _present(pod.status, "pod status")
    conditions = status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    return status.phase == "Running" and ready


def _node_ready(node: k8s.V1Node) -> bool:
    conditions = _present(_present(node.status, "node status").conditions, "node conditions")
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


# --- tests ---------------------------------------------------------------------------------------------


def test_server_version_and_kwok_nodes(control_plane: Any, api: k8s.ApiClient) -> None:
    version = k8s.VersionApi(api).get_code()
    assert version.git_version == cluster.read_versions()["K8S_VERSION"]
    nodes = k8s.CoreV1Api(api).list_node(label_selector="type=kwok").items
    assert {_label(n.metadata, ZONE_LABEL) for n in nodes} == set(ZONES)
    assert all(_node_ready(n) for n in nodes)
    assert control_plane.startup_seconds < 90


def test_deployment_pods_ready_in_two_zones_then_garbage_collected(
    api: k8s.ApiClient, namespace: str
) -> None:
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    labels = {"app": "web"}
    # Zone spread forces one pod per zone, which proves scheduling honours the kwok nodes' zone labels.
    template = _pod_template(
        labels,
        topology_spread_constraints=[
            k8s.V1TopologySpreadConstraint(
                max_skew=1,
                topology_key=ZONE_LABEL,
                when_unsatisfiable="DoNotSchedule",
                label_selector=k8s.V1LabelSelector(match_labels=labels),
            )
        ],
    )
    deployment = k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="web"),
        spec=k8s.V1DeploymentSpec(
            replicas=2, selector=k8s.V1LabelSelector(match_labels=labels), template=template
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)

    def ready_pods() -> list[k8s.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return pods if len(pods) == 2 and all(_running_and_ready(p) for p in pods) else []

    pods = wait_until("2 Running/Ready pods", ready_pods)
    nodes = [_present(_present(p.spec, "pod spec").node_name, "node name") for p in pods]
    zones = {_label(core.read_node(node).metadata, ZONE_LABEL) for node in nodes}
    assert zones == set(ZONES)

    def available() -> bool:
        status = _present(apps.read_namespaced_deployment("web", namespace).status, "deployment status")
        return status.available_replicas == 2

    wait_until("deployment available", available)

    apps.delete_namespaced_deployment("web", namespace)  # background propagation: GC deletes RS, then pods
    wait_until("ReplicaSets garbage-collected", lambda: not apps.list_namespaced_replica_set(namespace).items)
    wait_until("pods garbage-collected", lambda: not core.list_namespaced_pod(namespace).items)


def test_statefulset_ready_and_job_completes(api: k8s.ApiClient, namespace: str) -> None:
    apps, batch = k8s.AppsV1Api(api), k8s.BatchV1Api(api)
    labels = {"app": "db"}
    sts = k8s.V1StatefulSet(
        metadata=k8s.V1ObjectMeta(name="db"),
        spec=k8s.V1StatefulSetSpec(
            replicas=2,
            service_name="db",
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=_pod_template(labels),
        ),
    )
    apps.create_namespaced_stateful_set(namespace, sts)
    job_template = _pod_template({"app": "once"}, restart_policy="Never")
    job = k8s.V1Job(metadata=k8s.V1ObjectMeta(name="once"), spec=k8s.V1JobSpec(template=job_template))
    batch.create_namespaced_job(namespace, job)

    def sts_ready() -> bool:
        status = _present(apps.read_namespaced_stateful_set("db", namespace).status, "StatefulSet status")
        return status.ready_replicas == 2

    def job_succeeded() -> bool:
        return _present(batch.read_namespaced_job("once", namespace).status, "Job status").succeeded == 1

    wait_until("StatefulSet 2/2 ready", sts_ready)
    # kwok's pod-complete stage moves Running pods owned by a Job to Succeeded.
    wait_until("Job succeeded", job_succeeded)


def test_crd_cel_validation_rejects_bad_object(api: k8s.ApiClient, namespace: str) -> None:
    ext, custom = k8s.ApiextensionsV1Api(api), k8s.CustomObjectsApi(api)
    suffix = uuid.uuid4().hex[:6]
    group, plural, kind = "smoke.shardrec.io", f"widgets{suffix}", f"Widget{suffix.upper()}"
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"}},
                "x-kubernetes-validations": [
                    {
                        "rule": "self.minReplicas <= self.maxReplicas",
                        "message": "minReplicas must be <= maxReplicas",
                    }
                ],
            }
        },
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": f"widget{suffix}", "kind": kind},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
            ],
        },
    }
    # The client sends a dict body as it is; its annotation names only the model class.
    ext.create_custom_resource_definition(crd)  # type: ignore[arg-type]
    try:

        def established() -> bool:
            read = ext.read_custom_resource_definition(f"{plural}.{group}")
            conds = _present(read.status, "CRD status").conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_until("CRD Established", established)

        def obj(name: str, lo: int, hi: int) -> dict[str, Any]:
            return {
                "apiVersion": f"{group}/v1",
                "kind": kind,
                "metadata": {"name": name},
                "spec": {"minReplicas": lo, "maxReplicas": hi},
            }

        # Discovery of a fresh CRD can lag Established by a moment; retry the good create briefly.
        wait_until(
            "good CR accepted", lambda: _create_ok(custom, group, namespace, plural, obj("good", 1, 3)), 20
        )
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(group, "v1", namespace, plural, obj("bad", 5, 1))
        assert err.value.status == 422
        assert (
            "minReplicas must be <= maxReplicas"
            in json.loads(_present(err.value.body, "error body"))["message"]
        )
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")


def _create_ok(custom: k8s.CustomObjectsApi, group: str, ns: str, plural: str, body: dict[str, Any]) -> bool:
    try:
        custom.create_namespaced_custom_object(group, "v1", ns, plural, body)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_pod_security_admission_enforces_restricted(api: k8s.ApiClient, namespace: str) -> None:
    core = k8s.CoreV1Api(api)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="privileged"),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="app",
                    image="registry.k8s.io/pause:3.10",
                    security_context=k8s.V1SecurityContext(privileged=True),
                )
            ]
        ),
    )
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(namespace, pod)
    assert err.value.status == 403
    assert "violates PodSecurity" in json.loads(_present(err.value.body, "error body"))["message"]


def test_kubectl_against_the_cluster(control_plane: Any) -> None:
    can_i = control_plane.kubectl("auth", "can-i", "create", "deployments", "-n", "default", check=False)
    assert can_i.stdout.strip() == "yes", can_i.stderr
    explain = control_plane.kubectl("explain", "deployment.spec.replicas")
    assert "replicas" in explain.stdout
