"""Offline evaluation: run recommenders for every held-out user, average the metrics, make a table.

The first candidate is the reference (exact top-k); candidates flagged `approximate` also get
recall@k against it, user by user, with the same exclusions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from shardrec.tools.pipeline.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k
from shardrec.tools.pipeline.recommenders import Recommender


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


@dataclass(frozen=True)
class EvaluationReport:
    k: int
    holdout: int
    users: int
    held_out: int
    results: list[MethodResult]
    notes: list[str]

    def result(self, name: str) -> MethodResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def markdown(self) -> str:
        k = self.k
        lines = [
            f"| recommender | users | hit-rate@{k} | NDCG@{k} | ANN recall@{k} vs exact | seconds |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for result in self.results:
            if result.is_reference:
                recall = "reference"
            elif result.recall_vs_exact is None:
                recall = "n/a"
            else:
                recall = f"{result.recall_vs_exact:.4f}"
            lines.append(
                f"| {result.name} | {result.users} | {result.hit_rate:.4f} | {result.ndcg:.4f} "
                f"| {recall} | {result.seconds:.2f} |"
            )
        lines.append("")
        lines.append(
            f"Leave-last-{self.holdout}-out: {self.held_out} held-out interactions of {self.users} users; "
            f"each user's training interactions are excluded from its top-{k}."
        )
        lines.extend(self.notes)
        return "\n".join(lines) + "\n"


def evaluate(
    candidates: Sequence[Candidate],
    relevant: Mapping[str, set[str]],
    exclude: Mapping[str, set[str]],
    *,
    k: int = 10,
    holdout: int,
    notes: Sequence[str] = (),
    progress: bool = True,
) -> EvaluationReport:
    """Score every candidate on every user of `relevant`; candidates[0] is the exact reference."""
    if not candidates:
        raise ValueError("no recommenders to evaluate")
    if not relevant:
        raise ValueError("no held-out interactions to evaluate on")
    users = sorted(relevant)
    reference: dict[str, list[str]] = {}
    results: list[MethodResult] = []
    for position, candidate in enumerate(candidates):
        started = time.perf_counter()
        hits = ndcg = recall = 0.0
        for user in tqdm(users, desc=f"evaluate {candidate.name}", unit="user", disable=not progress):
            ranked = candidate.recommender(user, k, exclude.get(user, set()))
            hits += hit_rate_at_k(ranked, relevant[user], k)
            ndcg += ndcg_at_k(ranked, relevant[user], k)
            if position == 0:
                reference[user] = ranked
            elif candidate.approximate:
                recall += recall_at_k(ranked, reference[user], k)
        count = len(users)
        results.append(
            MethodResult(
                name=candidate.name,
                users=count,
                hit_rate=hits / count,
                ndcg=ndcg / count,
                recall_vs_exact=recall / count if candidate.approximate and position > 0 else None,
                is_reference=position == 0,
                seconds=time.perf_counter() - started,
            )
        )
    held_out = sum(len(items) for items in relevant.values())
    return EvaluationReport(
        k=k, holdout=holdout, users=len(users), held_out=held_out, results=results, notes=list(notes)
    )
