from __future__ import annotations

import math

import numpy as np
import pytest

from shardrec.tools.pipeline.metrics import (
    bootstrap_indices,
    bootstrap_interval,
    bootstrap_ratio_interval,
    coverage,
    hit_rate_at_k,
    ndcg_at_k,
    novelty,
    recall_at_k,
)


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


def test_bootstrap_interval_is_seeded_brackets_the_mean_and_narrows_with_users() -> None:
    rng = np.random.default_rng(0)
    few = (rng.random(50) < 0.3).astype(float)
    many = (rng.random(5000) < 0.3).astype(float)
    low, high = bootstrap_interval(few, bootstrap_indices(50, 1000, seed=1))
    assert low < few.mean() < high
    assert (low, high) == bootstrap_interval(few, bootstrap_indices(50, 1000, seed=1))
    wide = high - low
    low, high = bootstrap_interval(many, bootstrap_indices(5000, 1000, seed=1))
    assert low < many.mean() < high and high - low < wide / 5
    constant = np.ones(20)
    assert bootstrap_interval(constant, bootstrap_indices(20, 100, seed=2)) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_indices(0, 10, seed=0)


def test_bootstrap_ratio_is_paired() -> None:
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    worlds = bootstrap_indices(len(a), 500, seed=3)
    # A ratio of a series to itself is exactly 1 in every paired world.
    assert bootstrap_ratio_interval(a, a, worlds) == (1.0, 1.0)
    low, high = bootstrap_ratio_interval(2 * a, a, worlds)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_coverage_and_novelty_hand_checked() -> None:
    answers = [["a", "b"], ["a", "c"]]
    assert coverage(answers, 10) == pytest.approx(0.3)
    # 8 users: a had 8 (-log2 1 = 0), b had 2 (2 bits), c had 1 (3 bits); mean over 4 answers.
    assert novelty(answers, {"a": 8, "b": 2, "c": 1}, 8) == pytest.approx((0 + 2 + 0 + 3) / 4)
    assert novelty([], {}, 8) == 0.0
