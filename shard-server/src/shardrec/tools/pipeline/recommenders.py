"""The `Recommender` protocol the evaluation calls, with the exact and popularity baselines.

A recommender answers (user_id, k, exclude) with at most k item ids, best first, never one in
`exclude`. Scores follow the project contract: higher is better for every metric.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shardrec.serving.index.embeddings import Embeddings, EmbeddingsError
from shardrec.tools.pipeline.training import metric_of


class Recommender(Protocol):
    def __call__(self, user_id: str, k: int, exclude: Collection[str]) -> list[str]: ...


class UnknownUserError(KeyError):
    """The user has no embedding (it had no training interactions)."""


def score_items(
    query: npt.NDArray[np.float32], items: npt.NDArray[np.float32], metric: str
) -> npt.NDArray[np.float32]:
    """Higher-is-better score of every item row for one query (ip, cosine, or -squared l2)."""
    if metric == "ip":
        return np.asarray(items @ query, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(items, axis=1) * np.linalg.norm(query)
        return np.asarray((items @ query) / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)
    if metric == "l2":
        diff = items - query
        squared: npt.NDArray[np.float32] = (diff * diff).sum(axis=1, dtype=np.float32)
        return np.negative(squared)
    raise ValueError(f"unknown metric {metric!r} (expected ip, cosine or l2)")


def top_k_indices(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
    """Indices of the k highest finite scores, best first; ties go to the lower index."""
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size == 0 or k < 1:
        return np.empty(0, dtype=np.intp)
    if finite.size > k:
        # Partition on the kth value, then keep every tie of it so tie-breaking is by index.
        kth = np.partition(scores[finite], finite.size - k)[finite.size - k]
        finite = finite[scores[finite] >= kth]
    order = np.lexsort((finite, -scores[finite]))
    return finite[order[:k]]


class ExactRecommender:
    """Brute-force top-k over all item embeddings (the ground truth for ANN recall)."""

    def __init__(self, embeddings: Embeddings) -> None:
        if embeddings.users is None or embeddings.user_ids is None:
            raise EmbeddingsError(
                f"{embeddings.directory or 'embeddings'}: no user embeddings to recommend for"
            )
        self._items = embeddings.items
        self._item_ids = embeddings.item_ids
        self._item_row = {item: row for row, item in enumerate(embeddings.item_ids)}
        self._users = embeddings.users
        self._user_row = {user: row for row, user in enumerate(embeddings.user_ids)}
        self._metric = metric_of(embeddings)

    def __call__(self, user_id: str, k: int, exclude: Collection[str]) -> list[str]:
        row = self._user_row.get(user_id)
        if row is None:
            raise UnknownUserError(user_id)
        scores = score_items(self._users[row], self._items, self._metric)
        excluded = [self._item_row[item] for item in exclude if item in self._item_row]
        if excluded:
            scores = scores.copy()
            scores[excluded] = -np.inf
        return [self._item_ids[index] for index in top_k_indices(scores, k)]


class PopularityRecommender:
    """The same most-interacted items for everyone (ties: lower item id first)."""

    def __init__(self, training_items: Iterable[str]) -> None:
        counts = Counter(training_items)
        self._ranking = sorted(counts, key=lambda item: (-counts[item], item))

    def __call__(self, user_id: str, k: int, exclude: Collection[str]) -> list[str]:
        answer: list[str] = []
        for item in self._ranking:
            if len(answer) == k:
                break
            if item not in exclude:
                answer.append(item)
        return answer
