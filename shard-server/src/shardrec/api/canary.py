"""What routers measure of a canary step, as sums: one type for the routers that report it
(`GET /canary`, serving/router/canary.py), a router pod's workers that add theirs up
(serving/router/workers.py), and the planner that judges it (planning/canary.py), so the report's
keys and the way reports add up have one home. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import reduce
from typing import Any, Final

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
        """From a router's JSON report (`GET /canary`, see serving.router.canary); a missing or
        malformed sum reads as 0, a missing or malformed latency as unknown."""

        def number(key: str) -> float:
            value = report.get(key, 0)
            return float(value) if isinstance(value, int | float) else 0.0

        def optional(key: str) -> float | None:
            value = report.get(key)
            return float(value) if isinstance(value, int | float) else None

        values: dict[str, Any] = {name: kind(number(_key(name))) for name, kind in SUMS.items()}
        values |= {name: optional(_key(name)) for name in LATENCIES}
        return cls(layout=str(report.get("layout", "")), step=int(number("step")), **values)

    def to_report(self) -> dict[str, Any]:
        """The JSON a router answers at `GET /canary` (the keys `from_report` reads)."""
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

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
    values: dict[str, Any] = {
        name: kind(sum(getattr(r, name) for r in matching)) for name, kind in SUMS.items()
    }
    values |= {name: reduce(_worst, (getattr(r, name) for r in matching), None) for name in LATENCIES}
    return CanaryStats(layout=layout, step=step, **values)


def _key(name: str) -> str:
    """A field's key in the report: camelCase of its name (`overlap_sum` -> `overlapSum`)."""
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


LATENCIES: Final = ("candidate_p99_ms", "active_p99_ms")
"""The fields that are each router's p99 (merged as the worst); every other field but `layout` and
`step` is a sum."""
SUMS: Final[dict[str, type[int] | type[float]]] = {
    f.name: int if f.type in ("int", int) else float  # annotations are strings here
    for f in fields(CanaryStats)
    if f.name not in ("layout", "step", *LATENCIES)
}
"""The summed fields and their type (counts are int, sums of scores float), in declaration order:
what a router's window counts (serving/router/canary.py) and how reports add up."""
