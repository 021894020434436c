"""Item writes with real processes on 127.0.0.1: 2 shards x 2 replicas with write logs and a
router. 2,000 upserts and 200 deletes go through the router under read load while one replica
is killed (SIGKILL) and restarted on its log. Afterwards every acknowledged write is visible on
every replica, and no read that started after a delete was acknowledged returned the item.

Every loop is bounded in count and time; nothing asserts on speed (the numbers are printed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shardrec.serving.index.build import build_layout
from tests.serving.test_failover_integration import (
    DIM,
    Cluster,
    Process,
    cluster,  # noqa: F401 - the fixture
    wait_ready,
    write_embeddings,
    write_topology,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

UPSERTS = 2000
DELETES = 200
KILL_AFTER = 700
RESTART_AFTER = 1300
WRITERS = 6
READERS = 2
MAX_READS = 4000
MAX_TRIES = 50
KEY = {"x-api-key": "k-writer"}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("writes-layout")
    write_embeddings(root / "emb", "v1", seed=1)
    out = root / "layout-v1"
    build_layout(
        root / "emb",
        out,
        version="v1",
        shards=2,
        metric="ip",
        m=8,
        ef_construction=32,
        workers=1,
        progress=False,
    )
    return out


def start_replica(processes: Cluster, layout: Path, shard: int, replica: int) -> Process:
    """Replica `replica` of `shard`, its write log under tmp/writes/s<shard>-r<replica> (kept
    across restarts)."""
    return processes.start(
        f"s{shard}-r{replica}",
        "shardrec.serving.shard.main",
        "--layout-dir",
        str(layout),
        "--shard",
        str(shard),
        "--search-threads",
        "1",
        "--write-log-dir",
        str(processes.tmp / "writes" / f"s{shard}-r{replica}"),
    )


@dataclass
class Record:
    upserted: dict[str, list[float]] = field(default_factory=dict)  # acknowledged, latest vector
    deleted_at: dict[str, float] = field(default_factory=dict)  # id -> monotonic time of the ack
    write_seconds: list[float] = field(default_factory=list)
    retries: int = 0
    failed: list[str] = field(default_factory=list)
    reads: list[tuple[float, list[str]]] = field(default_factory=list)  # (started, ids)
    read_seconds: list[float] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)


async def _write(client: httpx.AsyncClient, record: Record, method: str, item: str, body: Any) -> None:
    """One write, retried (bounded) until acknowledged; 503s while a replica dies are expected."""
    for _ in range(MAX_TRIES):
        started = time.monotonic()
        try:
            answer = await client.request(method, f"/v1/items/{item}", json=body, headers=KEY)
        except httpx.HTTPError as exc:
            answer_text = repr(exc)
        else:
            if answer.status_code == 200:
                record.write_seconds.append(time.monotonic() - started)
                if method == "PUT":
                    record.upserted[item] = body["vector"]
                else:
                    record.deleted_at[item] = time.monotonic()
                    record.upserted.pop(item, None)
                return
            answer_text = f"{answer.status_code} {answer.text[:200]}"
            if answer.status_code != 503:
                record.failed.append(f"{method} {item}: {answer_text}")
                return
        record.retries += 1
        await asyncio.sleep(0.1)
    record.failed.append(f"{method} {item}: never acknowledged: {answer_text}")


async def _reader(client: httpx.AsyncClient, record: Record, stop: asyncio.Event, seed: int) -> None:
    rng = np.random.default_rng(seed)
    while not stop.is_set() and len(record.reads) < MAX_READS:
        vector = rng.normal(size=DIM).tolist()
        started = time.monotonic()
        try:
            answer = await client.post("/v1/recommend", json={"vector": vector, "k": 20}, headers=KEY)
        except httpx.HTTPError as exc:
            record.read_errors.append(repr(exc))
            continue
        record.read_seconds.append(time.monotonic() - started)
        if answer.status_code == 200:
            record.reads.append((started, [hit["item_id"] for hit in answer.json()["items"]]))
        else:
            record.read_errors.append(f"{answer.status_code} {answer.text[:120]}")
        await asyncio.sleep(0.005)


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def test_acknowledged_writes_survive_a_killed_replica_and_deletes_stay_deleted(
    cluster: Cluster,  # noqa: F811 - the fixture
    layout: Path,
) -> None:
    replicas = {s: [start_replica(cluster, layout, s, r) for r in range(2)] for s in range(2)}
    for procs in replicas.values():
        for process in procs:
            wait_ready(process.url)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layout, replicas)
    router = cluster.router(
        "router", topology, {"timeoutMs": 2000, "maxRetries": 2}, keys="writer:k-writer read,write\n"
    )
    wait_ready(router.url)
    rng = np.random.default_rng(7)
    upserts = [(f"new-{n}", rng.normal(size=DIM).astype(np.float32).tolist()) for n in range(UPSERTS)]
    # Deletes: half of them original items, half items upserted above.
    doomed = [f"v1-item-{n}" for n in range(DELETES // 2)] + [f"new-{n}" for n in range(DELETES // 2)]
    record = Record()
    events: list[str] = []

    async def scenario() -> float:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
            readers = [asyncio.create_task(_reader(client, record, stop, seed)) for seed in range(READERS)]
            queue = iter(upserts)
            done = 0

            async def writer() -> None:
                nonlocal done
                for item, vector in queue:
                    await _write(client, record, "PUT", item, {"vector": vector})
                    done += 1
                    if done == KILL_AFTER:
                        replicas[0][1].kill()
                        events.append(f"killed s0-r1 after {done} upserts")
                    if done == RESTART_AFTER:
                        restarted = await asyncio.to_thread(start_replica, cluster, layout, 0, 1)
                        await asyncio.to_thread(wait_ready, restarted.url)
                        replicas[0][1] = restarted
                        write_topology(topology, 2, layout, replicas)
                        events.append(f"restarted s0-r1 after {done} upserts")

            started = time.monotonic()
            await asyncio.gather(*(writer() for _ in range(WRITERS)))
            deletes = iter(doomed)

            async def deleter() -> None:
                for item in deletes:
                    await _write(client, record, "DELETE", item, None)

            await asyncio.gather(*(deleter() for _ in range(WRITERS)))
            elapsed = time.monotonic() - started
            await asyncio.sleep(1.0)  # reads after the last delete
            stop.set()
            await asyncio.gather(*readers)
        return elapsed

    elapsed = asyncio.run(scenario())
    writes = len(record.write_seconds)
    print(
        f"\nwrites: {writes} acknowledged in {elapsed:.1f}s ({writes / elapsed:.0f}/s), "
        f"p50 {_p(record.write_seconds, 50):.1f} ms, p99 {_p(record.write_seconds, 99):.1f} ms, "
        f"{record.retries} retries; reads: {len(record.reads)}, p50 {_p(record.read_seconds, 50):.1f} ms, "
        f"p99 {_p(record.read_seconds, 99):.1f} ms, {len(record.read_errors)} errors "
        f"{record.read_errors[:3]}; {events}"
    )
    assert record.failed == []
    assert len(record.deleted_at) == DELETES
    assert len(record.upserted) == UPSERTS - DELETES // 2
    assert len(events) == 2

    # No read that started after a delete's acknowledgement returned the item.
    stale = [
        (item, started)
        for started, ids in record.reads
        for item in ids
        if item in record.deleted_at and started > record.deleted_at[item]
    ]
    assert stale == []

    # Every replica (the restarted one included) catches up and holds exactly the acknowledged state.
    expected_last = _leader_sequences(replicas)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        applied = {
            p.name: httpx.get(f"{p.url}/readyz", timeout=5).json()["applied_sequence"]
            for ps in replicas.values()
            for p in ps
        }
        if all(applied[p.name] == expected_last[s] for s, ps in replicas.items() for p in ps):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"replicas did not catch up: {applied} vs {expected_last}")
    for shard, procs in replicas.items():
        for process in procs:
            _check_replica(process, shard, record)


def _leader_sequences(replicas: dict[int, list[Process]]) -> dict[int, int]:
    return {
        shard: httpx.get(f"{procs[0].url}/v1/admin/writes", params={"after": 10**9}, timeout=5).json()[
            "last_sequence"
        ]
        for shard, procs in replicas.items()
    }


def _check_replica(process: Process, shard: int, record: Record) -> None:
    from shardrec.serving.index.partitioning import shard_of

    mine = [item for item in record.upserted if shard_of(item, 2) == shard]
    gone = [item for item in record.deleted_at if shard_of(item, 2) == shard]
    for start in range(0, len(mine), 1000):
        chunk = mine[start : start + 1000]
        answer = httpx.post(f"{process.url}/v1/items/vectors", json={"item_ids": chunk}, timeout=10).json()
        assert answer["missing"] == [], f"{process.name} misses acknowledged upserts"
        for item in chunk:
            np.testing.assert_allclose(answer["vectors"][item], record.upserted[item], rtol=1e-6)
    answer = httpx.post(f"{process.url}/v1/items/vectors", json={"item_ids": gone}, timeout=10).json()
    assert sorted(answer["missing"]) == sorted(gone), f"{process.name} still holds deleted items"
    # A search over everything never returns a deleted item.
    queries = np.random.default_rng(shard).normal(size=(4, DIM)).tolist()
    found = httpx.post(
        f"{process.url}/v1/search/json", json={"queries": queries, "k": 2000}, timeout=30
    ).json()
    returned = {hit["item_id"] for row in found["results"] for hit in row}
    assert not returned & set(gone), f"{process.name} returned deleted items"
