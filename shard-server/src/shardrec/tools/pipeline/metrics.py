"""Ranking metrics for one user; the evaluation averages them over users.

- hit-rate@k: 1 when at least one relevant item is among the first k answers.
- NDCG@k: DCG of the first k answers (gain 1 per relevant item at rank r, discounted by
  1/log2(r+1), ranks from 1) divided by the best possible DCG for this many relevant items.
- recall@k of an approximate answer: share of the exact top-k it also returns.
A repeated answer counts once, so a buggy recommender cannot score above 1.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence


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
