"""Item writes on a shard: applied to hnswlib (labels, deletes, resize), numbered by the leader,
replicated in order, replayed from the log on load, and guarded by the admin token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.index.write_log import SequenceGapError, WriteLog, WriteRecord
from shardrec.serving.shard.app import build_api
from shardrec.serving.shard.client import NO_WRITE_LOG
from shardrec.serving.shard.engine import (
    EngineSettings,
    NoWriteLogError,
    SearchEngine,
    SequenceGapRefusedError,
    WriteRejectedError,
)
from shardrec.serving.shard.metrics import ShardMetrics

DIM = 8
SHARDS = 2


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("writes")
    items = clustered(60, DIM, clusters=4, seed=3)
    emb = write_embeddings_dir(root / "emb", items, [f"a{i}" for i in range(60)])
    build_layout(emb, root / "v1", version="v1", shards=SHARDS, metric="l2", progress=False)
    return root / "v1"


def _owned(shard: int, prefix: str, count: int) -> list[str]:
    """`count` new ids that belong to `shard`."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        candidate = f"{prefix}{n}"
        if shard_of(candidate, SHARDS) == shard:
            found.append(candidate)
        n += 1
    return found


def _vector(seed: int) -> tuple[float, ...]:
    return tuple(float(x) for x in np.random.default_rng(seed).normal(size=DIM).astype(np.float32))


def _everything(index: ShardIndex) -> set[str]:
    """Every id a search can return (k = all items, from a few directions)."""
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(4, DIM)).astype(np.float32)
    result = index.search(queries, max(index.count, 1))
    return {index.ids[label] for label in result.labels.ravel().tolist() if label >= 0}


_OPS = st.lists(
    st.tuples(st.sampled_from(["upsert", "delete"]), st.integers(0, 11), st.integers(0, 1000)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_OPS)
def test_applied_writes_match_the_ops_in_order(layout: Path, ops: list[tuple[str, int, int]]) -> None:
    """New ids, existing ids, deletes and re-upserts of deleted ids, past the loaded capacity:
    the ids a search can return are the oracle's live ids, and each upserted item is found by
    its own vector with its latest vector."""
    index = ShardIndex.load(layout, 0)
    pool = _owned(0, "n", 6) + index.ids[:6]
    live = set(index.ids)
    latest: dict[str, tuple[float, ...]] = {}
    records = []
    for seq, (op, which, seed) in enumerate(ops, start=1):
        item = pool[which]
        if op == "upsert":
            records.append(WriteRecord(seq, "upsert", item, _vector(seed)))
            live.add(item)
            latest[item] = _vector(seed)
        else:
            records.append(WriteRecord(seq, "delete", item))
            live.discard(item)
            latest.pop(item, None)
    assert index.apply_writes(records) == len(records)
    assert index.applied_sequence == len(records)
    assert set(index.label_of) == live
    assert index.count == len(live)
    assert _everything(index) == live
    for item, vector in latest.items():
        stored = index.index.get_items([index.label_of[item]])[0]
        np.testing.assert_allclose(stored, vector, rtol=1e-6)
    assert index.apply_writes(records) == 0  # replayed again: nothing changes
    assert set(index.label_of) == live


def test_growth_past_capacity_resizes_and_wire_ids_follow(layout: Path) -> None:
    index = ShardIndex.load(layout, 1)
    before = index.index.get_max_elements()
    new = _owned(1, "a-much-longer-identifier-than-before-", before + 5)
    index.apply_writes([WriteRecord(n + 1, "upsert", item, _vector(n)) for n, item in enumerate(new)])
    assert index.index.get_max_elements() > before
    for item in (new[0], new[-1]):
        result = index.search(np.asarray([index.index.get_items([index.label_of[item]])[0]]), 1)
        label = int(result.labels[0, 0])
        assert index.ids[label] == item and index.ids_wire[label].decode() == item


def test_a_gap_applies_nothing(layout: Path) -> None:
    index = ShardIndex.load(layout, 0)
    with pytest.raises(SequenceGapError):
        index.apply_writes([WriteRecord(1, "delete", index.ids[0]), WriteRecord(3, "delete", index.ids[1])])
    assert index.applied_sequence == 0 and index.ids[0] in index.label_of


def _engine(log_dir: Path) -> SearchEngine:
    return SearchEngine(ShardMetrics(), EngineSettings(search_threads=2, write_log_dir=log_dir))


def test_leader_numbers_follower_replicates_and_a_restart_replays(layout: Path, tmp_path: Path) -> None:
    fresh = _owned(0, "new", 3)

    async def scenario() -> None:
        leader, follower = _engine(tmp_path / "r0"), _engine(tmp_path / "r1")
        await leader.load(layout, 0)
        await follower.load(layout, 0)
        assert leader.current is not None
        gone = leader.current.ids[0]
        ops = [WriteRecord(1, "upsert", item, _vector(n)) for n, item in enumerate(fresh)]
        assert await leader.lead_writes(ops) == [1, 2, 3]
        assert await leader.lead_writes([WriteRecord(1, "delete", gone)]) == [4]
        log = leader.write_log(SHARDS, 0).since(0)
        with pytest.raises(SequenceGapRefusedError) as gap:
            await follower.replicate_writes(log[2:])
        assert gap.value.applied == 0
        assert await follower.replicate_writes(log[:2]) == 2
        assert await follower.replicate_writes(log) == 2  # the first two again are skipped
        for engine in (leader, follower):
            assert engine.applied_sequence() == 4
            assert engine.current is not None
            assert gone not in _everything(engine.current)
            assert set(fresh) <= _everything(engine.current)
            answer = await engine.search(np.asarray([_vector(0)], dtype=np.float32), 1, None, 0, binary=False)
            assert answer["results"][0][0]["item_id"] == fresh[0]
        with pytest.raises(WriteRejectedError, match="belongs to shard 1"):
            await leader.lead_writes([WriteRecord(1, "delete", _owned(1, "x", 1)[0])])
        with pytest.raises(WriteRejectedError, match="3 numbers, the index 8"):
            await leader.lead_writes([WriteRecord(1, "upsert", fresh[0], (1.0, 2.0, 3.0))])
        leader.close()
        follower.close()
        restarted = _engine(tmp_path / "r1")
        await restarted.load(layout, 0)
        assert restarted.applied_sequence() == 4
        assert restarted.current is not None
        assert gone not in restarted.current.label_of and set(fresh) <= set(restarted.current.label_of)
        restarted.close()

    asyncio.run(scenario())


def test_writes_wait_for_running_searches_and_searches_resume(layout: Path, tmp_path: Path) -> None:
    """Searches and writes interleaved: every search is answered, every write applied."""

    async def scenario() -> None:
        engine = _engine(tmp_path / "log")
        await engine.load(layout, 0)
        query = np.asarray([_vector(9)], dtype=np.float32)
        items = _owned(0, "w", 20)
        searches = [engine.search(query, 5, None, 0, binary=False) for _ in range(40)]
        writes = [
            engine.lead_writes([WriteRecord(1, "upsert", item, _vector(n))]) for n, item in enumerate(items)
        ]
        results = await asyncio.gather(*searches, *writes)
        assert sorted(seq for r in results[40:] for seq in r) == list(range(1, 21))
        assert all(len(r["results"][0]) == 5 for r in results[:40])
        engine.close()

    asyncio.run(scenario())


def test_write_routes_need_the_admin_token(layout: Path, tmp_path: Path) -> None:
    item = _owned(0, "api", 1)[0]

    async def scenario() -> None:
        engine = _engine(tmp_path / "log")
        await engine.load(layout, 0)
        api = build_api(engine, engine.metrics, 0, "s3cret")
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://shard") as client:
            body = {"ops": [{"op": "upsert", "id": item, "vector": list(_vector(1))}]}
            assert (await client.post("/v1/admin/writes", json=body)).status_code == 401
            assert (await client.get("/v1/admin/writes")).status_code == 401
            auth = {"authorization": "Bearer s3cret"}
            led = await client.post("/v1/admin/writes", json=body, headers=auth)
            assert led.status_code == 200, led.text
            assert led.json() == {"sequences": [1], "applied_sequence": 1}
            read = (await client.get("/v1/admin/writes", params={"after": 0}, headers=auth)).json()
            assert read["last_sequence"] == 1 and read["records"][0]["id"] == item
            gap = {"records": [{"seq": 5, "op": "delete", "id": item}]}
            refused = await client.post("/v1/admin/writes/replicate", json=gap, headers=auth)
            assert refused.status_code == 409 and refused.json()["applied_sequence"] == 1
            bad = {"ops": [{"op": "upsert", "id": item, "vector": [1.0]}]}
            wrong = await client.post("/v1/admin/writes", json=bad, headers=auth)
            assert wrong.status_code == 400 and "1 numbers, the index 8" in wrong.json()["error"]["message"]
            ready = (await client.get("/readyz")).json()
            assert ready["applied_sequence"] == 1
        engine.close()

    asyncio.run(scenario())


def test_a_fenced_leader_takes_no_new_writes_until_unfenced(layout: Path, tmp_path: Path) -> None:
    """Before a newer layout takes over, the runtime fences the old leaders: the answer names the
    last sequence logged, and every later write is refused with a retryable 503."""
    items = _owned(0, "fence", 2)

    async def scenario() -> None:
        engine = _engine(tmp_path / "log")
        await engine.load(layout, 0)
        api = build_api(engine, engine.metrics, 0, "s3cret")
        auth = {"authorization": "Bearer s3cret"}
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://shard") as client:
            write = {"ops": [{"op": "upsert", "id": items[0], "vector": list(_vector(1))}]}
            assert (await client.post("/v1/admin/writes", json=write, headers=auth)).status_code == 200
            assert (await client.post("/v1/admin/writes/fence", json={"fenced": True})).status_code == 401
            fenced = await client.post("/v1/admin/writes/fence", json={"fenced": True}, headers=auth)
            assert fenced.json() == {"fenced": True, "last_sequence": 1}
            refused = await client.post("/v1/admin/writes", json=write, headers=auth)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "writes_fenced"
            # a follower's replication is not fenced: only leading new writes is
            record = {"records": [{"seq": 2, "op": "delete", "id": items[1]}]}
            assert (
                await client.post("/v1/admin/writes/replicate", json=record, headers=auth)
            ).status_code == 200
            opened = await client.post("/v1/admin/writes/fence", json={"fenced": False}, headers=auth)
            assert opened.json() == {"fenced": False, "last_sequence": 2}
            led = await client.post("/v1/admin/writes", json=write, headers=auth)
            assert led.status_code == 200 and led.json()["sequences"] == [3]
        engine.close()

    asyncio.run(scenario())


def test_no_log_dir_refuses_writes(layout: Path) -> None:
    async def scenario() -> None:
        engine = SearchEngine(ShardMetrics(), EngineSettings(search_threads=1))
        await engine.load(layout, 0)
        with pytest.raises(NoWriteLogError, match="no write log") as refused:
            await engine.lead_writes([WriteRecord(1, "delete", "x")])
        # The code the router maps to 403 writes_disabled (the client's constant).
        assert (refused.value.code, refused.value.status) == (NO_WRITE_LOG, 409)
        engine.close()

    asyncio.run(scenario())


def test_the_log_lives_per_shard_count_and_shard(layout: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = _engine(tmp_path / "log")
        await engine.load(layout, 1)
        await engine.lead_writes([WriteRecord(1, "delete", _owned(1, "z", 1)[0])])
        engine.close()

    asyncio.run(scenario())
    assert len(WriteLog(tmp_path / "log" / "shards-2" / "shard-0001.log")) == 1


def _recall(index: ShardIndex, live: dict[str, np.ndarray], queries: np.ndarray, k: int) -> float:
    """recall@k of the index against exact cosine search over `live`."""
    ids = list(live)
    matrix = np.stack([live[i] for i in ids])
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    exact = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ matrix.T, axis=1)[:, :k]
    result = index.search(queries, k)
    hits = 0
    for row in range(len(queries)):
        truth = {ids[j] for j in exact[row]}
        hits += len(truth & {index.ids[label] for label in result.labels[row].tolist() if label >= 0})
    return hits / (len(queries) * k)


def test_recall_after_a_fifth_of_the_items_were_replaced(tmp_path: Path) -> None:
    """Delete 20% of the items and insert as many new ones (hnswlib reuses the deleted slots):
    recall@10 against exact search stays close to the freshly built index's."""
    count, dim = 4000, 16
    vectors = clustered(count, dim, clusters=40, seed=11)
    ids = [f"i{n}" for n in range(count)]
    emb = write_embeddings_dir(tmp_path / "emb", vectors, ids)
    build_layout(emb, tmp_path / "l", version="v1", shards=1, progress=False)
    index = ShardIndex.load(tmp_path / "l", 0)
    queries = clustered(200, dim, clusters=40, seed=12)
    live = dict(zip(ids, vectors, strict=True))
    before = _recall(index, live, queries, 10)
    fresh = clustered(count // 5, dim, clusters=40, seed=13)
    records = []
    for n in range(count // 5):
        records.append(WriteRecord(2 * n + 1, "delete", ids[n * 5]))
        records.append(WriteRecord(2 * n + 2, "upsert", f"new{n}", tuple(map(float, fresh[n]))))
        del live[ids[n * 5]]
        live[f"new{n}"] = fresh[n]
    index.apply_writes(records)
    assert index.index.get_max_elements() == count  # every new item took a deleted slot
    after = _recall(index, live, queries, 10)
    print(f"\nrecall@10 (ef {index.ef_search}): built {before:.4f}, after replacing 20% {after:.4f}")
    assert after >= before - 0.02
