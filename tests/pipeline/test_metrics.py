from __future__ import annotations

import math

import pytest

from shardrec.tools.pipeline.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k


def test_hit_rate_counts_a_hit_only_within_k() -> None:
    assert hit_rate_at_k(["a", "b", "c"], {"c"}, 3) == 1.0
    assert hit_rate_at_k(["a", "b", "c"], {"c"}, 2) == 0.0
    assert hit_rate_at_k([], {"c"}, 10) == 0.0


def test_ndcg_hand_checked() -> None:
    # One relevant item at rank 1 is ideal; at rank 3 it earns 1/log2(4) = 0.5.
    assert ndcg_at_k(["x", "b"], {"x"}, 10) == 1.0
    assert ndcg_at_k(["a", "b", "x"], {"x"}, 10) == pytest.approx(0.5)
    # Two relevant at ranks 2 and 4: (1/log2 3 + 1/log2 5) / (1 + 1/log2 3).
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "x", "b", "y"], {"x", "y"}, 10) == pytest.approx(expected)
    # More relevant items than k: the ideal is capped at k positions.
    assert ndcg_at_k(["x", "y"], {"x", "y", "z"}, 2) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b", "x"], {"x"}, 2) == 0.0


def test_a_repeated_answer_counts_once() -> None:
    assert ndcg_at_k(["x", "x", "x"], {"x"}, 3) == 1.0
    assert recall_at_k(["a", "a"], ["a", "b"], 2) == 0.5


def test_recall_against_exact() -> None:
    assert recall_at_k(["a", "b", "c"], ["c", "b", "a"], 3) == 1.0
    assert recall_at_k(["a", "z", "y", "x"], ["a", "b", "c", "d"], 4) == 0.25
    assert recall_at_k(["a"], ["a", "b"], 2) == 0.5
    assert recall_at_k([], [], 10) == 1.0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="at least one relevant"):
        ndcg_at_k(["a"], set(), 10)
    with pytest.raises(ValueError, match="k must be >= 1"):
        hit_rate_at_k(["a"], {"a"}, 0)
