"""Attacks and faults on real processes (127.0.0.1): shard servers (2 shards x 2 replicas) and a
router, from the harness of test_failover_integration. Each test counts what normal clients got.

Every loop is bounded in count and time; nothing asserts on absolute speed (deadlines are checked
as generous ratios of the router's own timeoutMs).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from tests.serving.test_failover_integration import (
    DIM,
    ROUTER,
    USERS,
    Cluster,
    burst,
    cluster,
    failures,
    layouts,
    start_layout,
    wait_ready,
    write_topology,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
__all__ = ["cluster", "layouts"]  # fixtures, re-used

SLOW_CONNECTIONS = 48
MAX_IN_FLIGHT = 8


async def hold_slow_bodies(url: str, count: int, started: asyncio.Event, stop: asyncio.Event) -> int:
    """`count` connections that send headers announcing a 1000-byte body, then one byte a second,
    until `stop`; returns how many connections the router had closed by then."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    streams = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{"
        )
        streams.append((reader, writer))
    started.set()
    while not stop.is_set():
        for _, writer in streams:
            if not writer.is_closing():
                with contextlib.suppress(ConnectionError):
                    writer.write(b" ")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    closed = sum(1 for reader, _ in streams if reader.at_eof())
    for _, writer in streams:
        writer.close()
    return closed


def test_slow_request_bodies_do_not_take_admission_from_normal_requests(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    shards = start_layout(cluster, layouts["v1"], replicas=1)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    router = cluster.router("router", topology, {**ROUTER, "maxInFlight": MAX_IN_FLIGHT})
    wait_ready(router.url)

    async def attack() -> list[httpx.Response | Exception]:
        started, stop = asyncio.Event(), asyncio.Event()
        holding = asyncio.create_task(hold_slow_bodies(router.url, SLOW_CONNECTIONS, started, stop))
        await asyncio.wait_for(started.wait(), 30)
        try:
            return await burst(router.url, count=200, concurrency=4)
        finally:
            stop.set()
            await holding

    results = asyncio.run(attack())
    # 48 trickling bodies against an admission bound of 8: before the fix, every normal request
    # got 503 overloaded.
    assert len(results) == 200
    assert failures(results) == []


def test_oversized_headers_are_refused_by_router_and_shard(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    shards = start_layout(cluster, layouts["v1"], replicas=1)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    router = cluster.router("router", topology, ROUTER)
    wait_ready(router.url)
    body = {"user_id": f"user-{USERS - 1}", "k": 3}
    many = {f"x-h{i}": "v" for i in range(1000)}
    with httpx.Client(timeout=10) as client:
        for url, path in ((router.url, "/v1/recommend"), (shards[0][0].url, "/v1/search/json")):
            payload = body if path == "/v1/recommend" else {"queries": [[0.5] * DIM], "k": 3}
            assert client.post(f"{url}{path}", json=payload).status_code == 200
            refused = client.post(f"{url}{path}", json=payload, headers=many)
            assert refused.status_code == 431, refused.text
            big = client.post(f"{url}{path}", json=payload, headers={"x-big": "a" * 1_000_000})
            assert big.status_code == 431, big.text
