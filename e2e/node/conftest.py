"""Fixtures of the product on the real node (test_product.py and test_scenarios.py share one deployment).

- `product_images`: both OCI archives of this tree, or a skip naming `make images` (a failure under
  SHARDREC_REQUIRE_IMAGES=1); asked for before the node starts, so a missing image costs no node.
- `product`: one deployment for the session (e2e/node/product.py): kwok nodes tainted away, images
  imported, `helm install`, the store, a RecommenderCluster Ready. Diagnostics are printed when a test
  that used it failed; everything is removed at the end of the session.
- Scenarios (marker `node_scenarios`) run only when asked: `make e2e-node` sets SHARDREC_NODE_SCENARIOS=1.
  CI (`make test`) runs the product test and the one cheap scenario (a dead replica under traffic).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SHARDREC_NODE_SCENARIOS") == "1":
        return
    skip = pytest.mark.skip(reason="a real-node scenario outside CI's subset: `make e2e-node` runs it")
    for item in items:
        if item.get_closest_marker("node_scenarios"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def product_images(product_module: ModuleType) -> dict[str, Path]:
    archives: dict[str, Path] = product_module.image_archives()
    missing = [str(path) for path in archives.values() if not path.is_file()]
    if missing:
        reason = f"image archives of this tree not built: {', '.join(missing)}; run `make images`"
        if os.environ.get("SHARDREC_REQUIRE_IMAGES") == "1":
            pytest.fail(f"SHARDREC_REQUIRE_IMAGES=1 but {reason}")
        pytest.skip(reason)
    return archives


@pytest.fixture(scope="session")
def product(
    product_module: ModuleType, product_images: dict[str, Path], real_node: tuple[Any, Any]
) -> Iterator[Any]:
    pm = product_module
    cp, node = real_node
    pm.kubectl(cp, "taint", "nodes", "-l", "type=kwok", f"{pm.KWOK_TAINT}=true:NoSchedule", "--overwrite")
    ns = f"product-{uuid.uuid4().hex[:6]}"
    store_dir = Path(tempfile.mkdtemp(prefix="shardrec-store-"))
    store_dir.chmod(0o755)
    helm = pm.find_helm()
    try:
        pm.kubectl(cp, "create", "namespace", ns)
        pm.wait_for(
            "default ServiceAccount",
            lambda: cp.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
            timeout=60,
        )
        try:
            deployed = pm.deploy(cp, node, product_images, ns, store_dir)
        except BaseException:
            print(pm.diagnostics(cp, ns))
            raise
        yield deployed
    finally:
        pm.cleanup(cp, helm, ns)
        cp.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False, timeout=150)
        cp.kubectl("taint", "nodes", "-l", "type=kwok", f"{pm.KWOK_TAINT}-", check=False)
        shutil.rmtree(store_dir, ignore_errors=True)


@pytest.fixture
def product_diagnostics(
    request: pytest.FixtureRequest, product: Any, product_module: ModuleType
) -> Iterator[Any]:
    """The product; prints the cluster's state, events and logs when the test failed."""
    yield product
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(product_module.diagnostics(product.cp, product.ns))
