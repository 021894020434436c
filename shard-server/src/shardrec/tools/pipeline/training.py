"""Implicit-feedback embeddings with `implicit`: Alternating Least Squares or Bayesian Personalized Ranking.

Ratings become confidence through a per-user weighting of the user x item matrix (BM25, which
damps heavy raters and very popular items; TF-IDF; or none, the raw ratings), scaled by `alpha`
(ALS only: BPR samples positive pairs and ignores their weight). Both score a (user, item) pair by
the inner product of their factors (BPR's item factors carry the item bias as one more dimension,
with a constant 1 on the user side), so the embeddings are served with metric `ip`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from shardrec.serving.index.embeddings import Embeddings
from shardrec.tools.pipeline.interactions import Interactions

if TYPE_CHECKING:
    import scipy.sparse

# scipy, threadpoolctl and implicit (the `pipeline` extra) are imported where used, so `recctl`
# keeps working in images installed without that extra.

METRIC = "ip"
Model = Literal["als", "bpr"]
Weighting = Literal["bm25", "tfidf", "none"]
MODELS: tuple[str, ...] = get_args(Model)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
MODEL_CLASSES = {"als": "AlternatingLeastSquares", "bpr": "BayesianPersonalizedRanking"}


@dataclass(frozen=True)
class TrainParams:
    """One model's hyper-parameters. The defaults are the winner of `recctl train --tune --holdout 1`
    on MovieLens ml-latest-small (docs/evaluation.md): ALS on unweighted ratings."""

    model: Model = "als"
    factors: int = 128
    iterations: int = 25
    regularization: float = 0.01
    alpha: float = 0.5
    weighting: Weighting = "none"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    learning_rate: float = 0.01  # BPR only
    seed: int = 42
    threads: int = 0  # 0 = every core; ALS results do not depend on it (each row solves alone)

    def __post_init__(self) -> None:
        checks = {
            "model": self.model in MODELS,
            "factors": self.factors >= 1,
            "iterations": self.iterations >= 1,
            "regularization": self.regularization >= 0,
            "alpha": self.alpha > 0,
            "weighting": self.weighting in WEIGHTINGS,
            "bm25_k1": self.bm25_k1 >= 0,
            "bm25_b": 0 <= self.bm25_b <= 1,
            "learning_rate": self.learning_rate > 0,
            "threads": self.threads >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training parameter(s): {', '.join(bad)} ({asdict(self)})")

    def relevant(self) -> dict[str, Any]:
        """The parameters that shape this model (BPR has no alpha or weighting, ALS no learning rate)."""
        values = asdict(self)
        values.pop("threads")
        if self.model == "bpr":
            for name in ("alpha", "weighting", "bm25_k1", "bm25_b"):
                values.pop(name)
        else:
            values.pop("learning_rate")
            if self.weighting != "bm25":
                values.pop("bm25_k1")
                values.pop("bm25_b")
        return values

    def describe(self) -> str:
        """One line for humans, e.g. `als factors=64 iterations=15 ...`."""
        values = self.relevant()
        model = values.pop("model")
        return f"{model} " + " ".join(f"{name}={value}" for name, value in values.items())


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


def rating_matrix(interactions: Interactions) -> tuple[scipy.sparse.csr_matrix, list[str], list[str]]:
    """users x items CSR of the raw ratings, with the (sorted) user and item ids of its axes."""
    import scipy.sparse

    user_ids, user_codes = np.unique(interactions.users, return_inverse=True)
    item_ids, item_codes = np.unique(interactions.items, return_inverse=True)
    raw = scipy.sparse.csr_matrix(
        (interactions.ratings.astype(np.float32), (user_codes, item_codes)),
        shape=(len(user_ids), len(item_ids)),
        dtype=np.float32,
    )
    return raw, user_ids.tolist(), item_ids.tolist()


def weight(raw: scipy.sparse.csr_matrix, params: TrainParams) -> scipy.sparse.csr_matrix:
    """The confidence matrix the model is fitted on: `params.weighting` of `raw`, times alpha (BPR
    learns from which pairs exist, not from their weight: it gets `raw` as is)."""
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight

    if params.model == "bpr":
        return raw.copy()
    if params.weighting == "bm25":
        weighted = bm25_weight(raw, K1=params.bm25_k1, B=params.bm25_b)
    elif params.weighting == "tfidf":
        weighted = tfidf_weight(raw)
    else:
        weighted = raw.copy()
    weighted = weighted.tocsr().astype(np.float32)
    weighted.data *= np.float32(params.alpha)
    return weighted


def confidence_matrix(
    interactions: Interactions, params: TrainParams
) -> tuple[scipy.sparse.csr_matrix, list[str], list[str]]:
    """users x items CSR of weighted confidence, with the user and item ids of its axes."""
    raw, user_ids, item_ids = rating_matrix(interactions)
    return weight(raw, params), user_ids, item_ids


def fit_factors(
    matrix: scipy.sparse.csr_matrix, params: TrainParams, *, progress: bool = False
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.float32]]]:
    """(user factors, item factors) of `params.model` fitted on `matrix` (users x items)."""
    import threadpoolctl  # type: ignore[import-untyped]

    # OpenBLAS threads fighting implicit's own threads slow ALS down ~10x (implicit warns).
    with threadpoolctl.threadpool_limits(1, "blas"):
        if params.model == "bpr":
            from implicit.cpu.bpr import BayesianPersonalizedRanking

            model: Any = BayesianPersonalizedRanking(
                factors=params.factors,
                learning_rate=params.learning_rate,
                regularization=params.regularization,
                iterations=params.iterations,
                random_state=params.seed,
                num_threads=params.threads,
                dtype=np.float32,
            )
        else:
            from implicit.cpu.als import AlternatingLeastSquares

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
    return users, items


def train_model(interactions: Interactions, params: TrainParams, *, progress: bool = True) -> TrainingResult:
    """Fit `params.model` on `interactions`; ALS is deterministic for a given seed and input
    (BPR's parallel SGD is deterministic only with `threads=1`)."""
    if len(interactions) == 0:
        raise ValueError("no interactions to train on")
    started = time.perf_counter()
    matrix, user_ids, item_ids = confidence_matrix(interactions, params)
    users, items = fit_factors(matrix, params, progress=progress)
    if not (np.isfinite(users).all() and np.isfinite(items).all()):
        raise ValueError(
            f"{params.model} produced non-finite factors; lower alpha or the learning rate, "
            "or raise regularization"
        )
    embeddings = Embeddings(
        items=items,
        item_ids=item_ids,
        users=users,
        user_ids=user_ids,
        seen=_seen_by_user(interactions, user_ids),
        metadata={"metric": METRIC},
    )
    return TrainingResult(embeddings=embeddings, seconds=time.perf_counter() - started)
