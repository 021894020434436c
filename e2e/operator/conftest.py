"""Fixtures of the operator suite: one control plane per session, one namespace + operator per test.

Every test namespace enforces the `restricted` Pod Security Standard, so a shard, router or Job
pod that violated it would be rejected by the real admission plugin. The index store is a
statically bound PersistentVolume (no provisioner exists without a kubelet). kwok runs no
containers: pods become Ready because kwok says so, and build Jobs complete because kwok's
pod-complete stage finishes their pods; the data-plane proof is the local-runtime suite.

kwok here manages only nodes annotated `kwok.x-k8s.io/node=fake` (the control plane starts it
with --manage-all-nodes; `failover_control_plane` swaps that one flag), so the failover scenario
can take a node away from kwok (drop the annotation, restart kwok: a running kwok keeps
heartbeating every node it ever managed) and watch it go NotReady exactly as a lost node does.
"""

from __future__ import annotations

import importlib.util
import os
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
ZONES = ("zone-a", "zone-b")
KWOK_ALL_NODES = "--manage-all-nodes=true"
KWOK_ANNOTATED_NODES = "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake"


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


def failover_control_plane(module: ModuleType) -> type:
    """LocalControlPlane whose kwok manages annotated nodes only (see the module docstring)."""

    class FailoverControlPlane(module.LocalControlPlane):  # type: ignore[name-defined,misc]
        def _kwok(self) -> Any:
            component = super()._kwok()
            component.argv = [KWOK_ANNOTATED_NODES if a == KWOK_ALL_NODES else a for a in component.argv]
            return component

        @property
        def kwok_selects_nodes(self) -> bool:
            return any(KWOK_ANNOTATED_NODES in c.argv for c in self.components if c.name == "kwok")

        def restart_kwok(self) -> None:
            """Stop kwok (by the PID we started) and start it again with the same arguments."""
            (kwok,) = [c for c in self.components if c.name == "kwok"]
            module.terminate([kwok.to_state()], {kwok.pid: kwok.proc} if kwok.proc else None)
            kwok.spawn()

    return FailoverControlPlane


@pytest.fixture(scope="session")
def control_plane(control_plane_module: ModuleType, control_plane_binaries: Any) -> Iterator[Any]:
    plane_class = failover_control_plane(control_plane_module)
    with plane_class(binaries=control_plane_binaries, zones=ZONES, nodes_per_zone=2) as plane:
        installed = plane.kubectl("apply", "--server-side", "-f", str(CRD), check=False)
        if installed.returncode != 0:
            pytest.fail(f"the API server rejects the CRD {CRD}:\n{installed.stderr}")
        plane.kubectl(
            "wait", "--for=condition=Established", "crd/recommenderclusters.shardrec.io", "--timeout=60s"
        )
        yield plane


@pytest.fixture(scope="session")
def kube(control_plane: Any, harness: ModuleType) -> Any:
    return harness.Kube(control_plane)


def _namespace_objects(namespace: str) -> list[dict[str, Any]]:
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
                "hostPath": {"path": f"/tmp/shardrec-e2e/{namespace}"},
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
    kube.apply(*_namespace_objects(name))
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
