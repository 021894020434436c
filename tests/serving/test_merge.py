"""k-way top-k merge: max-merge for every metric, deterministic ties, dedupe, exclusion, partial."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shardrec.serving.router.merge import merge_block, merge_top_k


def part(*pairs: tuple[str, float]) -> tuple[list[str], np.ndarray]:
    return [i for i, _ in pairs], np.array([s for _, s in pairs], dtype=np.float32)


def test_takes_the_highest_scores_across_shards_best_first() -> None:
    ids, scores = merge_top_k([part(("a", 0.9), ("b", 0.5)), part(("c", 0.7), ("d", 0.1))], 3)
    assert ids == ["a", "c", "b"]
    assert [float(s) for s in scores] == pytest.approx([0.9, 0.7, 0.5])


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_matches_exact_search_for_every_metric(metric: str) -> None:
    # Shards return "higher is better" scores (l2 as negative squared distance): the merge of
    # per-shard top-k must equal the global top-k of a brute-force search.
    rng = np.random.default_rng(7)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    query = rng.normal(size=8).astype(np.float32)
    if metric == "ip":
        scores = items @ query
    elif metric == "cosine":
        scores = (items / np.linalg.norm(items, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
    else:
        scores = -((items - query) ** 2).sum(axis=1)
    scores = scores.astype(np.float32)
    ids = [f"item-{i}" for i in range(300)]
    shard_of = np.arange(300) % 3
    parts = []
    for shard in range(3):
        members = np.flatnonzero(shard_of == shard)
        best = members[np.argsort(-scores[members])[:10]]
        parts.append(([ids[i] for i in best], scores[best]))
    merged_ids, merged_scores = merge_top_k(parts, 10)
    expected = np.argsort(-scores)[:10]
    assert merged_ids == [ids[i] for i in expected]
    assert [float(s) for s in merged_scores] == [float(scores[i]) for i in expected]


def test_ties_are_ordered_by_item_id_whatever_the_shard_order() -> None:
    shards = [part(("z", 1.0), ("m", 0.5)), part(("a", 1.0), ("q", 0.5)), part(("k", 1.0))]
    first = merge_top_k(shards, 4)
    assert first[0] == ["a", "k", "z", "m"]
    for _ in range(5):
        shuffled = shards[:]
        random.Random(_).shuffle(shuffled)
        assert merge_top_k(shuffled, 4)[0] == first[0]


def test_a_tie_at_the_cut_is_resolved_by_id_not_by_arrival() -> None:
    ids, _ = merge_top_k([part(("y", 0.5)), part(("b", 0.5)), part(("x", 0.9))], 2)
    assert ids == ["x", "b"]


def test_duplicates_keep_their_best_score_once() -> None:
    ids, scores = merge_top_k([part(("a", 0.2), ("b", 0.8)), part(("a", 0.9), ("c", 0.1))], 3)
    assert ids == ["a", "b", "c"]
    assert float(scores[0]) == pytest.approx(0.9)


def test_returns_fewer_than_k_when_shards_hold_fewer_and_handles_missing_shards() -> None:
    assert merge_top_k([part(("a", 0.3))], 5)[0] == ["a"]
    assert merge_top_k([], 5) == ([], [])
    assert merge_top_k([part()], 5) == ([], [])


def test_excluded_items_never_come_back() -> None:
    ids, _ = merge_top_k([part(("a", 0.9), ("b", 0.8), ("c", 0.7))], 2, exclude={"a"})
    assert ids == ["b", "c"]


def test_nan_scores_are_dropped_and_infinite_ones_kept_in_order() -> None:
    ids, _ = merge_top_k([part(("a", float("nan")), ("b", -np.inf), ("c", 0.1))], 3)
    assert ids == ["c", "b"]


def test_numpy_string_ids_from_a_decoded_answer_are_accepted() -> None:
    ids = np.array(["b", "a"], dtype="U1")
    merged, _ = merge_top_k([(list(ids), np.array([0.5, 0.5], dtype=np.float32))], 2)
    assert merged == ["a", "b"]


def test_mismatched_lengths_are_a_bug_not_a_silent_answer() -> None:
    with pytest.raises(ValueError, match="2 ids but 1 scores"):
        merge_top_k([(["a", "b"], np.array([0.1], dtype=np.float32))], 2)


def shard_block(rng: np.random.Generator, rows: int, width: int, pool: int) -> tuple[np.ndarray, ...]:
    """A shard's padded answer for `rows` queries: ids from a small pool (so ties in id and
    duplicates across shards happen), scores rounded (so score ties happen), random counts."""
    ids = np.full((rows, width), "", dtype="U8")
    scores = np.full((rows, width), -np.inf, dtype=np.float32)
    counts = rng.integers(0, width + 1, size=rows).astype(np.uint32)
    for row in range(rows):
        count = int(counts[row])
        ids[row, :count] = rng.choice([f"i{n}" for n in range(pool)], size=count, replace=False)
        scores[row, :count] = -np.sort(-np.round(rng.random(count), 1)).astype(np.float32)
    return ids, scores, counts


@pytest.mark.parametrize("rows", [1, 3, 4, 64])
def test_block_merge_equals_the_per_query_merge(rows: int) -> None:
    rng = np.random.default_rng(rows)
    for trial in range(20):
        parts = [shard_block(rng, rows, 6, pool=12 if trial % 2 else 1000) for _ in range(3)]
        merged = merge_block(parts, 5)
        assert len(merged) == rows
        for row in range(rows):
            pieces = [(list(ids[row, : int(c[row])]), s[row, : int(c[row])]) for ids, s, c in parts]
            expected_ids, expected_scores = merge_top_k(pieces, 5)
            assert merged[row][0] == expected_ids, (trial, row)
            assert merged[row][1].tolist() == [float(x) for x in expected_scores]


def test_block_merge_drops_padding_nan_and_excluded_ids() -> None:
    ids = np.array([["a", "b", ""], ["c", "d", "e"], ["f", "", ""], ["g", "h", ""]])
    scores = np.array(
        [[0.9, 0.1, -np.inf], [np.nan, 0.5, 0.4], [0.3, -np.inf, -np.inf], [0.2, 0.1, -np.inf]],
        dtype=np.float32,
    )
    counts = np.array([2, 3, 1, 2], dtype=np.uint32)
    merged = merge_block([(ids, scores, counts)], 3)
    assert [m[0] for m in merged] == [["a", "b"], ["d", "e"], ["f"], ["g", "h"]]
    excluded = merge_block([(ids, scores, counts)], 3, [["a"], None, None, ["h"]])
    assert [m[0] for m in excluded] == [["b"], ["d", "e"], ["f"], ["g"]]
    assert merge_block([], 3) == []
