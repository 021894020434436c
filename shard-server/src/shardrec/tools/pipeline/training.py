"""Implicit-feedback embeddings with `implicit`'s Alternating Least Squares.

Ratings become confidence through BM25 weighting of each user's row (damps heavy raters and
very popular items), scaled by `alpha`. ALS scores a (user, item) pair by the inner product of
their factors, so the embeddings are served with metric `ip`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from shardrec.serving.index.embeddings import Embeddings
from shardrec.tools.pipeline.interactions import Interactions

if TYPE_CHECKING:
    import scipy.sparse

# scipy, threadpoolctl and implicit (the `pipeline` extra) are imported where used, so `recctl`
# keeps working in images installed without that extra.

METRIC = "ip"


@dataclass(frozen=True)
class AlsParams:
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    alpha: float = 1.0
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    seed: int = 42
    threads: int = 0  # 0 = every core; results do not depend on it (each row solves alone)

    def __post_init__(self) -> None:
        checks = {
            "factors": self.factors >= 1,
            "iterations": self.iterations >= 1,
            "regularization": self.regularization >= 0,
            "alpha": self.alpha > 0,
            "bm25_k1": self.bm25_k1 >= 0,
            "bm25_b": 0 <= self.bm25_b <= 1,
            "threads": self.threads >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid ALS parameter(s): {', '.join(bad)} ({asdict(self)})")


def metric_of(embeddings: Embeddings) -> str:
    """The metric an embeddings directory declares in metadata.json (ALS's `ip` if none)."""
    return str(embeddings.metadata.get("metric", METRIC))


@dataclass(frozen=True)
class TrainingResult:
    embeddings: Embeddings
    seconds: float


def _seen_by_user(interactions: Interactions, user_ids: list[str]) -> list[list[str]]:
    """Per user (in `user_ids` order): the items it interacted with in training, in row order."""
    seen: dict[str, list[str]] = {}
    for user, item in zip(interactions.users.tolist(), interactions.items.tolist(), strict=True):
        seen.setdefault(user, []).append(item)
    return [seen.get(user, []) for user in user_ids]


def confidence_matrix(
    interactions: Interactions, params: AlsParams
) -> tuple[scipy.sparse.csr_matrix, list[str], list[str]]:
    """users x items CSR of BM25-weighted confidence, with the user and item ids of its axes."""
    import scipy.sparse
    from implicit.nearest_neighbours import bm25_weight

    user_ids, user_codes = np.unique(interactions.users, return_inverse=True)
    item_ids, item_codes = np.unique(interactions.items, return_inverse=True)
    raw = scipy.sparse.csr_matrix(
        (interactions.ratings.astype(np.float32), (user_codes, item_codes)),
        shape=(len(user_ids), len(item_ids)),
        dtype=np.float32,
    )
    weighted = bm25_weight(raw, K1=params.bm25_k1, B=params.bm25_b).tocsr().astype(np.float32)
    weighted.data *= np.float32(params.alpha)
    return weighted, user_ids.tolist(), item_ids.tolist()


def train_als(interactions: Interactions, params: AlsParams, *, progress: bool = True) -> TrainingResult:
    """Fit ALS on `interactions`; deterministic for a given seed and input."""
    if len(interactions) == 0:
        raise ValueError("no interactions to train on")
    import threadpoolctl  # type: ignore[import-untyped]
    from implicit.cpu.als import AlternatingLeastSquares

    started = time.perf_counter()
    matrix, user_ids, item_ids = confidence_matrix(interactions, params)
    # OpenBLAS threads fighting implicit's own threads slow ALS down ~10x (implicit warns).
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            iterations=params.iterations,
            random_state=params.seed,
            num_threads=params.threads,
            dtype=np.float32,
        )
        model.fit(matrix, show_progress=progress)
    users = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    if not (np.isfinite(users).all() and np.isfinite(items).all()):
        raise ValueError("ALS produced non-finite factors; lower alpha or raise regularization")
    embeddings = Embeddings(
        items=items,
        item_ids=item_ids,
        users=users,
        user_ids=user_ids,
        seen=_seen_by_user(interactions, user_ids),
        metadata={"metric": METRIC},
    )
    return TrainingResult(embeddings=embeddings, seconds=time.perf_counter() - started)
