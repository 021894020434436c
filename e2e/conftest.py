"""Shared pytest setup for the e2e suites (`pytest e2e/operator`, `pytest e2e/controlplane`).

- `control_plane_module`: e2e/controlplane/cluster.py, imported by path (e2e is not a package).
- `control_plane_binaries`: the built binaries, or a skip naming `make cluster-build`; with
  SHARDREC_REQUIRE_CONTROLPLANE=1 (CI) a missing build fails instead of skipping.
- `external_cluster`: the cluster of SHARDREC_E2E_KUBECONFIG, pinned to its context after the
  SHARDREC_E2E_CONTEXT guard (e2e/operator/external_cluster.py); None when the variable is unset.
  A failed guard ends the whole session: nothing may run against an unconfirmed cluster.
- `node_module` / `real_node`: e2e/node/node.py and a session's (control plane, real node) pair: a
  LocalControlPlane with its kwok nodes plus one LocalNode (containerd + kubelet + kube-proxy + CoreDNS).
  Skips with the reason without root or binaries, or when another session's node holds this machine;
  with SHARDREC_REQUIRE_NODE=1 (CI) those fail instead.
- `traffic_module`: e2e/tools/traffic.py, the bounded load generator and request counting that the
  real-node scenarios and e2e/kind share; `product_module`: e2e/node/product.py (the product's deploy steps).
- `seaweed_module`: e2e/objectstore/seaweed.py (SeaweedFS, the S3 store the object-store tests start).
- Each test item keeps its phase reports (`item.rep_setup`, `item.rep_call`), so fixtures can
  dump diagnostics only when the test failed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

E2E = Path(__file__).resolve().parent
MODULE_NAME = "shardrec_e2e_controlplane_cluster"  # the name e2e/controlplane's own tests use
EXTERNAL_MODULE_NAME = "shardrec_e2e_external_cluster"
NODE_MODULE_NAME = "shardrec_e2e_node"
TRAFFIC_MODULE_NAME = "shardrec_e2e_traffic"
PRODUCT_MODULE_NAME = "shardrec_e2e_node_product"
SEAWEED_MODULE_NAME = "shardrec_e2e_seaweed"  # the name tests/conftest.py uses


def load_module(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while classes are built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def control_plane_module() -> ModuleType:
    return load_module(MODULE_NAME, E2E / "controlplane" / "cluster.py")


@pytest.fixture(scope="session")
def control_plane_binaries(control_plane_module: ModuleType) -> Any:
    try:
        return control_plane_module.find_binaries()
    except control_plane_module.BinariesNotFoundError as error:
        if os.environ.get("SHARDREC_REQUIRE_CONTROLPLANE") == "1":
            pytest.fail(f"SHARDREC_REQUIRE_CONTROLPLANE=1 but {error}")
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def external_cluster_module() -> ModuleType:
    return load_module(EXTERNAL_MODULE_NAME, E2E / "operator" / "external_cluster.py")


@pytest.fixture(scope="session")
def external_cluster(
    external_cluster_module: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    module = external_cluster_module
    try:
        source = module.guarded_kubeconfig(os.environ)
        cluster = None
        if source is not None:
            kubectl = module.find_kubectl(os.environ)
            workdir = tmp_path_factory.mktemp("external-cluster")
            cluster = module.ExternalCluster.open(*source, kubectl, workdir)
    except module.ContextGuardError as error:
        pytest.exit(f"refusing to run the e2e suite: {error}", returncode=2)
    if cluster is None:
        yield None
        return
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def traffic_module() -> ModuleType:
    return load_module(TRAFFIC_MODULE_NAME, E2E / "tools" / "traffic.py")


@pytest.fixture(scope="session")
def product_module() -> ModuleType:
    return load_module(PRODUCT_MODULE_NAME, E2E / "node" / "product.py")


@pytest.fixture(scope="session")
def seaweed_module() -> ModuleType:
    return load_module(SEAWEED_MODULE_NAME, E2E / "objectstore" / "seaweed.py")


def _node_unavailable(reason: str) -> None:
    if os.environ.get("SHARDREC_REQUIRE_NODE") == "1":
        pytest.fail(f"SHARDREC_REQUIRE_NODE=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_module(control_plane_module: ModuleType) -> ModuleType:
    """e2e/node/node.py; it shares control_plane_module's module object (same module name)."""
    return load_module(NODE_MODULE_NAME, E2E / "node" / "node.py")


@pytest.fixture(scope="session")
def real_node(control_plane_module: ModuleType, node_module: ModuleType) -> Iterator[tuple[Any, Any]]:
    if os.geteuid() != 0:
        _node_unavailable("the real node needs root (network namespaces, iptables, mounts, cgroups)")
    try:
        cp_binaries = control_plane_module.find_binaries()
        node_binaries = node_module.find_node_binaries()
    except control_plane_module.BinariesNotFoundError as error:
        _node_unavailable(f"{error}; for the real node: `make node-build` (builds both)")
    except node_module.NodeBinariesNotFoundError as error:
        _node_unavailable(str(error))
    with control_plane_module.LocalControlPlane(binaries=cp_binaries) as cp:
        node = node_module.LocalNode(cp.state_dir, binaries=node_binaries)
        try:
            node.start()
            _print_node_start(cp, node)
        except node_module.NodeBusyError as error:  # another session's node holds this machine's ranges
            _node_unavailable(str(error))
        try:
            yield cp, node
        finally:
            node.stop()


def _print_node_start(cp: Any, node: Any) -> None:
    print(
        f"\n[node] control plane up in {cp.startup_seconds:.1f}s, "
        f"real node Ready in {node.startup_seconds:.1f}s {node.step_seconds}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
