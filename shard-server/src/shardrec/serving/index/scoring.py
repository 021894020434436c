"""Metrics: the hnswlib space of each, and scores where HIGHER IS BETTER for all
(docs/embeddings-format.md#metrics).

hnswlib returns distances: ip -> 1 - dot, cosine -> 1 - cos (it normalises vectors itself),
l2 -> squared Euclidean distance. Scores: ip -> dot, cosine -> cosine, l2 -> -squared distance.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

Metric = Literal["ip", "cosine", "l2"]
METRICS: tuple[Metric, ...] = ("ip", "cosine", "l2")
Floats = npt.NDArray[np.float32]


def hnsw_space(metric: Metric) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric  # hnswlib's space names happen to be ours


def scores_from_distances(metric: Metric, distances: Floats) -> Floats:
    """Convert hnswlib distances to higher-is-better scores (a new float32 array)."""
    if metric == "l2":
        negated: Floats = np.negative(distances, dtype=np.float32)
        return negated
    similarity: Floats = np.subtract(np.float32(1.0), distances, dtype=np.float32)
    return similarity


def _normalised(matrix: Floats) -> Floats:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True).astype(np.float32)
    unit: Floats = (matrix / np.maximum(norms, np.float32(1e-30))).astype(np.float32)
    return unit


def exact_scores(metric: Metric, queries: Floats, items: Floats) -> Floats:
    """Brute-force scores (queries x items), the reference for recall."""
    if metric == "cosine":
        cosine: Floats = _normalised(queries) @ _normalised(items).T
        return cosine
    if metric == "ip":
        return (queries @ items.T).astype(np.float32)
    squared = (queries * queries).sum(1)[:, None] - 2 * (queries @ items.T) + (items * items).sum(1)[None, :]
    negated: Floats = np.negative(squared, dtype=np.float32)
    return negated


def exact_top_k(metric: Metric, queries: Floats, items: Floats, k: int) -> npt.NDArray[np.int64]:
    """Row indices of the k best items per query, best first (exact)."""
    scores = exact_scores(metric, queries, items)
    k = min(k, items.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1).astype(np.int64)
