"""Implicit-feedback embeddings with `implicit`: Alternating Least Squares or Bayesian Personalized Ranking.

Ratings become confidence through a per-user weighting of the user x item matrix (BM25, which
damps heavy raters and very popular items; TF-IDF; or none, the raw ratings), scaled by `alpha`
(ALS only: BPR samples positive pairs and ignores their weight). Both score a (user, item) pair by
the inner product of their factors (BPR's item factors carry the item bias as one more dimension,
with a constant 1 on the user side), so the embeddings are served with metric `ip`.

The stored user vectors (ALS only) are either the ones training fitted (`user_vectors="trained"`)
or each user's closed-form fold-in (serving/index/foldin.py, the router's code, ratings as
weights) from its `recent_n` most recent interactions of the data given to `train_model`
(`"recent"`): the item factors are the same, only what a user is represented by changes. Both
are ordinary model output: nothing outside the training interactions is read.
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
UserVectors = Literal["trained", "recent"]
MODELS: tuple[str, ...] = get_args(Model)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
USER_VECTORS: tuple[str, ...] = get_args(UserVectors)
MODEL_CLASSES = {"als": "AlternatingLeastSquares", "bpr": "BayesianPersonalizedRanking"}


@dataclass(frozen=True)
class TrainParams:
    """One model's hyper-parameters. The defaults are the winner of `recctl train --tune --holdout 1`
    on MovieLens ml-latest-small (docs/evaluation.md): ALS on BM25-weighted ratings, each user
    stored as folded in from its 5 most recent interactions (validation NDCG@10 0.0772 against
    0.0435 for the same fit's trained user vectors; test hit-rate@10 0.1148, 2.80x popularity)."""

    model: Model = "als"
    factors: int = 128
    iterations: int = 10
    regularization: float = 0.01
    alpha: float = 1.0
    weighting: Weighting = "bm25"
    bm25_k1: float = 20.0
    bm25_b: float = 0.5
    learning_rate: float = 0.01  # BPR only
    # ALS only (BPR stores its trained user vectors, as it ignores alpha and the weighting):
    # "recent" = each user folded in from its last `recent_n` training interactions.
    user_vectors: UserVectors = "recent"
    recent_n: int = 5
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
            "user_vectors": self.user_vectors in USER_VECTORS,
            "recent_n": self.recent_n >= 1,
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
            for name in ("alpha", "weighting", "bm25_k1", "bm25_b", "user_vectors", "recent_n"):
                values.pop(name)
        else:
            values.pop("learning_rate")
            if self.user_vectors != "recent":
                values.pop("recent_n")
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


@dataclass(frozen=True)
class Histories:
    """Per user (in the order of the `user_ids` given), its interactions oldest first: item rows
    (in the order of the `item_ids` given) and ratings. Order: timestamp, then file order, as
    `holdout.leave_last_n_out` orders them (so "the last N" is what a holdout would take next)."""

    item_rows: list[np.ndarray[Any, np.dtype[np.intp]]]
    ratings: list[np.ndarray[Any, np.dtype[np.float64]]]

    @classmethod
    def of(cls, interactions: Interactions, user_ids: list[str], item_ids: list[str]) -> Histories:
        user_row = {user: row for row, user in enumerate(user_ids)}
        item_row = {item: row for row, item in enumerate(item_ids)}
        order = np.lexsort((np.arange(len(interactions)), interactions.timestamps))
        rows: list[list[int]] = [[] for _ in user_ids]
        ratings: list[list[float]] = [[] for _ in user_ids]
        users, items = interactions.users[order].tolist(), interactions.items[order].tolist()
        for user, item, rating in zip(users, items, interactions.ratings[order].tolist(), strict=True):
            row, col = user_row.get(user), item_row.get(item)
            if row is not None and col is not None:
                rows[row].append(col)
                ratings[row].append(rating)
        return cls(
            [np.array(r, dtype=np.intp) for r in rows], [np.array(r, dtype=np.float64) for r in ratings]
        )


def recent_user_vectors(
    histories: Histories,
    items: np.ndarray[Any, np.dtype[np.float32]],
    params: TrainParams,
    users: np.ndarray[Any, np.dtype[np.float32]],
    recent_n: int,
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Each user's ALS closed-form fold-in from its `recent_n` most recent interactions, ratings as
    weights (serving/index/foldin.py: what the router computes for `recent_items`), with `items`
    fixed; a user with no positive rating among them keeps its row of `users`."""
    import threadpoolctl

    from shardrec.serving.index.foldin import FoldInModel, FoldInSpec, fold_in, item_gram

    model = FoldInModel(
        FoldInSpec("als", "als", params.regularization, params.alpha), item_gram(items, METRIC)
    )
    out = users.copy()
    # One BLAS thread: a d x d solve per user is fastest so (foldin_eval.py measures it so too).
    with threadpoolctl.threadpool_limits(1, "blas"):
        for row, (history, weights) in enumerate(zip(histories.item_rows, histories.ratings, strict=True)):
            cols, ratings = history[-recent_n:], weights[-recent_n:]
            keep = ratings > 0
            if keep.any():
                out[row] = fold_in(model, items[cols[keep]], ratings[keep])
    return out


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
    if params.model == "als" and params.user_vectors == "recent":
        histories = Histories.of(interactions, user_ids, item_ids)
        users = recent_user_vectors(histories, items, params, users, params.recent_n)
    embeddings = Embeddings(
        items=items,
        item_ids=item_ids,
        users=users,
        user_ids=user_ids,
        seen=_seen_by_user(interactions, user_ids),
        metadata={"metric": METRIC},
    )
    return TrainingResult(embeddings=embeddings, seconds=time.perf_counter() - started)
