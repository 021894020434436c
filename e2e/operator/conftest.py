"""Fixtures of the operator suite: one control plane per session, one namespace + operator per test.

Every test namespace enforces the `restricted` Pod Security Standard, so a shard, router or Job
pod that violated it would be rejected by the real admission plugin. The index store is a
statically bound PersistentVolume (no provisioner exists without a kubelet). kwok runs no
containers: pods become Ready because kwok says so, and build Jobs complete because kwok's
pod-complete stage finishes their pods; the data-plane proof is the local-runtime suite.

kwok manages only nodes annotated `kwok.x-k8s.io/node=fake` (the control plane starts it that
way, so it never fakes a real node's pods; `failover_control_plane` adds the restart), so the
failover scenario can take a node away from kwok (drop the annotation, restart kwok: a running kwok keeps
heartbeating every node it ever managed) and watch it go NotReady exactly as a lost node does.

With SHARDREC_E2E_KUBECONFIG the session uses that cluster instead (guarded by
SHARDREC_E2E_CONTEXT, see external_cluster.py and e2e/conftest.py): pods run for real there, so
each test's store is a folder of a directory all nodes share, seeded with small embeddings, and
the tests that lean on kwok are skipped with the reason (EXTERNAL_SKIPS).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# SHARDREC_E2E_CRD points the suite at another CRD file (e.g. a candidate fix); default: crds/.
CRD = Path(os.environ.get("SHARDREC_E2E_CRD") or ROOT / "crds" / "recommenderclusters.shardrec.io.yaml")
CRD_NAME = "recommenderclusters.shardrec.io"
ZONES = ("zone-a", "zone-b")
KWOK_ANNOTATION, KWOK_ANNOTATION_VALUE = "kwok.x-k8s.io/node", "fake"
KWOK_ANNOTATED_NODES = f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}"
EXTERNAL = bool(os.environ.get("SHARDREC_E2E_KUBECONFIG"))
LOCAL_STORE = "/tmp/shardrec-e2e"

# Tests that cannot hold on a cluster without kwok, and why (test name -> reason).
EXTERNAL_SKIPS = {
    "test_valid_cluster_creates_its_children_and_reaches_ready": (
        "asserts kwok's node names (pods' nodeName starts with 'kwok-'); external nodes are named otherwise"
    ),
    "test_deleted_pod_makes_the_cluster_degraded_until_it_is_back": (
        "cordons the nodes labelled type=kwok; an external cluster has none, so the replacement pod "
        "would schedule at once and Degraded would not be observed"
    ),
    "test_pods_on_a_lost_node_are_force_deleted_and_rescheduled": (
        "loses a node by taking it away from kwok and restarting kwok; an external cluster has no kwok"
    ),
    "test_rollback_an_hour_later_reuses_a_retained_layout_and_retention_keeps_exactly_what_it_should": (
        "its pods would fetch from an object store at seaweedfs.storage, which an external cluster lacks"
    ),
    "test_with_every_node_not_ready_nothing_is_force_deleted_but_an_out_of_service_node_is": (
        "makes every node NotReady by taking them away from kwok; an external cluster has no kwok"
    ),
}
# Tests that need pods to become Ready for real on an external cluster, beyond those using `scenario`.
READY_WITHOUT_SCENARIO = {"test_handlers_module_runs_under_kopf_and_reconciles"}


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def harness() -> ModuleType:
    return _load("shardrec_e2e_operator_harness", HERE / "harness.py")


def _external() -> ModuleType:
    return _load("shardrec_e2e_external_cluster", HERE / "external_cluster.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an external cluster: skip kwok-only tests, and real-pod tests without a data plane."""
    if not EXTERNAL:
        return
    try:
        data_plane = _external().DataPlane.from_env(os.environ)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    for item in items:
        if item.path.parent != HERE:  # this hook sees the whole session's items
            continue
        reason = EXTERNAL_SKIPS.get(item.name)
        fixtures = getattr(item, "fixturenames", ())
        needs_pods = "scenario" in fixtures or item.name in READY_WITHOUT_SCENARIO
        if reason is None and needs_pods and data_plane is None:
            reason = _external().MISSING_DATA_PLANE
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"external cluster: {reason}"))


def failover_control_plane(module: ModuleType) -> type:
    """LocalControlPlane whose kwok manages annotated nodes only (see the module docstring)."""

    class FailoverControlPlane(module.LocalControlPlane):  # type: ignore[name-defined,misc]
        @property
        def kwok_selects_nodes(self) -> bool:
            return any(KWOK_ANNOTATED_NODES in c.argv for c in self.components if c.name == "kwok")

        def restart_kwok(self) -> None:
            """Stop kwok (by the PID we started) and start it again with the same arguments.

            A new kwok does not renew a lease the old one held: it waits for it to expire, which
            takes as long as the node monitor grace period (40 s both), so the nodes it still
            manages went NotReady too in about one run of three. Their leases are deleted in
            between, and the new kwok creates fresh ones at once.
            """
            (kwok,) = [c for c in self.components if c.name == "kwok"]
            module.terminate([kwok.to_state()], {kwok.pid: kwok.proc} if kwok.proc else None)
            for node in self._kwok_managed_nodes():
                self.api.request(
                    "DELETE", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
                )
            kwok.spawn()

        def _kwok_managed_nodes(self) -> list[str]:
            code, body = self.api.request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
            if code != 200:
                raise AssertionError(f"listing kwok nodes: HTTP {code}: {body.get('message', body)}")
            return [
                node["metadata"]["name"]
                for node in body.get("items", [])
                if node["metadata"].get("annotations", {}).get(KWOK_ANNOTATION) == KWOK_ANNOTATION_VALUE
            ]

    return FailoverControlPlane


def _install_crd(plane: Any) -> None:
    installed = plane.kubectl("apply", "--server-side", "-f", str(CRD), check=False)
    if installed.returncode != 0:
        pytest.fail(f"the API server rejects the CRD {CRD}:\n{installed.stderr}")
    if not _established(plane, timeout_s=120.0):
        # Say why: the CRD's conditions and the components' log tails.
        conditions = plane.kubectl("get", "crd", CRD_NAME, "-o", "jsonpath={.status.conditions}", check=False)
        tails = plane.log_tails() if hasattr(plane, "log_tails") else ""
        pytest.fail(
            f"the CRD {CRD_NAME} did not become Established in 120 s (x TIMEOUT_SCALE)\n"
            f"conditions: {conditions.stdout.strip() or conditions.stderr.strip()}\n{tails}"
        )


def _established(plane: Any, timeout_s: float) -> bool:
    """Waits for the CRD's Established condition (the harness's `wait_for`, so `TIMEOUT_SCALE`
    applies here too). Not `kubectl wait --for=condition=Established`: it fails at once ("accessor
    error: <nil> is of the type <nil>") when it reads the CRD before the API server's controllers
    wrote any condition, which happened on a loaded machine (all 21 e2e/operator tests errored in a
    CI run after the real-node suite)."""
    harness = _load("shardrec_e2e_operator_harness", HERE / "harness.py")
    path = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'

    def established() -> bool:
        state = plane.kubectl("get", "crd", CRD_NAME, "-o", path, check=False)
        return bool(state.returncode == 0 and state.stdout.strip() == "True")

    try:
        harness.wait_for(f"the CRD {CRD_NAME} to be Established", established, timeout=timeout_s)
    except harness.StepError:
        return False
    return True


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest, control_plane_module: ModuleType, external_cluster: Any
) -> Iterator[Any]:
    if external_cluster is not None:
        # A CRD already there (e.g. from the Helm chart, whose copy `make crds-check` keeps equal)
        # is used as it is: applying over another field manager's CRD could stomp on it.
        present = external_cluster.kubectl("get", "crd", CRD_NAME, check=False)
        if present.returncode != 0 and "NotFound" not in present.stderr:
            pytest.fail(f"cannot read CRDs of the external cluster: {present.stderr.strip()}")
        if present.returncode == 0:
            if not _established(external_cluster, timeout_s=60.0):
                pytest.fail(f"the CRD {CRD_NAME} of the external cluster is not Established")
        else:
            _install_crd(external_cluster)
        yield external_cluster
        return
    control_plane_binaries = request.getfixturevalue("control_plane_binaries")
    plane_class = failover_control_plane(control_plane_module)
    with plane_class(binaries=control_plane_binaries, zones=ZONES, nodes_per_zone=2) as plane:
        _install_crd(plane)
        yield plane


@pytest.fixture(scope="session")
def kube(control_plane: Any, harness: ModuleType) -> Any:
    return harness.Kube(control_plane)


def _namespace_objects(namespace: str, store_path: str) -> list[dict[str, Any]]:
    enforce = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": enforce}},
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-store"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": store_path},
                "claimRef": {"namespace": namespace, "name": "index-store"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "index-store", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": f"{namespace}-store",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]


@pytest.fixture
def namespace(kube: Any, harness: ModuleType) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    data_plane = _external().DataPlane.from_env(os.environ) if EXTERNAL else None
    store_path = f"{LOCAL_STORE}/{name}"
    try:
        if data_plane is not None:
            # Nodes share this directory, so the build Job and every shard pod see one store (RWX).
            _external().seed_store(data_plane, name, harness.INDEX_SOURCE, harness.INDEX_DIMENSION)
            store_path = data_plane.node_path(name)
        kube.apply(*_namespace_objects(name, store_path))
        harness.wait_for(
            "the index store claim to bind",
            lambda: (
                (kube.get(f"/api/v1/namespaces/{name}/persistentvolumeclaims/index-store") or {})
                .get("status", {})
                .get("phase")
                == "Bound"
            ),
            timeout=60,
        )
        yield name
        kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
        kube.kubectl("delete", "pv", f"{name}-store", "--wait=false", "--ignore-not-found", check=False)
    finally:
        if data_plane is not None:  # best effort: pods' files (uid 10001) may resist; run.sh sweeps them
            shutil.rmtree(data_plane.store_host_dir / name, ignore_errors=True)


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest, kube: Any, namespace: str, harness: ModuleType, tmp_path: Path
) -> Iterator[Any]:
    operator = harness.OperatorProcess(kube.cp.kubeconfig, namespace, tmp_path / "operator.log")
    operator.start()
    current = harness.Scenario(kube=kube, namespace=namespace, operator=operator)
    try:
        yield current
    finally:
        failed = any(
            getattr(request.node, f"rep_{when}", None) is not None
            and getattr(request.node, f"rep_{when}").failed
            for when in ("setup", "call")
        )
        if failed:
            print(current.dump())
        operator.stop()
