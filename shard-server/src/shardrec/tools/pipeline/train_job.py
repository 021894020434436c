"""`recctl train` as a function: load interactions, optionally hold out, train, write the directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.tools.pipeline.holdout import leave_last_n_out
from shardrec.tools.pipeline.sources import DataSource
from shardrec.tools.pipeline.training import AlsParams, TrainingResult, metric_of, train_als

HOLDOUT_RULE = "leave-last-n-out: each user's n most recent interactions by timestamp (ties: later row)"


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


def build_metadata(
    result: TrainingResult,
    params: AlsParams,
    source: dict[str, object],
    *,
    holdout: int,
    training_interactions: int,
    held_out: int,
) -> dict[str, Any]:
    import implicit

    embeddings = result.embeddings
    return {
        "format": "shardrec-embeddings/1",
        "metric": metric_of(embeddings),
        "trainer": {
            "library": "implicit",
            "library_version": implicit.__version__,
            "model": "AlternatingLeastSquares",
            "weighting": "bm25 of each user's ratings, times alpha",
            "params": asdict(params),
        },
        "source": source,
        "holdout": {"per_user": holdout, "held_out_interactions": held_out, "rule": HOLDOUT_RULE}
        if holdout
        else None,
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
    params: AlsParams,
    *,
    holdout: int = 0,
    download: bool = False,
    progress: bool = True,
) -> TrainSummary:
    """Train on all interactions, or on all but each user's last `holdout` (for evaluation)."""
    loaded = source.load(download=download, progress=progress)
    interactions = loaded.interactions
    held_out = 0
    if holdout:
        split = leave_last_n_out(interactions, holdout)
        interactions, held_out = split.train, len(split.test)
    result = train_als(interactions, params, progress=progress)
    metadata = build_metadata(
        result,
        params,
        loaded.source,
        holdout=holdout,
        training_interactions=len(interactions),
        held_out=held_out,
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
    )
