"""Item writes on a shard: applied to hnswlib (labels, deletes, resize), numbered by the leader,
replicated in order, replayed from the log on load, and guarded by the admin token."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

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


# --- group commit: write requests that arrive while a group is committed go together next ------


_REQUESTS = st.lists(
    st.tuples(st.integers(1, 4), st.booleans()),  # (ops in the request, one of them is refused)
    min_size=1,
    max_size=12,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_REQUESTS)
def test_grouped_leads_number_in_arrival_order_and_a_refused_request_fails_alone(
    layout: Path, tmp_path_factory: pytest.TempPathFactory, requests: list[tuple[int, bool]]
) -> None:
    """Concurrent lead requests (committed in groups: one append + fsync, one pause each): every
    accepted request's sequences are contiguous, in its ops' order and in arrival order across
    requests; together 1..N with no gap or repeat; the log holds exactly those records; a request
    with an op of the wrong dimension fails alone (none of its ops is logged); each answer comes
    once its records are durable and applied."""
    other = _owned(1, "elsewhere", 1)[0]
    items = iter(_owned(0, "g", sum(n for n, _ in requests)))
    batches = [
        [
            WriteRecord(1, "upsert", next(items), (1.0,) if bad and i == n - 1 else _vector(i))
            for i in range(n)
        ]
        for n, bad in requests
    ]

    async def scenario() -> None:
        engine = _engine(tmp_path_factory.mktemp("group"))
        await engine.load(layout, 0)
        log = engine.write_log(SHARDS, 0)
        answered: list[int] = []

        async def lead(ops: list[WriteRecord]) -> list[int] | Exception:
            try:
                sequences = await engine.lead_writes(ops)
            except WriteRejectedError as exc:
                return exc
            assert engine.current is not None
            assert log.last_sequence >= sequences[-1] and engine.current.applied_sequence >= sequences[-1]
            answered.append(len(sequences))
            return sequences

        results = await asyncio.gather(*(lead(ops) for ops in batches))
        with pytest.raises(WriteRejectedError):  # not this shard's: refused alone, nothing logged
            await engine.lead_writes([WriteRecord(1, "delete", other)])
        accepted = [
            (ops, r)
            for ops, (r, (_, bad)) in zip(batches, zip(results, requests, strict=True), strict=True)
            if not bad
        ]
        for (_, bad), result in zip(requests, results, strict=True):
            assert isinstance(result, WriteRejectedError) == bad
        following = 1
        for ops, sequences in accepted:
            assert sequences == list(range(following, following + len(ops)))
            following += len(ops)
        logged = log.since(0)
        assert [r.seq for r in logged] == list(range(1, following))
        assert [r.item_id for r in logged] == [op.item_id for ops, _ in accepted for op in ops]
        assert engine.applied_sequence() == following - 1
        assert engine.current is not None and set(engine.current.label_of) >= {r.item_id for r in logged}
        barriers = engine.metrics.write_barriers._value.get()
        assert barriers <= len(accepted)
        if len(requests) > 1 and accepted:
            assert barriers < len(requests)  # they did not each pause the searches
        engine.close()

    asyncio.run(scenario())


def test_grouped_replication_skips_what_is_held_and_refuses_a_gap_with_the_logged_sequence(
    layout: Path, tmp_path: Path
) -> None:
    items = _owned(0, "rep", 6)
    records = [WriteRecord(n + 1, "upsert", item, _vector(n)) for n, item in enumerate(items)]

    async def scenario() -> None:
        engine = _engine(tmp_path / "log")
        await engine.load(layout, 0)
        first, retry, gap, rest, inner_gap = await asyncio.gather(
            engine.replicate_writes(records[:3]),
            engine.replicate_writes(records[1:3]),  # a retry of records in the same group: skipped
            engine.replicate_writes(records[4:]),  # 4 is missing: refused
            engine.replicate_writes(records[2:4]),  # 3 held, 4 new
            engine.replicate_writes([records[4], records[5]][::-1]),  # out of order: refused
            return_exceptions=True,
        )
        assert (first, retry, rest) == (3, 0, 1)
        for refused in (gap, inner_gap):
            assert isinstance(refused, SequenceGapRefusedError) and refused.applied == 4
        assert [r.seq for r in engine.write_log(SHARDS, 0).since(0)] == [1, 2, 3, 4]
        assert engine.applied_sequence() == 4
        assert await engine.replicate_writes(records) == 2
        assert engine.applied_sequence() == 6
        engine.close()

    asyncio.run(scenario())


def test_an_append_error_fails_only_its_group(
    layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _owned(0, "disk", 6)

    async def scenario() -> None:
        engine = _engine(tmp_path / "log")
        await engine.load(layout, 0)
        log = engine.write_log(SHARDS, 0)
        append = log.append
        calls = 0

        def flaky(records: list[WriteRecord]) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise OSError("disk full")
            append(records)

        monkeypatch.setattr(log, "append", flaky)
        ops = [[WriteRecord(1, "upsert", item, _vector(n))] for n, item in enumerate(items)]
        first = asyncio.ensure_future(engine.lead_writes(ops[0]))
        await asyncio.sleep(0)  # the first group starts committing: the next four queue behind it
        second = asyncio.gather(*(engine.lead_writes(op) for op in ops[1:5]), return_exceptions=True)
        assert await first == [1]
        failed = await second
        assert all(isinstance(result, OSError) for result in failed)
        assert await engine.lead_writes(ops[5]) == [2]  # the next group goes on from the log
        assert [r.item_id for r in log.since(0)] == [items[0], items[5]]
        assert engine.applied_sequence() == 2
        engine.close()

    asyncio.run(scenario())


def test_no_search_runs_while_writes_are_applied_and_the_loop_stays_free(
    layout: Path, tmp_path: Path
) -> None:
    """The apply runs in its own thread while no search runs; meanwhile the event loop keeps
    running (it answers a timer), and item vectors wait for the apply to end."""
    items = _owned(0, "busy", 30)

    async def scenario() -> None:
        engine = _engine(tmp_path / "log")
        await engine.load(layout, 0)
        index = engine.current
        assert index is not None
        searching = 0
        overlaps: list[str] = []
        ticks = 0
        apply_writes, search = index.apply_writes, index.search

        def slow_apply(records: Any) -> int:
            if searching:
                overlaps.append("apply beside a search")
            time.sleep(0.02)  # long enough for the loop to tick meanwhile
            if searching:
                overlaps.append("a search started during the apply")
            return apply_writes(records)

        def counted_search(*args: Any, **kwargs: Any) -> Any:
            nonlocal searching
            searching += 1
            try:
                time.sleep(0.001)
                return search(*args, **kwargs)
            finally:
                searching -= 1

        index.apply_writes = slow_apply  # type: ignore[method-assign]
        index.search = counted_search  # type: ignore[method-assign]

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.002)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        query = np.asarray([_vector(3)], dtype=np.float32)
        writes = [
            engine.lead_writes([WriteRecord(1, "upsert", item, _vector(n))]) for n, item in enumerate(items)
        ]
        searches = [engine.search(query, 3, None, 0, binary=False) for _ in range(60)]
        results = await asyncio.gather(*writes, *searches)
        ticking.cancel()
        assert sorted(seq for r in results[: len(items)] for seq in r) == list(range(1, len(items) + 1))
        assert overlaps == []
        applies = engine.metrics.write_barriers._value.get()
        assert ticks >= applies  # the loop ran during the 20 ms applies
        settled = asyncio.ensure_future(engine.settled_index())
        await asyncio.sleep(0)
        assert settled.done()
        engine.close()

    asyncio.run(scenario())
