"""The `Recommender` protocol the evaluation calls: exact top-k over embeddings, the popularity and
random baselines, and item-item cosine neighbours as a comparison.

A recommender answers (user_id, k, exclude) with at most k item ids, best first, never one in
`exclude`. Scores follow the project contract: higher is better for every metric.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
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


class RandomRecommender:
    """k catalogue items drawn uniformly without replacement, minus what the user has seen
    (seeded: the same run gives the same answers). The floor every model must clear."""

    def __init__(self, catalogue: Iterable[str], seed: int = 0) -> None:
        self._items = sorted(set(catalogue))
        self._rng = np.random.default_rng(seed)

    def __call__(self, user_id: str, k: int, exclude: Collection[str]) -> list[str]:
        # Enough draws that k survive the exclusions; at most the whole catalogue.
        size = min(len(self._items), k + len(exclude))
        draw = self._rng.choice(len(self._items), size=size, replace=False)
        return [self._items[i] for i in draw.tolist() if self._items[i] not in exclude][:k]


class ItemCosineRecommender:
    """Item-item cosine neighbours (`implicit.nearest_neighbours.CosineRecommender`): a user's
    score for an item sums its similarity to the items the user had. Not servable from the
    sharded embedding index (no low-dimensional vectors); evaluated as a comparison only."""

    def __init__(self, users: Sequence[str], items: Sequence[str], neighbours: int = 50) -> None:
        import scipy.sparse
        import threadpoolctl  # type: ignore[import-untyped]
        from implicit.nearest_neighbours import CosineRecommender
        from implicit.utils import ParameterWarning

        self._user_ids = sorted(set(users))
        self._item_ids = sorted(set(items))
        user_row = {user: row for row, user in enumerate(self._user_ids)}
        item_col = {item: col for col, item in enumerate(self._item_ids)}
        rows = [user_row[user] for user in users]
        cols = [item_col[item] for item in items]
        self._matrix = scipy.sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)),
            shape=(len(self._user_ids), len(self._item_ids)),
        )
        self._matrix.sum_duplicates()
        self._matrix.data[:] = 1.0
        self._user_row = user_row
        self._item_col = item_col
        self._model = CosineRecommender(K=neighbours, num_threads=1)
        with threadpoolctl.threadpool_limits(1, "blas"), warnings.catch_warnings():
            # implicit 0.7 normalises into a COO matrix itself, then warns about its own conversion.
            warnings.filterwarnings("ignore", message="Method expects CSR input", category=ParameterWarning)
            self._model.fit(self._matrix, show_progress=False)

    def __call__(self, user_id: str, k: int, exclude: Collection[str]) -> list[str]:
        row = self._user_row.get(user_id)
        if row is None:
            raise UnknownUserError(user_id)
        history = self._matrix[row]
        extra = [self._item_col[item] for item in exclude if item in self._item_col]
        ids, _ = self._model.recommend(row, history, N=k + len(extra), filter_already_liked_items=True)
        blocked = set(extra)
        return [self._item_ids[int(col)] for col in ids.tolist() if int(col) not in blocked][:k]
