"""Search of built shards: recall against brute force, score conventions, exclusion, over-fetch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.scoring import Metric, exact_scores, exact_top_k
from shardrec.serving.index.shard_index import NO_LABEL, ShardIndex
from shardrec.serving.index.synthetic import clustered

COUNT, DIM, SHARDS = 4000, 24, 2


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return clustered(COUNT, DIM, clusters=40, seed=11)


def _layout(tmp: Path, items: np.ndarray, metric: Metric) -> list[ShardIndex]:
    emb = write_embeddings_dir(tmp / "emb", items, [f"it{i}" for i in range(len(items))])
    build_layout(emb, tmp / "layout", version="v1", shards=SHARDS, metric=metric, progress=False)
    return [ShardIndex.load(tmp / "layout", shard) for shard in range(SHARDS)]


@pytest.fixture(scope="module", params=["cosine", "ip", "l2"])
def shards(
    request: pytest.FixtureRequest, items: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> list[ShardIndex]:
    return _layout(tmp_path_factory.mktemp(request.param), items, request.param)


def _search_all(shards: list[ShardIndex], queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
    """Search every shard and max-merge: what the router does."""
    results = [shard.search(queries, k) for shard in shards]
    scores = np.concatenate([r.scores for r in results], axis=1)
    names = np.concatenate(
        [
            np.array(s.ids, dtype=object)[np.maximum(r.labels, 0)]
            for s, r in zip(shards, results, strict=True)
        ],
        axis=1,
    )
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(names, order, axis=1).tolist(), np.take_along_axis(scores, order, axis=1)


def test_recall_at_10_against_brute_force(shards: list[ShardIndex], items: np.ndarray) -> None:
    metric = shards[0].metric
    rng = np.random.default_rng(5)
    queries = (items[rng.choice(COUNT, 200, replace=False)] + rng.normal(scale=0.2, size=(200, DIM))).astype(
        np.float32
    )
    found, scores = _search_all(shards, queries, 10)
    exact = exact_top_k(metric, queries, items, 10)
    hits = sum(
        len({f"it{i}" for i in row} & set(got)) for row, got in zip(exact.tolist(), found, strict=True)
    )
    assert hits / exact.size >= 0.95
    # scores are higher-is-better (docs/embeddings-format.md#metrics) and equal the exact score of the
    # returned item
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    reference = exact_scores(metric, queries, items)
    for row in range(5):
        for item_id, score in zip(found[row], scores[row], strict=True):
            assert score == pytest.approx(reference[row, int(item_id[2:])], rel=1e-3, abs=1e-3)


def test_exclusion_over_fetches_to_keep_k(shards: list[ShardIndex]) -> None:
    shard = shards[0]
    queries = np.asarray(shard.index.get_items([0, 1, 2]), dtype=np.float32)
    wide = shard.search(queries, 25)
    excluded = [[shard.ids[label] for label in wide.labels[row, :15]] for row in range(3)]
    excluded[1] = [*excluded[1][:5], "not-in-this-shard", "nor-this"]
    narrowed = shard.search(queries, 10, excluded)
    assert narrowed.counts.tolist() == [10, 10, 10]
    for row in range(3):
        kept = [label for label in wide.labels[row].tolist() if shard.ids[label] not in excluded[row]][:10]
        assert narrowed.labels[row].tolist() == kept
        assert not {shard.ids[label] for label in narrowed.labels[row]} & set(excluded[row])


def test_k_larger_than_shard_pads(tmp_path: Path) -> None:
    tiny = clustered(12, 4, clusters=2, seed=2)
    shard = _layout(tmp_path, tiny, "l2")[0]
    query = np.asarray(shard.index.get_items([0]), dtype=np.float32)
    result = shard.search(query, 50, [[shard.ids[0]]])
    count = shard.count - 1
    assert result.counts.tolist() == [count]
    assert (result.labels[0, count:] == NO_LABEL).all()
    assert np.isneginf(result.scores[0, count:]).all()
    assert shard.ids[0] not in {shard.ids[label] for label in result.labels[0, :count]}
