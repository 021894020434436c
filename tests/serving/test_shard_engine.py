"""The shard engine in-process: coalescing, equal answers, exclusion per request, atomic swap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.shard.engine import EngineSettings, LoadRejectedError, NotReadyError, SearchEngine
from shardrec.serving.shard.metrics import ShardMetrics
from shardrec.serving.shard.wire import decode_answer

DIM = 8


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    items = clustered(400, DIM, clusters=8, seed=7)
    emb = write_embeddings_dir(root / "emb", items, [f"a{i}" for i in range(400)])
    emb2 = write_embeddings_dir(root / "emb2", items[:300], [f"b{i}" for i in range(300)])
    emb16 = write_embeddings_dir(root / "emb16", clustered(50, 16, seed=1), [f"c{i}" for i in range(50)])
    out = {}
    for name, source, version in (("v1", emb, "v1"), ("v2", emb2, "v2"), ("d16", emb16, "v3")):
        build_layout(source, root / name, version=version, shards=2, progress=False)
        out[name] = root / name
    return out


def _count(metrics: ShardMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def test_concurrent_requests_are_coalesced_and_answered_like_alone(layouts: dict[str, Path]) -> None:
    reference = ShardIndex.load(layouts["v1"], 0)
    queries = np.asarray(reference.index.get_items(list(range(20))), dtype=np.float32)

    async def scenario() -> tuple[list[bytes], ShardMetrics]:
        metrics = ShardMetrics()
        engine = SearchEngine(metrics, EngineSettings(search_threads=1))
        await engine.load(layouts["v1"], 0)
        try:
            answers = await asyncio.gather(
                *(
                    engine.search(queries[i : i + 1], 3 + i % 4, [[reference.ids[i]]], 0, binary=True)
                    for i in range(20)
                )
            )
        finally:
            engine.close()
        return answers, metrics

    answers, metrics = asyncio.run(scenario())
    assert _count(metrics, "shardrec_shard_batch_requests_count") < 20  # fewer knn calls than requests
    assert _count(metrics, "shardrec_shard_batch_requests_sum") == 20
    for i, body in enumerate(answers):
        alone = reference.search(queries[i : i + 1], 3 + i % 4, [[reference.ids[i]]])
        decoded = decode_answer(body)
        assert decoded.version == "v1" and decoded.shard == 0
        expected = [reference.ids[label] for label in alone.labels[0]]
        assert decoded.ids[0].tolist() == expected
        assert reference.ids[i] not in expected
        np.testing.assert_allclose(decoded.scores[0], alone.scores[0])


def test_not_ready_then_swap_keeps_shape(layouts: dict[str, Path]) -> None:
    async def scenario() -> None:
        engine = SearchEngine(ShardMetrics(), EngineSettings(search_threads=2))
        query = np.ones((1, DIM), dtype=np.float32)
        with pytest.raises(NotReadyError):
            await engine.search(query, 5, None, 0, binary=False)
        await engine.load(layouts["v1"], 1)
        first = await engine.search(query, 5, None, 0, binary=False)
        assert first["version"] == "v1" and all(hit["item_id"].startswith("a") for hit in first["results"][0])
        with pytest.raises(LoadRejectedError, match="dimension is 16, but 8 is required"):
            await engine.load(layouts["d16"], 1)
        assert engine.load_status.state == "failed"
        second = await engine.search(query, 5, None, 0, binary=False)
        assert second["version"] == "v1"  # a refused load leaves the served index alone
        await engine.load(layouts["v2"], 1)
        third = await engine.search(query, 5, None, 0, binary=False)
        assert third["version"] == "v2" and all(hit["item_id"].startswith("b") for hit in third["results"][0])
        engine.close()

    asyncio.run(scenario())


def test_bounded_wait_collects_a_batch_until_it_is_full(layouts: dict[str, Path]) -> None:
    """With a (long) bounded wait, requests arriving one by one wait for each other, and the
    batch goes as soon as it is full instead of waiting out the timer."""

    async def scenario() -> ShardMetrics:
        metrics = ShardMetrics()
        settings = EngineSettings(search_threads=1, max_wait_s=60.0, max_batch_queries=4)
        engine = SearchEngine(metrics, settings)
        await engine.load(layouts["v1"], 0)
        query = np.ones((1, DIM), dtype=np.float32)
        tasks = []
        for _ in range(4):
            tasks.append(asyncio.create_task(engine.search(query, 3, None, 0, binary=False)))
            await asyncio.sleep(0)  # a separate loop tick for each arrival
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert len({str(answer["results"]) for answer in answers}) == 1
        engine.close()
        return metrics

    import uvloop  # the server's loop: its timer handles differ from asyncio's

    for run in (asyncio.run, uvloop.run):
        metrics = run(scenario())
        assert _count(metrics, "shardrec_shard_batch_requests_count") == 1
        assert _count(metrics, "shardrec_shard_batch_requests_sum") == 4


def test_a_request_that_fails_its_batch_fails_alone(
    layouts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search error caused by one request (here: an index that fails on an id) costs only that
    request; the requests coalesced with it are answered as if alone."""
    reference = ShardIndex.load(layouts["v1"], 0)
    queries = np.asarray(reference.index.get_items(list(range(8))), dtype=np.float32)
    original = ShardIndex.search

    def fragile(
        self: ShardIndex, q: np.ndarray, k: int, exclude: object = None, *, threads: int = 1
    ) -> object:
        if exclude is not None and any(ids and "BAD" in ids for ids in exclude):  # type: ignore[attr-defined]
            raise ValueError("cannot search for BAD")
        return original(self, q, k, exclude, threads=threads)  # type: ignore[arg-type]

    monkeypatch.setattr(ShardIndex, "search", fragile)

    async def scenario() -> list[object]:
        engine = SearchEngine(ShardMetrics(), EngineSettings(search_threads=1))
        await engine.load(layouts["v1"], 0)
        try:
            return await asyncio.gather(
                *(
                    engine.search(
                        queries[i : i + 1], 3, [["BAD"] if i == 4 else [reference.ids[i]]], 0, binary=False
                    )
                    for i in range(8)
                ),
                return_exceptions=True,
            )
        finally:
            engine.close()

    answers = asyncio.run(scenario())
    assert isinstance(answers[4], ValueError)
    for i, answer in enumerate(answers):
        if i != 4:
            assert isinstance(answer, dict), answer
            ids = [item["item_id"] for item in answer["results"][0]]
            assert len(ids) == 3 and reference.ids[i] not in ids
