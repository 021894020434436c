"""The result cache between real processes on 127.0.0.1 (shard servers and a router over layouts
built by the index builder): a repeated query is a hit, a layout switch misses, and under strict a
dead shard gets a cached fallback answer only where the spec allows it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.serving import test_failover_integration as failover
from tests.serving.test_failover_integration import (
    ROUTER,
    Cluster,
    _metric,
    start_layout,
    wait_ready,
    write_topology,
)

cluster = failover.cluster  # the fixtures of the failover tests: processes and built layouts
layouts = failover.layouts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CACHE = {"enabled": True, "maxBytes": 1 << 20, "ttlSeconds": 600}


def test_a_repeat_query_is_a_hit_and_a_layout_switch_misses(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    old = start_layout(cluster, layouts["v1"], replicas=1)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], old)
    router = cluster.router("router", topology, {**ROUTER, "cache": CACHE})
    wait_ready(router.url)
    body = {"user_id": "user-3", "k": 10}
    with httpx.Client(base_url=router.url, timeout=10) as client:
        first = client.post("/v1/recommend", json=body).json()
        second = client.post("/v1/recommend", json=body).json()
        assert "cached" not in first and second.pop("cached") is True
        assert second == first and first["index_version"] == "v1"
        new = start_layout(cluster, layouts["v2"], replicas=1)
        write_topology(topology, 2, layouts["v2"], new)
        wait_ready(router.url, version="v2")
        switched = client.post("/v1/recommend", json=body).json()
        assert switched["index_version"] == "v2" and "cached" not in switched
        assert {item["item_id"].split("-")[0] for item in switched["items"]} == {"v2"}
        assert client.post("/v1/recommend", json=body).json()["cached"] is True
        metrics = client.get("/metrics").text
    assert "shardrec_router_cache_hits_total 2.0" in metrics
    assert "shardrec_router_cache_misses_total 2.0" in metrics


def test_a_dead_shard_under_strict_gets_a_cached_fallback_only_where_allowed(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    shards = start_layout(cluster, layouts["v1"], replicas=1)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    strict = {**ROUTER, "consistency": "strict", "cache": {**CACHE, "ttlSeconds": 1}}
    plain = cluster.router("plain", topology, strict)
    fallback = cluster.router("fallback", topology, {**strict, "fallback": {"cached": True}})
    body = {"user_id": "user-5", "k": 10}
    answers = {}
    for router in (plain, fallback):
        wait_ready(router.url)
        answers[router.name] = httpx.post(f"{router.url}/v1/recommend", json=body, timeout=10).json()
    shards[1][0].kill()
    for router in (plain, fallback):
        # Past the 1 s TTL the entries are stale: no hit; only the fallback router may serve them.
        uncached = httpx.post(f"{router.url}/v1/recommend", json={"user_id": "user-6"}, timeout=10)
        assert uncached.status_code == 503  # nothing cached for this user: the 503 stands
    time.sleep(1.2)  # let the 1 s TTL pass (a bounded wait, not a timing assertion)
    refused = httpx.post(f"{plain.url}/v1/recommend", json=body, timeout=10)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shard_unavailable"
    served = httpx.post(f"{fallback.url}/v1/recommend", json=body, timeout=10)
    assert served.status_code == 200, served.text
    answer = served.json()
    assert answer.pop("fallback") == "cached" and answer.pop("cached") is True
    assert answer == answers["fallback"]
    metrics = httpx.get(f"{fallback.url}/metrics").text
    assert _metric(metrics, "shardrec_router_fallback_answers_total", reason="shard_unavailable") == 1
