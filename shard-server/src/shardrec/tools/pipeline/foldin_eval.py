"""How good is a user folded in from a few clicks? Leave-last-one-out on the interactions, with the
users split into folds: for each fold, ALS is trained *without* that fold's users (so they are
truly unknown to the item factors, as a cold-start user is to a layout), and each of them is
folded in (serving/index/foldin.py, the router's code) from its last N training interactions by
time, weighted by their ratings. Compared with the user's own vector from a model trained with
it (the full model) and with popularity, by hit-rate@10 on the held-out last interaction.

Every row excludes the user's training interactions from its top-10 (as docs/evaluation.md's
table does; a known user's seen items at the router) except the one that says it excludes only
the clicks it folded in (what an anonymous request with recent_items excludes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from shardrec.serving.index.foldin import FoldInModel, FoldInSpec, fold_in, item_gram
from shardrec.tools.pipeline.evaluation import BOOTSTRAP_SEED, RESAMPLES
from shardrec.tools.pipeline.holdout import leave_last_n_out
from shardrec.tools.pipeline.interactions import Interactions
from shardrec.tools.pipeline.metrics import bootstrap_indices, bootstrap_interval, hit_rate_at_k
from shardrec.tools.pipeline.recommenders import PopularityRecommender, top_k_indices
from shardrec.tools.pipeline.training import TrainParams, train_model

K = 10


@dataclass(frozen=True)
class Row:
    name: str
    hits: npt.NDArray[np.float64]  # per user, in the report's user order
    interval: tuple[float, float]

    @property
    def hit_rate(self) -> float:
        return float(self.hits.mean())


@dataclass(frozen=True)
class FoldInReport:
    users: int
    folds: int
    params: TrainParams
    rows: list[Row]
    seconds: float
    fold_in_ms: float  # mean time of one fold-in from the last N clicks (one BLAS thread), ms

    def markdown(self) -> str:
        lines = [
            f"| user vector | users | hit-rate@{K} | 95% CI |",
            "|---|--:|--:|--:|",
        ]
        for row in self.rows:
            low, high = row.interval
            lines.append(f"| {row.name} | {self.users} | {row.hit_rate:.4f} | [{low:.4f}, {high:.4f}] |")
        lines.append("")
        lines.append(
            f"Leave-last-1-out, {self.users} users in {self.folds} folds: each fold's users are left out "
            f"of the ALS training that folds them in ({self.params.describe()}). 95% CI: percentile "
            f"bootstrap over users ({RESAMPLES} resamples, seed {BOOTSTRAP_SEED}, paired). A fold-in from "
            f"the last N clicks took {self.fold_in_ms:.2f} ms on average (one BLAS thread); the whole "
            f"evaluation {self.seconds:.0f} s."
        )
        return "\n".join(lines) + "\n"


def _full_and_popular(
    train: Interactions,
    params: TrainParams,
    users: list[str],
    seen: dict[str, set[str]],
    relevant: dict[str, set[str]],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per user: hits of its own vector in a model trained with it, and of popularity."""
    full = train_model(train, params, progress=False).embeddings
    assert full.users is not None and full.user_ids is not None
    space = _Space.of(full.items, full.item_ids)
    user_row = {user: row for row, user in enumerate(full.user_ids)}
    popularity = PopularityRecommender(train.items.tolist())
    full_hits = np.zeros(len(users))
    popular_hits = np.zeros(len(users))
    for row, user in enumerate(users):
        full_hits[row] = space.hit(full.users[user_row[user]], seen[user], relevant[user])
        popular_hits[row] = hit_rate_at_k(popularity(user, K, seen[user]), relevant[user], K)
    return full_hits, popular_hits


def _histories(train: Interactions) -> dict[str, tuple[list[str], npt.NDArray[np.float64]]]:
    """user -> (items, ratings), oldest first (timestamp, then file order, as the holdout)."""
    order = np.lexsort((np.arange(len(train)), train.timestamps))
    items: dict[str, list[str]] = {}
    ratings: dict[str, list[float]] = {}
    for index in order.tolist():
        user = str(train.users[index])
        items.setdefault(user, []).append(str(train.items[index]))
        ratings.setdefault(user, []).append(float(train.ratings[index]))
    return {user: (items[user], np.array(ratings[user], dtype=np.float64)) for user in items}


@dataclass(frozen=True)
class _Variant:
    name: str
    last: int | None  # None: every training interaction
    weighted: bool = True
    exclude_all: bool = True


def _variants(recent: Sequence[int]) -> list[_Variant]:
    smallest = min(recent)
    variants = [_Variant("folded in from every training interaction", None)]
    variants += [_Variant(f"folded in from the last {n} clicks (ratings as weights)", n) for n in recent]
    variants.append(_Variant(f"folded in from the last {smallest} clicks, unweighted", smallest, False))
    variants.append(
        _Variant(f"folded in from the last {smallest} clicks, excluding only those", smallest, True, False)
    )
    return variants


def evaluate_fold_in(
    interactions: Interactions,
    params: TrainParams,
    *,
    recent: Sequence[int] = (5, 10),
    folds: int = 5,
    seed: int = 0,
    report: Callable[[str], None] | None = None,
) -> FoldInReport:
    started = time.perf_counter()
    say = report or (lambda _: None)
    # The full-model row is the user's trained vector, whatever the recipe stores.
    params = replace(params, model="als", user_vectors="trained")
    split = leave_last_n_out(interactions, 1)
    train, relevant = split.train, split.relevant_by_user()
    users = sorted(relevant)
    position = {user: row for row, user in enumerate(users)}
    history = _histories(train)
    seen = {user: set(items) for user, (items, _) in history.items()}

    say("training the full model")
    full_hits, popular_hits = _full_and_popular(train, params, users, seen, relevant)

    variants = _variants(recent)
    hits = {variant.name: np.zeros(len(users)) for variant in variants}
    assignment = np.random.default_rng(seed).permutation(len(users)) % folds
    solve_seconds, solves = 0.0, 0
    import threadpoolctl  # type: ignore[import-untyped]

    # One BLAS thread, as the solve of a few clicks is fastest (and as training runs).
    with threadpoolctl.threadpool_limits(1, "blas"):
        for fold in range(folds):
            members = [user for user, group in zip(users, assignment.tolist(), strict=True) if group == fold]
            say(f"fold {fold + 1}/{folds}: training without its {len(members)} users")
            keep = ~np.isin(train.users, members)
            rest = train.take(keep)
            trained = train_model(rest, params, progress=False).embeddings
            space = _Space.of(trained.items, trained.item_ids)
            items, row_of = space.items, space.row_of
            default = float(rest.ratings.mean())
            model = FoldInModel(
                FoldInSpec("als", "als", params.regularization, params.alpha, default), item_gram(items, "ip")
            )
            for user in members:
                clicked, ratings = history[user]
                for variant in variants:
                    chosen = slice(None) if variant.last is None else slice(-variant.last, None)
                    picked = [
                        (item, weight)
                        for item, weight in zip(clicked[chosen], ratings[chosen], strict=True)
                        if item in row_of
                    ]
                    if not picked:
                        continue  # a miss: nothing of the clicks is in the catalogue
                    vectors = items[[row_of[item] for item, _ in picked]]
                    weights = np.array([w if variant.weighted else default for _, w in picked])
                    began = time.perf_counter()
                    vector = fold_in(model, vectors, weights)
                    if variant.last is not None:  # what the router solves: a few clicks
                        solve_seconds += time.perf_counter() - began
                        solves += 1
                    exclude = seen[user] if variant.exclude_all else {item for item, _ in picked}
                    hits[variant.name][position[user]] = space.hit(vector, exclude, relevant[user])

    worlds = bootstrap_indices(len(users), RESAMPLES, BOOTSTRAP_SEED)
    rows = [
        Row(
            "the user's own vector (trained with the user: full model)",
            full_hits,
            bootstrap_interval(full_hits, worlds),
        )
    ]
    rows += [Row(name, values, bootstrap_interval(values, worlds)) for name, values in hits.items()]
    rows.append(Row("popularity baseline", popular_hits, bootstrap_interval(popular_hits, worlds)))
    return FoldInReport(
        users=len(users),
        folds=folds,
        params=params,
        rows=rows,
        seconds=time.perf_counter() - started,
        fold_in_ms=1000 * solve_seconds / max(solves, 1),
    )


@dataclass(frozen=True)
class _Space:
    """Item vectors of one trained model, with their ids."""

    items: npt.NDArray[np.float32]
    item_ids: list[str]
    row_of: dict[str, int]

    @classmethod
    def of(cls, items: npt.NDArray[np.float32], item_ids: list[str]) -> _Space:
        return cls(items, item_ids, {item: row for row, item in enumerate(item_ids)})

    def hit(self, vector: npt.NDArray[np.float32], exclude: set[str], relevant: set[str]) -> float:
        scores = np.asarray(self.items @ vector, dtype=np.float32)
        scores[[self.row_of[item] for item in exclude if item in self.row_of]] = -np.inf
        ranked = [self.item_ids[index] for index in top_k_indices(scores, K)]
        return hit_rate_at_k(ranked, relevant, K)
