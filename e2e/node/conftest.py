"""Fixtures of the real-node suite: one control plane (kwok nodes as usual) plus one real node per session.

`real_node` yields (control plane, node). It skips with the reason when the binaries are missing or the
process is not root, unless SHARDREC_REQUIRE_NODE=1 (CI), which turns both into failures.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
NODE_MODULE = "shardrec_e2e_node"


def _unavailable(reason: str) -> None:
    if os.environ.get("SHARDREC_REQUIRE_NODE") == "1":
        pytest.fail(f"SHARDREC_REQUIRE_NODE=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_module(control_plane_module: ModuleType) -> ModuleType:
    """e2e/node/node.py by path (e2e is not a package); it shares control_plane_module's module object."""
    if NODE_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(NODE_MODULE, HERE / "node.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[NODE_MODULE] = module
        spec.loader.exec_module(module)
    return sys.modules[NODE_MODULE]


@pytest.fixture(scope="session")
def real_node(control_plane_module: ModuleType, node_module: ModuleType) -> Iterator[tuple[Any, Any]]:
    if os.geteuid() != 0:
        _unavailable("the real node needs root (network namespaces, iptables, mounts, cgroups)")
    try:
        cp_binaries = control_plane_module.find_binaries()
        node_binaries = node_module.find_node_binaries()
    except control_plane_module.BinariesNotFoundError as error:
        _unavailable(f"{error}; for the real node: `make node-build` (builds both)")
    except node_module.NodeBinariesNotFoundError as error:
        _unavailable(str(error))
    with control_plane_module.LocalControlPlane(binaries=cp_binaries) as cp:
        node = node_module.LocalNode(cp.state_dir, binaries=node_binaries)
        try:
            node.start()
            _print_start(cp, node)
        except node_module.NodeBusyError as error:  # another session's node holds this machine's ranges
            _unavailable(str(error))
        try:
            yield cp, node
        finally:
            node.stop()


def _print_start(cp: Any, node: Any) -> None:
    print(
        f"\n[node] control plane up in {cp.startup_seconds:.1f}s, "
        f"real node Ready in {node.startup_seconds:.1f}s {node.step_seconds}"
    )
