"""Shared pytest setup for the e2e suites (`pytest e2e/operator`, `pytest e2e/controlplane`).

- `control_plane_module`: e2e/controlplane/cluster.py, imported by path (e2e is not a package).
- `control_plane_binaries`: the built binaries, or a skip naming `make cluster-build`; with
  SHARDREC_REQUIRE_CONTROLPLANE=1 (CI) a missing build fails instead of skipping.
- Each test item keeps its phase reports (`item.rep_setup`, `item.rep_call`), so fixtures can
  dump diagnostics only when the test failed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

E2E = Path(__file__).resolve().parent
MODULE_NAME = "shardrec_e2e_controlplane_cluster"  # the name e2e/controlplane's own tests use


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
