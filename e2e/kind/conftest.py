"""Fixtures of the kind checks: the guarded external cluster (e2e/conftest.py) and the suite's harness.

`real_cluster` skips without SHARDREC_E2E_KUBECONFIG; with it, the context guard has passed (a
failed guard ends the session before any test runs).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

OPERATOR_SUITE = Path(__file__).resolve().parents[1] / "operator"


@pytest.fixture(scope="session")
def harness() -> ModuleType:
    name = "shardrec_e2e_operator_harness"  # the name e2e/operator/conftest.py loads it under
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, OPERATOR_SUITE / "harness.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def real_cluster(external_cluster: Any) -> Any:
    if external_cluster is None:
        pytest.skip(
            "needs a real cluster: set SHARDREC_E2E_KUBECONFIG and SHARDREC_E2E_CONTEXT (make e2e-kind)"
        )
    if not os.environ.get("SHARDREC_E2E_IMAGE"):
        pytest.skip("needs SHARDREC_E2E_IMAGE: the data-plane image, present on the nodes")
    return external_cluster
