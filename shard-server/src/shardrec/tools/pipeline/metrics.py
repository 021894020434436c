"""Ranking metrics for one user; the evaluation averages them over users.

- hit-rate@k: 1 when at least one relevant item is among the first k answers.
- NDCG@k: DCG of the first k answers (gain 1 per relevant item at rank r, discounted by
  1/log2(r+1), ranks from 1) divided by the best possible DCG for this many relevant items.
- recall@k of an approximate answer: share of the exact top-k it also returns.
A repeated answer counts once, so a buggy recommender cannot score above 1.

Over all users: bootstrap percentile intervals of the means (users resampled with replacement,
seeded, vectorised), catalogue coverage and novelty.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt


def _first_k_unique(ranked: Sequence[str], k: int) -> list[str]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    unique: list[str] = []
    for item in ranked[:k]:
        if item not in unique:
            unique.append(item)
    return unique


def hit_rate_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if not relevant:
        raise ValueError("hit-rate needs at least one relevant item")
    return 1.0 if any(item in relevant for item in _first_k_unique(ranked, k)) else 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if not relevant:
        raise ValueError("NDCG needs at least one relevant item")
    dcg = sum(
        1.0 / math.log2(rank + 2) for rank, item in enumerate(_first_k_unique(ranked, k)) if item in relevant
    )
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal


def recall_at_k(approximate: Sequence[str], exact: Sequence[str], k: int) -> float:
    truth = _first_k_unique(exact, k)
    if not truth:
        return 1.0
    found = set(_first_k_unique(approximate, k))
    return sum(1 for item in truth if item in found) / len(truth)


def bootstrap_indices(users: int, resamples: int, seed: int) -> npt.NDArray[np.intp]:
    """`resamples` x `users` row indices drawn with replacement (seeded): one bootstrap world per
    row. Sharing them between recommenders makes their intervals and ratios paired."""
    if users < 1 or resamples < 1:
        raise ValueError(f"bootstrap needs users >= 1 and resamples >= 1, got {users}, {resamples}")
    return np.random.default_rng(seed).integers(0, users, size=(resamples, users))


def bootstrap_interval(
    values: npt.NDArray[np.float64], indices: npt.NDArray[np.intp], level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of per-user `values` over the bootstrap worlds `indices`."""
    means = values[indices].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ratio_interval(
    numerator: npt.NDArray[np.float64],
    denominator: npt.NDArray[np.float64],
    indices: npt.NDArray[np.intp],
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of mean(numerator) / mean(denominator), paired over the same users."""
    tops = numerator[indices].mean(axis=1)
    bottoms = denominator[indices].mean(axis=1)
    ratios = tops[bottoms > 0] / bottoms[bottoms > 0]
    if ratios.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def novelty(recommended: Sequence[Sequence[str]], users_with_item: Mapping[str, int], users: int) -> float:
    """Mean self-information -log2(share of training users who interacted with the item) of every
    recommended item (Zhou et al. 2010): higher means less popular, more surprising answers.
    An item no training user touched counts as touched by one."""
    values = [
        -math.log2(max(users_with_item.get(item, 0), 1) / users) for answer in recommended for item in answer
    ]
    return sum(values) / len(values) if values else 0.0


def coverage(recommended: Sequence[Sequence[str]], catalogue: int) -> float:
    """Share of the catalogue that appears in at least one answer."""
    if catalogue < 1:
        raise ValueError("coverage needs a non-empty catalogue")
    return len({item for answer in recommended for item in answer}) / catalogue
