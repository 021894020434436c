"""What routers measure of a canary step, as sums: one type for the routers that report it
(`GET /canary`, serving/router/canary.py), a router pod's workers that add theirs up
(serving/router/workers.py), and the planner that judges it (planning/canary.py), so the report's
keys and the way reports add up have one home. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shardrec.api.v1alpha1 import CanaryAnalysisStatus


@dataclass(frozen=True)
class CanaryStats:
    """What the routers measured for candidate `layout` during step `step`, as sums (so the reports
    of several routers add up; `merged`). Latencies are each router's p99 over the step; the merge
    keeps the worst, which is conservative for the candidate and the active alike."""

    layout: str
    step: int
    requests: int = 0
    """Candidate answers (in a shadow step: mirrored answers received)."""
    errors: int = 0
    """Candidate requests that failed."""
    active_requests: int = 0
    active_errors: int = 0
    compared: int = 0
    overlap_sum: float = 0.0
    rank_correlation_sum: float = 0.0
    score_shift_sum: float = 0.0
    user_queries: int = 0
    unknown_users: int = 0
    """User queries the candidate did not know the user of (while the active did)."""
    shadow_dropped: int = 0
    candidate_p99_ms: float | None = None
    active_p99_ms: float | None = None

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> CanaryStats:
        """From a router's JSON report (`GET /canary`, see serving.router.canary)."""

        def number(key: str) -> float:
            value = report.get(key, 0)
            return float(value) if isinstance(value, int | float) else 0.0

        def count(key: str) -> int:
            return int(number(key))

        def optional(key: str) -> float | None:
            value = report.get(key)
            return float(value) if isinstance(value, int | float) else None

        return cls(
            layout=str(report.get("layout", "")),
            step=count("step"),
            requests=count("requests"),
            errors=count("errors"),
            active_requests=count("activeRequests"),
            active_errors=count("activeErrors"),
            compared=count("compared"),
            overlap_sum=number("overlapSum"),
            rank_correlation_sum=number("rankCorrelationSum"),
            score_shift_sum=number("scoreShiftSum"),
            user_queries=count("userQueries"),
            unknown_users=count("unknownUsers"),
            shadow_dropped=count("shadowDropped"),
            candidate_p99_ms=optional("candidateP99Ms"),
            active_p99_ms=optional("activeP99Ms"),
        )

    def to_report(self) -> dict[str, Any]:
        """The JSON a router answers at `GET /canary` (the keys `from_report` reads)."""
        return {
            "layout": self.layout,
            "step": self.step,
            "requests": self.requests,
            "errors": self.errors,
            "activeRequests": self.active_requests,
            "activeErrors": self.active_errors,
            "compared": self.compared,
            "overlapSum": self.overlap_sum,
            "rankCorrelationSum": self.rank_correlation_sum,
            "scoreShiftSum": self.score_shift_sum,
            "userQueries": self.user_queries,
            "unknownUsers": self.unknown_users,
            "shadowDropped": self.shadow_dropped,
            "candidateP99Ms": self.candidate_p99_ms,
            "activeP99Ms": self.active_p99_ms,
        }

    def status(self) -> CanaryAnalysisStatus:
        """The means and rates a human reads in `status.canary.analysis`."""

        def mean(total: float, n: int) -> float | None:
            return round(total / n, 4) if n else None

        return CanaryAnalysisStatus(
            requests=self.requests,
            compared=self.compared,
            overlap_at10=mean(self.overlap_sum, self.compared),
            rank_correlation=mean(self.rank_correlation_sum, self.compared),
            score_shift=mean(self.score_shift_sum, self.compared),
            candidate_p99_ms=self.candidate_p99_ms,
            active_p99_ms=self.active_p99_ms,
            candidate_error_rate=mean(float(self.errors), self.requests),
            active_error_rate=mean(float(self.active_errors), self.active_requests),
            unknown_user_share=mean(float(self.unknown_users), self.user_queries),
            shadow_dropped=self.shadow_dropped,
        )


def _worst(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def merged(reports: Iterable[CanaryStats], layout: str, step: int) -> CanaryStats | None:
    """The sum of the routers' reports about `layout` at `step` (others are ignored: a router that
    has not applied the current step yet reports the previous one); None when none matches."""
    matching = [r for r in reports if r.layout == layout and r.step == step]
    if not matching:
        return None
    total = CanaryStats(layout=layout, step=step)
    for r in matching:
        total = CanaryStats(
            layout=layout,
            step=step,
            requests=total.requests + r.requests,
            errors=total.errors + r.errors,
            active_requests=total.active_requests + r.active_requests,
            active_errors=total.active_errors + r.active_errors,
            compared=total.compared + r.compared,
            overlap_sum=total.overlap_sum + r.overlap_sum,
            rank_correlation_sum=total.rank_correlation_sum + r.rank_correlation_sum,
            score_shift_sum=total.score_shift_sum + r.score_shift_sum,
            user_queries=total.user_queries + r.user_queries,
            unknown_users=total.unknown_users + r.unknown_users,
            shadow_dropped=total.shadow_dropped + r.shadow_dropped,
            candidate_p99_ms=_worst(total.candidate_p99_ms, r.candidate_p99_ms),
            active_p99_ms=_worst(total.active_p99_ms, r.active_p99_ms),
        )
    return total
