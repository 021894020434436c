"""Fixtures of the product on the real node (test_product.py and test_scenarios.py share one deployment).

- `product_images`: both OCI archives of this tree, or a skip naming `make images` (a failure under
  SHARDREC_REQUIRE_IMAGES=1); asked for before the node starts, so a missing image costs no node.
- `product`: one deployment for the session (e2e/node/product.py): kwok nodes tainted away, images
  imported, `helm install`, the store, a RecommenderCluster Ready. Diagnostics are printed when a test
  that used it failed; everything is removed at the end of the session.
- `seaweed_on_node`: SeaweedFS (S3) for the session, started inside the node's network namespace and bound
  to the pod bridge's gateway address (10.211.0.1): pods reach it as they would an in-cluster store, the
  test process reaches it through the harness's host route, nothing off this machine can (no route, no
  0.0.0.0). A skip naming e2e/objectstore/build.sh without the binary (a failure under
  SHARDREC_REQUIRE_OBJECTSTORE=1, as CI sets).
- Scenarios (marker `node_scenarios`) run only when asked: `make e2e-node` sets SHARDREC_NODE_SCENARIOS=1.
  CI (`make test`) runs the product test, the one cheap scenario (a dead replica under traffic) and the
  object-store cluster (test_scenarios.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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


@pytest.fixture(scope="session")
def seaweed_on_node(
    seaweed_module: ModuleType,
    node_module: ModuleType,
    real_node: tuple[Any, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """A running SeaweedFS S3 gateway at http://10.211.0.1:<port> (stopped before the node goes).

    Why there: the bridge gateway is an address of the node's own netns (the harness made both), so a pod
    reaches it on its own bridge with no Service, image or host firewall hole; the host guard lets only
    replies in from the veth, which is all the test process needs. A pod running SeaweedFS would need an
    image built for it and would die with the node; the host's veth end would need a hole in that guard."""
    try:
        binary = seaweed_module.find_weed()
    except seaweed_module.WeedNotFoundError as error:
        if os.environ.get("SHARDREC_REQUIRE_OBJECTSTORE") == "1":
            pytest.fail(f"SHARDREC_REQUIRE_OBJECTSTORE=1 but {error}")
        pytest.skip(str(error))
    _, node = real_node
    gateway = node_module.POD_GATEWAY
    # The CNI makes the bridge (and its gateway address) with the first pod: CoreDNS, Ready before
    # start() returns.
    addresses = subprocess.run(
        node.netns_argv("ip", "-o", "-4", "addr", "show", "dev", node_module.BRIDGE),
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    assert f"inet {gateway}/" in addresses, f"no {gateway} on the node's bridge yet: {addresses!r}"
    workdir = tmp_path_factory.mktemp("seaweedfs-node")
    with seaweed_module.SeaweedS3.start(
        binary, workdir, ip=gateway, argv_prefix=tuple(node.netns_argv())
    ) as server:
        yield server


@pytest.fixture
def product_diagnostics(
    request: pytest.FixtureRequest, product: Any, product_module: ModuleType
) -> Iterator[Any]:
    """The product; prints the cluster's state, events and logs when the test failed."""
    yield product
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(product_module.diagnostics(product.cp, product.ns))
