"""User fold-in: a user vector from the vectors of a few items the user just interacted with.
Pure (numpy only, no I/O): the router, the evaluation and the tests call the same functions.

Two methods, chosen by the model family the embeddings' metadata.json names (`fold_in_spec`):

- `als` (implicit ALS): the closed-form solve of one ALS user step with the item factors fixed,

      u = (YᵀY + Yᵀ(Cu - I)Y + λI)⁻¹ Yᵀ Cu p(u)

  where YᵀY is the Gram matrix of *all* item factors (precomputed once per layout, stored in the
  users part as item_gram.npy), Cu is the diagonal of the recent items' confidences
  (alpha x weight, as training made confidence from ratings: `training.weight`), and p(u) is 1 for
  them. Only the recent items' factors are needed besides the Gram matrix: the d x d system costs
  O(n·d² + d³) for n recent items, well under a millisecond at d = 128. This is what implicit's
  `recalculate_user=True` computes (tests/serving/test_foldin.py checks it on MovieLens-sized data).
  Training weightings other than `none` (BM25, TF-IDF) are not reproduced: the weight a client
  sends is taken as the already weighted rating.
- `mean` (BPR and embeddings of unknown origin): the weighted mean of the recent items' vectors.
  For BPR, whose item vectors carry the item bias as their last component and whose user vectors
  hold a constant 1 there, the last component is set to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FoldInMethod = Literal["als", "mean"]
Family = Literal["als", "bpr", "unknown"]

Floats = npt.NDArray[np.float32]
Gram = npt.NDArray[np.float64]

_FAMILY_OF_CLASS = {"AlternatingLeastSquares": "als", "BayesianPersonalizedRanking": "bpr"}


@dataclass(frozen=True)
class FoldInSpec:
    """How to fold in, from the embeddings' metadata (the layout manifest records it)."""

    family: Family
    method: FoldInMethod
    regularization: float = 0.0
    alpha: float = 1.0
    default_weight: float = 1.0
    bias_last: bool = False  # BPR: the last component is the item bias (user side: constant 1)


@dataclass(frozen=True)
class FoldInModel:
    """A `FoldInSpec` with what it needs at serving time (the Gram matrix for `als`)."""

    spec: FoldInSpec
    gram: Gram | None = None

    def __post_init__(self) -> None:
        if self.spec.method == "als" and self.gram is None:
            raise ValueError("the als fold-in needs the item Gram matrix")


def fold_in_spec(metadata: dict[str, Any]) -> FoldInSpec:
    """The fold-in an embeddings directory's metadata.json allows: `als` for implicit ALS with its
    regularization and alpha, `mean` for BPR and for embeddings that do not say how they were made.
    `default_weight` (the weight of a recent item given without one) is the training data's mean
    rating when metadata records it (`interactions.mean_rating`), else 1."""
    trainer = metadata.get("trainer")
    trainer = trainer if isinstance(trainer, dict) else {}
    family = _FAMILY_OF_CLASS.get(str(trainer.get("model", "")), "unknown")
    params = trainer.get("params")
    params = params if isinstance(params, dict) else {}
    interactions = metadata.get("interactions")
    mean_rating = interactions.get("mean_rating") if isinstance(interactions, dict) else None
    default_weight = float(mean_rating) if _positive(mean_rating) else 1.0  # type: ignore[arg-type]
    if family == "als" and _non_negative(params.get("regularization")) and _positive(params.get("alpha")):
        return FoldInSpec(
            "als", "als", float(params["regularization"]), float(params["alpha"]), default_weight
        )
    if family == "bpr":
        return FoldInSpec("bpr", "mean", default_weight=default_weight, bias_last=True)
    return FoldInSpec("unknown", "mean", default_weight=default_weight)


def item_gram(items: npt.NDArray[np.float32], metric: str) -> Gram:
    """YᵀY (float64, d x d) of the item vectors as the shards store them: rows normalised for
    `cosine` (hnswlib normalises on insert, and the router folds in the vectors it gets back)."""
    gram = np.zeros((items.shape[1], items.shape[1]), dtype=np.float64)
    for start in range(0, items.shape[0], 1 << 16):
        chunk = np.asarray(items[start : start + (1 << 16)], dtype=np.float64)
        if metric == "cosine":
            norms = np.linalg.norm(chunk, axis=1, keepdims=True)
            chunk = chunk / np.where(norms > 0, norms, 1.0)
        gram += chunk.T @ chunk
    return gram


def fold_in(model: FoldInModel, vectors: Floats, weights: npt.NDArray[np.float64]) -> Floats:
    """The user vector for items `vectors` (n x d, n >= 1) with positive `weights` (n)."""
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[0] != weights.shape[0]:
        raise ValueError(f"need n >= 1 vectors and as many weights, got {vectors.shape} and {weights.shape}")
    if not (weights > 0).all():
        raise ValueError("weights must be positive")
    y = vectors.astype(np.float64)
    spec = model.spec
    if spec.method == "mean":
        mean: npt.NDArray[np.float64] = (weights @ y) / weights.sum()
        if spec.bias_last:
            mean[-1] = 1.0
        return mean.astype(np.float32)
    assert model.gram is not None
    confidence = spec.alpha * weights
    a = model.gram + spec.regularization * np.eye(y.shape[1]) + (y.T * (confidence - 1.0)) @ y
    b = confidence @ y
    try:
        user = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        user = np.linalg.lstsq(a, b, rcond=None)[0]
    return user.astype(np.float32)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))


def _positive(value: object) -> bool:
    return _number(value) and float(value) > 0  # type: ignore[arg-type]


def _non_negative(value: object) -> bool:
    return _number(value) and float(value) >= 0  # type: ignore[arg-type]
