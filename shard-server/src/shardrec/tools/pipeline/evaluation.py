"""Offline evaluation: run recommenders for every held-out user, average the metrics, make a table.

The first candidate is the reference (exact top-k); candidates flagged `approximate` also get
recall@k against it, user by user, with the same exclusions. Every mean comes with a bootstrap
95% interval over users; the bootstrap worlds are shared by all candidates (paired), so a ratio
between two candidates has an interval too. Coverage and novelty describe the lists themselves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from shardrec.tools.pipeline.metrics import (
    bootstrap_indices,
    bootstrap_interval,
    bootstrap_ratio_interval,
    coverage,
    hit_rate_at_k,
    ndcg_at_k,
    novelty,
    recall_at_k,
)
from shardrec.tools.pipeline.recommenders import Recommender

RESAMPLES = 1000
BOOTSTRAP_SEED = 20261205


@dataclass(frozen=True)
class Catalogue:
    """What coverage and novelty are measured against: the training items and their reach."""

    items: int  # catalogue size (items with an embedding / seen in training)
    users_with_item: Mapping[str, int]  # item -> training users who interacted with it
    users: int  # training users


@dataclass(frozen=True)
class Candidate:
    name: str
    recommender: Recommender
    approximate: bool = False


@dataclass(frozen=True)
class MethodResult:
    name: str
    users: int
    hit_rate: float
    ndcg: float
    recall_vs_exact: float | None  # only for approximate candidates
    is_reference: bool
    seconds: float
    hit_rate_ci: tuple[float, float] = (float("nan"), float("nan"))
    ndcg_ci: tuple[float, float] = (float("nan"), float("nan"))
    coverage: float | None = None
    novelty: float | None = None
    per_user_hits: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.empty(0), repr=False, compare=False
    )
    per_user_ndcg: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.empty(0), repr=False, compare=False
    )


@dataclass(frozen=True)
class EvaluationReport:
    k: int
    holdout: int
    users: int
    held_out: int
    results: list[MethodResult]
    notes: list[str]
    bootstrap: npt.NDArray[np.intp] = field(default_factory=lambda: np.empty((0, 0), np.intp), repr=False)

    def result(self, name: str) -> MethodResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def ratio(self, numerator: str, denominator: str, metric: str = "hit_rate") -> tuple[float, float, float]:
        """(ratio of the means, 95% low, 95% high) of `metric` (hit_rate or ndcg), paired bootstrap."""
        top, bottom = self.result(numerator), self.result(denominator)
        a = top.per_user_hits if metric == "hit_rate" else top.per_user_ndcg
        b = bottom.per_user_hits if metric == "hit_rate" else bottom.per_user_ndcg
        mean = float(a.mean() / b.mean()) if b.mean() > 0 else float("nan")
        low, high = bootstrap_ratio_interval(a, b, self.bootstrap)
        return mean, low, high

    def markdown(self) -> str:
        k = self.k
        lines = [
            f"| recommender | users | hit-rate@{k} | 95% CI | NDCG@{k} | 95% CI | coverage | novelty "
            f"| ANN recall@{k} vs exact | seconds |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for result in self.results:
            if result.is_reference:
                recall = "reference"
            elif result.recall_vs_exact is None:
                recall = "n/a"
            else:
                recall = f"{result.recall_vs_exact:.4f}"
            cover = "n/a" if result.coverage is None else f"{result.coverage:.3f}"
            novel = "n/a" if result.novelty is None else f"{result.novelty:.2f}"
            lines.append(
                f"| {result.name} | {result.users} | {result.hit_rate:.4f} | {_ci(result.hit_rate_ci)} "
                f"| {result.ndcg:.4f} | {_ci(result.ndcg_ci)} | {cover} | {novel} | {recall} "
                f"| {result.seconds:.2f} |"
            )
        lines.append("")
        lines.append(
            f"Leave-last-{self.holdout}-out: {self.held_out} held-out interactions of {self.users} users; "
            f"each user's training interactions are excluded from its top-{k}."
        )
        lines.append(
            f"95% CI: percentile bootstrap over users ({self.bootstrap.shape[0]} resamples, seed "
            f"{BOOTSTRAP_SEED}, the same resamples for every row). Coverage: share of the catalogue in "
            "at least one top-{k}; novelty: mean -log2(share of training users who had the item) over "
            "recommended items.".replace("{k}", str(k))
        )
        lines.extend(self.notes)
        return "\n".join(lines) + "\n"


def _ci(interval: tuple[float, float]) -> str:
    low, high = interval
    return "n/a" if np.isnan(low) else f"[{low:.4f}, {high:.4f}]"


def evaluate(
    candidates: Sequence[Candidate],
    relevant: Mapping[str, set[str]],
    exclude: Mapping[str, set[str]],
    *,
    k: int = 10,
    holdout: int,
    notes: Sequence[str] = (),
    progress: bool = True,
    catalogue: Catalogue | None = None,
    resamples: int = RESAMPLES,
) -> EvaluationReport:
    """Score every candidate on every user of `relevant`; candidates[0] is the exact reference."""
    if not candidates:
        raise ValueError("no recommenders to evaluate")
    if not relevant:
        raise ValueError("no held-out interactions to evaluate on")
    users = sorted(relevant)
    worlds = bootstrap_indices(len(users), resamples, BOOTSTRAP_SEED)
    reference: dict[str, list[str]] = {}
    results: list[MethodResult] = []
    for position, candidate in enumerate(candidates):
        started = time.perf_counter()
        hits = np.zeros(len(users))
        ndcg = np.zeros(len(users))
        recall = 0.0
        answers: list[list[str]] = []
        for row, user in enumerate(
            tqdm(users, desc=f"evaluate {candidate.name}", unit="user", disable=not progress)
        ):
            ranked = candidate.recommender(user, k, exclude.get(user, set()))
            answers.append(ranked[:k])
            hits[row] = hit_rate_at_k(ranked, relevant[user], k)
            ndcg[row] = ndcg_at_k(ranked, relevant[user], k)
            if position == 0:
                reference[user] = ranked
            elif candidate.approximate:
                recall += recall_at_k(ranked, reference[user], k)
        seconds = time.perf_counter() - started
        count = len(users)
        results.append(
            MethodResult(
                name=candidate.name,
                users=count,
                hit_rate=float(hits.mean()),
                ndcg=float(ndcg.mean()),
                recall_vs_exact=recall / count if candidate.approximate and position > 0 else None,
                is_reference=position == 0,
                seconds=seconds,
                hit_rate_ci=bootstrap_interval(hits, worlds),
                ndcg_ci=bootstrap_interval(ndcg, worlds),
                coverage=coverage(answers, catalogue.items) if catalogue is not None else None,
                novelty=novelty(answers, catalogue.users_with_item, catalogue.users)
                if catalogue is not None
                else None,
                per_user_hits=hits,
                per_user_ndcg=ndcg,
            )
        )
    held_out = sum(len(items) for items in relevant.values())
    return EvaluationReport(
        k=k,
        holdout=holdout,
        users=len(users),
        held_out=held_out,
        results=results,
        notes=list(notes),
        bootstrap=worlds,
    )
