"""`recctl train --tune`: a bounded random search over the trainers' hyper-parameters.

Nothing the final report is computed on is seen here. The caller passes the TRAINING
interactions (the test split already removed); this module carves a validation split out of
them (each user's `per_user` most recent training interactions, `leave_last_n_out` again), fits
every trial on what is left, and ranks trials by validation NDCG@k. The winner is then refitted
by the caller on all training interactions. Trials are drawn from `SPACE` with a seeded RNG, so
a search is repeatable; it stops after `trials` fits or `seconds` seconds, whichever is first
(the first fit always runs).

The stored user vectors are one more axis, scored without refitting: every ALS fit is judged
with its trained user vectors and with each user folded in from its last N fit interactions
(`training.recent_user_vectors`, N in `SearchBudget.recent`), each a trial of its own. The
fold-in reads only the fit interactions, so the validation items stay unseen.

Scoring is vectorised: one user-block x items matrix product, seen items masked, top-k by
argpartition, with the same tie-break as the serving path (higher score, then lower item row).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from shardrec.tools.pipeline.holdout import leave_last_n_out
from shardrec.tools.pipeline.interactions import Interactions
from shardrec.tools.pipeline.training import (
    Histories,
    Model,
    TrainParams,
    fit_factors,
    rating_matrix,
    recent_user_vectors,
    weight,
)

if TYPE_CHECKING:
    import scipy.sparse

K = 10  # the list length trials are judged at (NDCG@10)
VALIDATION_RULE = (
    "each user's n most recent TRAINING interactions (the test split removed first), by timestamp "
    "(ties: later row); trials fit on the rest"
)

# The search space: every trial draws one value per axis of its model family.
SPACE: dict[str, dict[str, tuple[Any, ...]]] = {
    "als": {
        "factors": (16, 32, 48, 64, 128),
        "iterations": (10, 15, 25),
        "regularization": (0.01, 0.05, 0.5, 5.0),
        "alpha": (0.5, 1.0, 2.0, 5.0),
        "weighting": ("bm25", "tfidf", "none"),
        "bm25_k1": (20.0, 100.0, 500.0),
        "bm25_b": (0.5, 0.8, 1.0),
    },
    "bpr": {
        "factors": (32, 64, 128),
        "iterations": (50, 100),
        "regularization": (0.001, 0.01, 0.05),
        "learning_rate": (0.005, 0.01, 0.05),
    },
}


@dataclass(frozen=True)
class SearchBudget:
    trials: int = 40
    seconds: float = 300.0
    families: tuple[str, ...] = ("als", "bpr")
    per_user: int = 3  # validation interactions per user (more than one: a steadier ranking)
    seed: int = 42  # of the search's RNG (each trial's model seed is TrainParams.seed)
    # ALS user vectors folded in from the last N fit interactions, scored beside the trained ones
    # for every ALS fit (no refit: a second or so per N on MovieLens). Empty: trained only.
    recent: tuple[int, ...] = (5, 10, 20)

    def __post_init__(self) -> None:
        bad = [f for f in self.families if f not in SPACE]
        if bad or not self.families:
            raise ValueError(f"unknown model families {bad} (expected some of {sorted(SPACE)})")
        if self.trials < 1 or self.seconds <= 0 or self.per_user < 1 or any(n < 1 for n in self.recent):
            raise ValueError(f"invalid search budget {asdict(self)}")


@dataclass(frozen=True)
class Trial:
    number: int
    params: TrainParams
    ndcg: float
    hit_rate: float
    seconds: float
    fit: int = 0  # the fit it scores (the user-vector variants of one fit share it)

    def record(self) -> dict[str, Any]:
        return {
            "trial": self.number,
            "fit": self.fit,
            "params": self.params.relevant(),
            "ndcg": round(self.ndcg, 6),
            "hit_rate": round(self.hit_rate, 6),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class SearchResult:
    best: Trial
    trials: list[Trial]
    fits: int
    budget: SearchBudget
    validation_users: int
    validation_interactions: int
    fit_interactions: int
    seconds: float
    stopped_by: str  # "trials" or "seconds"

    def record(self) -> dict[str, Any]:
        """What metadata.json keeps of the search (`tuning`)."""
        return {
            "objective": f"validation NDCG@{K}",
            "validation": {
                "per_user": self.budget.per_user,
                "rule": VALIDATION_RULE,
                "users": self.validation_users,
                "held_out_interactions": self.validation_interactions,
                "fit_interactions": self.fit_interactions,
            },
            "search": {
                "method": "random",
                "seed": self.budget.seed,
                "families": list(self.budget.families),
                "user_vectors": ["trained"] + [f"recent {n}" for n in self.budget.recent],
                "budget_trials": self.budget.trials,
                "fits": self.fits,
                "budget_seconds": self.budget.seconds,
                "stopped_by": self.stopped_by,
                "seconds": round(self.seconds, 3),
            },
            "best": self.best.record(),
            "trials": [trial.record() for trial in self.trials],
        }


class ValidationSet:
    """Fit matrix + held-out items of a split, with vectorised top-k metrics for any factors."""

    def __init__(self, fit: Interactions, held_out: Interactions) -> None:
        import scipy.sparse

        self.raw, self.user_ids, self.item_ids = rating_matrix(fit)
        user_row = {user: row for row, user in enumerate(self.user_ids)}
        item_col = {item: col for col, item in enumerate(self.item_ids)}
        relevant: dict[int, list[int]] = {}
        counts: dict[int, int] = {}
        for user, item in zip(held_out.users.tolist(), held_out.items.tolist(), strict=True):
            row = user_row.get(user)
            if row is None:
                continue  # a user with no fit interactions cannot be scored
            counts[row] = counts.get(row, 0) + 1
            col = item_col.get(item)
            if col is not None:  # an item never fitted is a miss for every trial
                relevant.setdefault(row, []).append(col)
        self.rows = np.array(sorted(counts), dtype=np.intp)
        self.relevant_counts = np.array([counts[row] for row in self.rows.tolist()], dtype=np.int64)
        data_rows = [i for i, row in enumerate(self.rows.tolist()) for _ in relevant.get(row, [])]
        data_cols = [col for row in self.rows.tolist() for col in relevant.get(row, [])]
        self.relevant: scipy.sparse.csr_matrix = scipy.sparse.csr_matrix(
            (np.ones(len(data_rows), dtype=bool), (data_rows, data_cols)),
            shape=(len(self.rows), len(self.item_ids)),
        )
        self.held_out_interactions = int(self.relevant_counts.sum())

    def metrics(
        self,
        users: npt.NDArray[np.float32],
        items: npt.NDArray[np.float32],
        k: int,
        *,
        block: int = 1024,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per validated user: (hit@k, NDCG@k) of the top-k by inner product, fit items excluded."""
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        ideal = np.cumsum(discounts)[np.minimum(self.relevant_counts, k) - 1]
        hits = np.empty(len(self.rows))
        ndcg = np.empty(len(self.rows))
        for start in range(0, len(self.rows), block):
            rows = self.rows[start : start + block]
            scores = users[rows] @ items.T
            seen = self.raw[rows]
            scores[seen.nonzero()] = -np.inf
            top = top_k_rows(scores, k)
            gains = np.asarray(
                self.relevant[start : start + len(rows)].toarray()[np.arange(len(rows))[:, None], top]
            )
            gains &= np.isfinite(np.take_along_axis(scores, top, axis=1))
            hits[start : start + len(rows)] = gains.any(axis=1)
            dcg = (gains * discounts[: top.shape[1]]).sum(axis=1)
            ndcg[start : start + len(rows)] = dcg / ideal[start : start + len(rows)]
        return hits, ndcg


def top_k_rows(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
    """Per row, the column indices of the k highest scores, best first; ties to the lower column."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    out = np.empty((scores.shape[0], k), dtype=np.intp)
    for row in range(scores.shape[0]):
        # Every tie of the kth score competes, so the lower column wins as in top_k_indices.
        candidates = np.flatnonzero(scores[row] >= kth[row])
        order = np.lexsort((candidates, -scores[row, candidates]))
        out[row] = candidates[order[:k]]
    return out


def validation_split(training: Interactions, per_user: int) -> tuple[Interactions, Interactions]:
    """(fit, validation): each user's `per_user` most recent training interactions held out."""
    split = leave_last_n_out(training, per_user)
    return split.train, split.test


def draw(family: str, rng: np.random.Generator, base: TrainParams) -> TrainParams:
    """One random point of `SPACE[family]`, other parameters from `base` (trained user vectors:
    the fold-in variants are scored from the same fit)."""
    values = {name: choices[int(rng.integers(len(choices)))] for name, choices in SPACE[family].items()}
    return replace(base, model=cast("Model", family), user_vectors="trained", **values)


def user_vector_variants(params: TrainParams, recent: Sequence[int]) -> list[TrainParams]:
    """`params` with each user-vector choice the search scores from one fit (ALS: trained and
    every N of `recent`, and `params`' own N when it asks for recent vectors; BPR: trained)."""
    trained = replace(params, user_vectors="trained")
    if params.model != "als":
        return [trained]
    sizes = sorted(set(recent) | ({params.recent_n} if params.user_vectors == "recent" else set()))
    return [trained] + [replace(params, user_vectors="recent", recent_n=n) for n in sizes]


def _score_fit(
    params: TrainParams,
    users: npt.NDArray[np.float32],
    items: npt.NDArray[np.float32],
    validation: ValidationSet,
    histories: Histories,
    *,
    recent: Sequence[int],
    fit: int,
    before: int,
    started: float,
) -> list[Trial]:
    """One trial per user-vector variant of one fit (numbered after `before` trials); a fit with
    non-finite factors scores 0. `started`: when the fit began (each trial's seconds include it)."""
    fit_seconds = time.perf_counter() - started
    finite = bool(np.isfinite(users).all() and np.isfinite(items).all())
    trials: list[Trial] = []
    for variant in user_vector_variants(params, recent):
        variant_started = time.perf_counter()
        ndcg = hit = 0.0
        if finite:
            vectors = users
            if variant.user_vectors == "recent":
                vectors = recent_user_vectors(histories, items, variant, users, variant.recent_n)
            hits, ndcgs = validation.metrics(vectors, items, K)
            ndcg, hit = float(ndcgs.mean()), float(hits.mean())
        seconds = fit_seconds + time.perf_counter() - variant_started
        trials.append(Trial(before + len(trials) + 1, variant, ndcg, hit, seconds, fit=fit))
    return trials


def search(
    training: Interactions,
    budget: SearchBudget = SearchBudget(),
    *,
    base: TrainParams | None = None,
    first: Sequence[TrainParams] = (),
    report: Callable[[str], None] | None = None,
) -> SearchResult:
    """Random search on a validation split of `training`; `first` are tried before random draws
    (e.g. the current defaults, so the search never returns worse than them on validation)."""
    base = base if base is not None else TrainParams()
    started = time.perf_counter()
    fit, held_out = validation_split(training, budget.per_user)
    validation = ValidationSet(fit, held_out)
    if len(validation.rows) == 0:
        raise ValueError(f"no user has more than {budget.per_user} training interactions to validate on")
    rng = np.random.default_rng(budget.seed)
    weighted: dict[tuple[str, float, float, float], scipy.sparse.csr_matrix] = {}
    trials: list[Trial] = []
    seen: set[str] = set()
    stopped_by = "trials"
    queue = list(first)
    attempts = 0
    fits = 0
    histories: Histories | None = None
    while fits < budget.trials:
        if trials and time.perf_counter() - started >= budget.seconds:
            stopped_by = "seconds"
            break
        if queue:
            params = queue.pop(0)
        else:
            family = budget.families[int(rng.integers(len(budget.families)))]
            params = draw(family, rng, base)
        attempts += 1
        key = replace(params, user_vectors="trained").describe()  # one fit serves every variant
        if key in seen:
            if attempts > 20 * budget.trials:
                break  # the space is exhausted
            continue
        seen.add(key)
        trial_started = time.perf_counter()
        cache_key: tuple[str, float, float, float] = (
            params.weighting,
            params.bm25_k1,
            params.bm25_b,
            params.alpha,
        )
        if params.model == "bpr":
            cache_key = ("bpr", 0.0, 0.0, 0.0)
        if cache_key not in weighted:
            weighted[cache_key] = weight(validation.raw, params)
        users, items = fit_factors(weighted[cache_key], params)
        fits += 1
        histories = histories or Histories.of(fit, validation.user_ids, validation.item_ids)
        scored = _score_fit(
            params,
            users,
            items,
            validation,
            histories,
            recent=budget.recent,
            fit=fits,
            before=len(trials),
            started=trial_started,
        )
        for trial in scored:
            trials.append(trial)
            if report is not None:
                best = max(trials, key=lambda t: t.ndcg)
                report(
                    f"trial {trial.number} (fit {fits}/{budget.trials}) "
                    f"[{time.perf_counter() - started:5.1f}s] {trial.params.describe()}: "
                    f"NDCG@{K} {trial.ndcg:.4f} hit@{K} {trial.hit_rate:.4f} "
                    f"(best {best.ndcg:.4f}, trial {best.number})"
                )
    best = max(trials, key=lambda t: (t.ndcg, -t.number))
    return SearchResult(
        best=best,
        trials=trials,
        fits=fits,
        budget=budget,
        validation_users=len(validation.rows),
        validation_interactions=validation.held_out_interactions,
        fit_interactions=len(fit),
        seconds=time.perf_counter() - started,
        stopped_by=stopped_by,
    )
