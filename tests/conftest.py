"""Fixtures shared by tests/: a real S3 object store (SeaweedFS) and a fault-injecting proxy.

`seaweed`: one `weed server -s3` per session on 127.0.0.1 (e2e/objectstore/seaweed.py), or a skip
naming `bash e2e/objectstore/build.sh` when the binary is not built; with
SHARDREC_REQUIRE_OBJECTSTORE=1 (CI) a missing binary fails instead. e2e/ is not a package, so the
harness is imported by path.
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

OBJECTSTORE = Path(__file__).resolve().parent.parent / "e2e" / "objectstore"


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
def seaweed_module() -> ModuleType:
    return _load("shardrec_e2e_seaweed", OBJECTSTORE / "seaweed.py")


@pytest.fixture(scope="session")
def faultproxy_module() -> ModuleType:
    return _load("shardrec_e2e_faultproxy", OBJECTSTORE / "faultproxy.py")


@pytest.fixture(scope="session")
def seaweed(seaweed_module: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running SeaweedFS S3 gateway (its `endpoint`, `access_key`, `secret_key`, `create_bucket`)."""
    try:
        binary = seaweed_module.find_weed()
    except seaweed_module.WeedNotFoundError as error:
        if os.environ.get("SHARDREC_REQUIRE_OBJECTSTORE") == "1":
            pytest.fail(f"SHARDREC_REQUIRE_OBJECTSTORE=1 but {error}")
        pytest.skip(str(error))
    with seaweed_module.SeaweedS3.start(binary, tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
