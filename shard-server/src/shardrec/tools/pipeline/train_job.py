"""`recctl train` as a function: load interactions, optionally hold out, optionally tune, train,
measure, write the directory.

metadata.json records how the embeddings were made and how good they are: `holdout` (the test
split), `tuning` (the validation split carved from the training interactions, the search, every
trial), and `quality` (the offline metrics the index build copies into the layout manifest and a
`spec.index.qualityGate` checks): on the test split when there is one, else the tuned recipe's
validation metrics, else absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.tools.pipeline.evaluation import BOOTSTRAP_SEED, RESAMPLES
from shardrec.tools.pipeline.holdout import leave_last_n_out
from shardrec.tools.pipeline.interactions import Interactions
from shardrec.tools.pipeline.metrics import bootstrap_indices, bootstrap_interval
from shardrec.tools.pipeline.sources import DataSource
from shardrec.tools.pipeline.training import (
    MODEL_CLASSES,
    TrainingResult,
    TrainParams,
    metric_of,
    train_model,
)
from shardrec.tools.pipeline.tuning import SearchBudget, SearchResult, ValidationSet, search

HOLDOUT_RULE = "leave-last-n-out: each user's n most recent interactions by timestamp (ties: later row)"
QUALITY_K = 10
WEIGHTINGS = {
    "bm25": "bm25 of each user's ratings, times alpha",
    "tfidf": "tf-idf of each user's ratings, times alpha",
    "none": "the raw ratings, times alpha",
}


@dataclass(frozen=True)
class TrainSummary:
    out: Path
    users: int
    items: int
    dimension: int
    training_interactions: int
    held_out: int
    training_seconds: float
    metadata: dict[str, Any]
    params: TrainParams
    tuning: SearchResult | None = None


def measure(
    result: TrainingResult, train: Interactions, test: Interactions, *, per_user: int
) -> dict[str, Any]:
    """Exact top-10 hit-rate and NDCG of the trained model on the test split, with bootstrap 95%
    intervals over users (the `quality` block of metadata.json)."""
    embeddings = result.embeddings
    assert embeddings.users is not None
    validation = ValidationSet(train, test)
    hits, ndcg = validation.metrics(embeddings.users, embeddings.items, QUALITY_K)
    worlds = bootstrap_indices(len(hits), RESAMPLES, BOOTSTRAP_SEED)
    return _quality(hits, ndcg, worlds, split="test", per_user=per_user)


def _quality(
    hits: np.ndarray[Any, Any],
    ndcg: np.ndarray[Any, Any],
    worlds: np.ndarray[Any, Any],
    *,
    split: str,
    per_user: int,
) -> dict[str, Any]:
    return {
        "split": split,
        "per_user": per_user,
        "k": QUALITY_K,
        "users": len(hits),
        "hit_rate_at_10": round(float(hits.mean()), 6),
        "hit_rate_at_10_ci95": [round(x, 6) for x in bootstrap_interval(hits, worlds)],
        "ndcg_at_10": round(float(ndcg.mean()), 6),
        "ndcg_at_10_ci95": [round(x, 6) for x in bootstrap_interval(ndcg, worlds)],
    }


def _user_vectors(params: TrainParams) -> str:
    if params.model == "als" and params.user_vectors == "recent":
        return (
            f"folded in from each user's {params.recent_n} most recent training interactions "
            "(closed-form ALS user step with the item factors fixed, ratings as weights; "
            "serving/index/foldin.py)"
        )
    return "as trained"


def build_metadata(
    result: TrainingResult,
    params: TrainParams,
    source: dict[str, object],
    *,
    holdout: int,
    training_interactions: int,
    held_out: int,
    tuning: SearchResult | None = None,
    quality: dict[str, Any] | None = None,
    mean_rating: float | None = None,
) -> dict[str, Any]:
    import implicit

    embeddings = result.embeddings
    return {
        "format": "shardrec-embeddings/1",
        "metric": metric_of(embeddings),
        "trainer": {
            "library": "implicit",
            "library_version": implicit.__version__,
            "model": MODEL_CLASSES[params.model],
            "weighting": "none (BPR samples pairs)"
            if params.model == "bpr"
            else WEIGHTINGS[params.weighting],
            "params": params.relevant() | {"threads": params.threads},
            "user_vectors": _user_vectors(params),
        },
        "source": source,
        # The fold-in of recent items (serving/index/foldin.py) weighs an item sent without a
        # weight like an average training interaction.
        "interactions": {"mean_rating": round(mean_rating, 6)} if mean_rating is not None else None,
        "holdout": {"per_user": holdout, "held_out_interactions": held_out, "rule": HOLDOUT_RULE}
        if holdout
        else None,
        "tuning": tuning.record() if tuning is not None else None,
        "quality": quality,
        "counts": {
            "users": len(embeddings.user_ids or ()),
            "items": len(embeddings.item_ids),
            "dimension": int(embeddings.items.shape[1]),
            "training_interactions": training_interactions,
        },
        "training_seconds": round(result.seconds, 3),
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def train_embeddings(
    source: DataSource,
    out: Path,
    params: TrainParams,
    *,
    holdout: int = 0,
    download: bool = False,
    progress: bool = True,
    tune: SearchBudget | None = None,
    report: Callable[[str], None] | None = None,
) -> TrainSummary:
    """Train on all interactions, or on all but each user's last `holdout` (for evaluation).
    With `tune`, search first on a validation split of those training interactions and train the
    best trial's parameters (`params` is the search's first trial and supplies seed and threads)."""
    loaded = source.load(download=download, progress=progress)
    interactions = loaded.interactions
    held_out = 0
    test = None
    if holdout:
        split = leave_last_n_out(interactions, holdout)
        interactions, held_out, test = split.train, len(split.test), split.test
    tuning = None
    if tune is not None:
        tuning = search(interactions, tune, base=params, first=[params], report=report)
        params = replace(tuning.best.params, seed=params.seed, threads=params.threads)
    result = train_model(interactions, params, progress=progress)
    quality = None
    if test is not None:
        quality = measure(result, interactions, test, per_user=holdout)
    elif tuning is not None:
        best = tuning.best
        quality = {
            "split": "validation",
            "per_user": tune.per_user if tune is not None else 0,
            "k": QUALITY_K,
            "users": tuning.validation_users,
            "hit_rate_at_10": round(best.hit_rate, 6),
            "ndcg_at_10": round(best.ndcg, 6),
        }
    metadata = build_metadata(
        result,
        params,
        loaded.source,
        holdout=holdout,
        training_interactions=len(interactions),
        held_out=held_out,
        tuning=tuning,
        quality=quality,
        mean_rating=float(interactions.ratings.mean()),
    )
    trained = result.embeddings
    write_embeddings_dir(
        out,
        trained.items,
        trained.item_ids,
        users=trained.users,
        user_ids=trained.user_ids,
        seen=trained.seen_pairs(),
        metadata=metadata,
    )
    return TrainSummary(
        out=out,
        users=len(result.embeddings.user_ids or ()),
        items=len(result.embeddings.item_ids),
        dimension=int(result.embeddings.items.shape[1]),
        training_interactions=len(interactions),
        held_out=held_out,
        training_seconds=result.seconds,
        metadata=metadata,
        params=params,
        tuning=tuning,
    )
