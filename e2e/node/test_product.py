"""The product as a user runs it, on the real node (issue 13, item 3): no kwok pod anywhere on the path.

The `product` fixture (e2e/node/conftest.py, steps in e2e/node/product.py) imports both images of this tree
into the node's containerd, `helm install`s the chart (the operator runs as a pod from its image), offers the
embeddings on a hostPath PV + RWX claim, and applies a RecommenderCluster (2 shards x 2 replicas, 2 routers)
that becomes Ready: a real build Job, shard pods that load their partition and pass /readyz, routers.
This test then queries `/v1/recommend` from this machine through the router Service's ClusterIP (the harness
routes the Service CIDR into the node's netns): by user and by vector, recall@10 against exact search >= 0.95.

Timings are printed (`pytest -s`) and recorded as test properties, never asserted.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.node, pytest.mark.integration, pytest.mark.timeout(1200)]


def test_helm_install_apply_cluster_and_query_through_the_router_service(
    product_diagnostics: Any, product_module: ModuleType, record_property: Any
) -> None:
    product = product_diagnostics
    timings = product.timings
    try:
        recall, url = product_module.query_router(product.cp, product.ns, product.data["v1"], timings)
        record_property("recall_at_10", round(recall, 4))
        print(f"\n[product] recall@10 {recall:.3f} over 20 queries through {url}")
        assert recall >= 0.95
    finally:
        for key, value in timings.items():
            record_property(key, round(value, 3))
        print(f"\n[product] timings: { {k: round(v, 3) for k, v in timings.items()} }")
