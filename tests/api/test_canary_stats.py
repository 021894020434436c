"""One home for canary measurements (`shardrec.api.canary`): what a router reports at
`GET /canary`, how a router pod's workers add theirs up, and what the planner reads back."""

from __future__ import annotations

from shardrec.api.canary import CanaryStats, merged
from shardrec.serving.router.workers import combine_canary


def _stats(layout: str, step: int, requests: int, p99: float | None) -> CanaryStats:
    return CanaryStats(
        layout=layout,
        step=step,
        requests=requests,
        errors=1,
        active_requests=2 * requests,
        compared=requests,
        overlap_sum=0.9 * requests,
        rank_correlation_sum=0.5 * requests,
        score_shift_sum=0.01 * requests,
        user_queries=requests,
        unknown_users=1,
        shadow_dropped=3,
        candidate_p99_ms=p99,
        active_p99_ms=4.0,
    )


def test_a_report_reads_back_as_the_same_stats() -> None:
    stats = _stats("v2", 1, 40, 7.5)
    assert CanaryStats.from_report(stats.to_report()) == stats


def test_workers_add_up_as_routers_do_and_only_the_newest_step_counts() -> None:
    """A worker still on step 0 is left out; counts add, p99s keep the worst (a worker without
    latencies yet does not hide another's)."""
    workers = [_stats("v2", 1, 40, 7.5), _stats("v2", 1, 60, None), _stats("v2", 0, 500, 99.0)]
    combined = combine_canary([w.to_report() for w in workers] + [None])
    assert combined is not None
    expected = merged(workers, "v2", 1)
    assert expected is not None and CanaryStats.from_report(combined) == expected
    assert (expected.requests, expected.errors, expected.candidate_p99_ms) == (100, 2, 7.5)
    assert combine_canary([None, None]) is None


def test_the_report_keys_are_the_wire_format_routers_and_the_operator_share() -> None:
    """Routers of one release and an operator of another read each other's reports: the keys are
    a contract, whatever derives them."""
    assert list(_stats("v2", 1, 40, 7.5).to_report()) == [
        "layout", "step", "requests", "errors", "activeRequests", "activeErrors", "compared",
        "overlapSum", "rankCorrelationSum", "scoreShiftSum", "userQueries", "unknownUsers",
        "shadowDropped", "candidateP99Ms", "activeP99Ms",
    ]  # fmt: skip


def test_a_report_with_missing_or_malformed_values_reads_as_zero_or_unknown() -> None:
    stats = CanaryStats.from_report({"layout": "v2", "step": 2, "requests": "many", "overlapSum": 1.5,
                                     "candidateP99Ms": "slow", "activeP99Ms": 3})  # fmt: skip
    assert (stats.layout, stats.step, stats.requests, stats.overlap_sum) == ("v2", 2, 0, 1.5)
    assert (stats.candidate_p99_ms, stats.active_p99_ms, stats.errors) == (None, 3.0, 0)
    assert isinstance(stats.requests, int) and isinstance(stats.overlap_sum, float)
