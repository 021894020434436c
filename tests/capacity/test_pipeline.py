"""The pipeline arithmetic (tools/capacity/pipeline.py) on hand-checked cases: the worked example of
test_planner.py (fixture coefficients, round numbers) under the default assumptions, with training
points that lie exactly on a known cost model."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from shardrec.tools.capacity.pipeline import (
    MEASURED_ALS,
    AlsCalibration,
    AlsCheck,
    AlsMeasurement,
    AlsPoint,
    Pipeline,
    PipelineError,
    PipelineTarget,
    als_calibration,
    als_iteration_estimate,
    fit_als_cost,
    make_pipeline,
)
from shardrec.tools.capacity.planner import GIB, make_plan
from shardrec.tools.capacity.report import markdown, pipeline_rows
from tests.capacity.fixtures import coefficients, scale_model
from tests.capacity.test_planner import EXAMPLE

# One iteration costs 2 ns per (nonzero x factor) + 0.5 ns per (row x factor^2) + 0.01 s, measured
# on 100,000 nonzeros and 1,000 + 9,000 rows: every run the same.
A_NS, B_NS, C_S = 2.0, 0.5, 0.01


def _on_model(factors: int) -> float:
    return (A_NS * 100_000 * factors + B_NS * 10_000 * factors**2) * 1e-9 + C_S


EXACT = AlsMeasurement(
    command="hand-made",
    date="2026-01-01",
    users=1_000,
    items=9_000,
    nnz=100_000,
    points=tuple(AlsPoint(f, _on_model(f), _on_model(f), _on_model(f)) for f in (16, 32, 64, 128, 256)),
)


# Two larger checks at 64 factors: 1M nonzeros over 100k rows (10 per row) measured 1.5x the fit's
# 0.4328 s, and over 10k rows (100 per row) 2x its 0.128 + 0.02048 + 0.01 = 0.15848 s.
CHECKED = replace(
    EXACT,
    checks=(
        AlsCheck(90_000, 10_000, 1_000_000, 64, 1.5 * 0.4328),
        AlsCheck(9_000, 1_000, 1_000_000, 64, 2 * 0.15848),
    ),
)


def _pipeline(**changes: Any) -> Pipeline:
    return _pipeline_on(EXACT, **changes)


def _pipeline_on(als: AlsMeasurement, **changes: Any) -> Pipeline:
    pt = replace(PipelineTarget(), **changes)
    plan = make_plan(EXAMPLE, coefficients(), scale_model())
    ranking = make_plan(replace(EXAMPLE, k=pt.ranking_candidates), coefficients(), scale_model())
    return make_pipeline(pt, plan, ranking, als)


def test_the_als_fit_recovers_the_cost_model_it_was_measured_on() -> None:
    fit = fit_als_cost(EXACT)
    assert (fit.a_ns, fit.b_ns, fit.c_s) == pytest.approx((A_NS, B_NS, C_S))
    assert (fit.nnz, fit.rows) == (100_000, 10_000)
    # 10x the nonzeros and rows at 64 factors: 128 ms + 204.8 ms, and c as measured, x10 or x10.
    assert fit.cpu_seconds(nnz=1e6, rows=1e5, factors=64, overhead="constant") == pytest.approx(0.3428)
    assert fit.cpu_seconds(nnz=1e6, rows=1e5, factors=64, overhead="rows") == pytest.approx(0.4328)
    assert fit.cpu_seconds(nnz=1e7, rows=1e5, factors=64, overhead="nnz") == pytest.approx(
        1.28 + 0.2048 + 1.0
    )


def test_the_als_fit_never_goes_negative_and_needs_three_points() -> None:
    # Times that fall with the factors would need a negative term: the best non-negative fit is kept.
    falling = replace(EXACT, points=tuple(AlsPoint(f, 1 / f, 1 / f, 1 / f) for f in (16, 32, 64)))
    fit = fit_als_cost(falling)
    assert min(fit.a_ns, fit.b_ns, fit.c_s) >= 0
    with pytest.raises(PipelineError, match="three factor counts"):
        fit_als_cost(replace(EXACT, points=EXACT.points[:2]))


def test_the_estimate_scales_the_overhead_by_rows_and_the_range_brackets_it() -> None:
    # 100x the nonzeros, 10x the rows, 64 factors: 1.28 s + 0.2048 s, c x1 / x10 / x100.
    low, estimate, high = als_iteration_estimate(EXACT, nnz=1e7, rows=1e5, factors=64)
    assert (low, estimate, high) == pytest.approx((1.4948, 1.5848, 2.4848))
    # The spread of the runs widens the range: the fastest 10% faster, the slowest 10% slower.
    spread = replace(
        EXACT,
        points=tuple(
            AlsPoint(p.factors, p.cpu_s_median, 0.9 * p.cpu_s_min, 1.1 * p.cpu_s_max) for p in EXACT.points
        ),
    )
    wide = als_iteration_estimate(spread, nnz=1e7, rows=1e5, factors=64)
    assert wide[0] == pytest.approx(0.9 * low) and wide[2] == pytest.approx(1.1 * high)
    assert wide[1] == pytest.approx(estimate)


def test_the_checks_calibrate_the_fit_by_the_nearest_density_and_widen_the_range() -> None:
    assert als_calibration(EXACT, nnz=1e8, rows=1e6) == AlsCalibration(1.0, 1.0, None)
    # 9 nonzeros per row is nearest the first check (10), 90 the second (100).
    sparse = als_calibration(CHECKED, nnz=9e7, rows=1e7)
    assert (sparse.ratio, sparse.largest_ratio) == pytest.approx((1.5, 2.0))
    assert sparse.check == CHECKED.checks[0]
    dense = als_calibration(CHECKED, nnz=9e8, rows=1e7)
    assert dense.ratio == pytest.approx(2.0)
    assert dense.check == CHECKED.checks[1]
    # The example's training (9.1 nonzeros per row): the fit's 46.328 s x 1.5; the high end x 2.
    q = _pipeline_on(CHECKED)
    assert q.als_iteration_cpu_s == pytest.approx(1.5 * 46.328)
    assert q.als_iteration_cpu_s_high == pytest.approx(2 * 46.328)
    assert q.als_iteration_cpu_s_low == pytest.approx(12.8 + 22.528 + 0.01)
    assert (q.als_calibration, q.als_calibration_largest) == pytest.approx((1.5, 2.0))
    assert q.als_calibration_check_nnz == 1_000_000
    assert q.extrapolation_checked_nnz == pytest.approx(100)  # 1e8 over the largest check's 1e6


def test_the_committed_training_points_fit_within_their_spread() -> None:
    fit = fit_als_cost(MEASURED_ALS)
    rows = MEASURED_ALS.users + MEASURED_ALS.items
    for point in MEASURED_ALS.points:
        modelled = fit.cpu_seconds(
            nnz=MEASURED_ALS.nnz, rows=rows, factors=point.factors, overhead="constant"
        )
        assert modelled == pytest.approx(point.cpu_s_median, rel=0.15)


def test_events_by_hand() -> None:
    q = _pipeline()
    # 100M users x 10 events = 1e9 a day: 11,574/s mean, x3 at peak; 200 B each.
    assert q.events_per_day == 1e9
    assert q.events_mean_per_s == pytest.approx(11_574.07, abs=0.01)
    assert q.events_peak_per_s == pytest.approx(34_722.2, abs=0.1)
    assert q.event_bytes_per_day == pytest.approx(2e11)
    # 6.94e6 B/s is 2 partitions of 5 MiB/s, but 34,722 events/s need 18 consumers of 2,000/s.
    assert q.log_peak_bytes_per_s == pytest.approx(6.944e6, rel=1e-3)
    assert q.log_partitions == 18
    assert _pipeline(partition_events_per_second=1e9).log_partitions == 2
    assert q.log_stored_bytes == pytest.approx(2e11 * 7 * 3)


def test_training_by_hand() -> None:
    q = _pipeline()
    # 1M users x 100 = 1e8 nonzeros, 11M rows, 64 factors: 12.8 s + 22.528 s + 0.01 s x (11M / 10k).
    assert (q.training_nnz, q.training_rows, q.training_factors) == (1e8, 11_000_000, 64)
    assert q.als_iteration_cpu_s == pytest.approx(12.8 + 22.528 + 11.0)
    assert q.als_iteration_cpu_s_low == pytest.approx(12.8 + 22.528 + 0.01)  # c as measured
    assert q.als_iteration_cpu_s_high == pytest.approx(12.8 + 22.528 + 11.0)  # rows grew 1,100x, nnz 1,000x
    assert q.extrapolation_nnz == pytest.approx(1000)
    assert q.training_core_hours == pytest.approx(463.28 / 3600)
    assert q.training_cores == 1
    # Factors 4 B x 11M x 64 + the matrix twice at 8 B per nonzero + row pointers.
    assert q.training_memory_bytes == pytest.approx(2.816e9 + 1.6e9 + 8 * (11e6 + 2))
    assert q.trainings_per_day == 1


def test_freshness_caching_ranking_and_ab_by_hand() -> None:
    q = _pipeline()
    # 100k item writes a day: 1.157/s, 3.47/s at peak, over the example's 2 shard leaders.
    assert q.item_writes_peak_per_s == pytest.approx(3 * 100_000 / 86_400)
    assert q.writes_per_leader_peak == pytest.approx(1.5 * 100_000 / 86_400)
    assert q.measured_writes_per_leader == 31  # 62 writes/s over 2 leaders
    # Fold-in: 12k req/s x 0.28 ms at 50% CPU = 6.72 cores.
    assert q.foldin_cores == pytest.approx(6.72)
    # Cache: 0.906 of 18 shard pods x 2 cores.
    assert q.shard_cores_saved_by_cache == pytest.approx(0.906 * 36)
    # Ranking: 200 x 5 µs = 1 ms; 12k/s at 50% = 24 cores. Retrieval at k=200 searches at ef 200
    # (0.625 ms + 0.3 ms): 11.1 cores -> 12 pods -> 18 for a zone loss, x 2 shards x 2 cores = 72,
    # + 24 router cores = 96 against the plan's 60.
    assert q.ranking_cpu_ms == pytest.approx(1.0)
    assert q.ranking_cores == pytest.approx(24)
    assert q.ranking_ef_searched == 200
    assert q.ranking_retrieval_extra_cores == pytest.approx(36)
    # B arm sized for its share: 5% of 12k = 600 req/s x 0.5 ms = 0.3 cores -> 1 pod -> 2 for a
    # zone loss, per shard. As the canary runs it: the plan's 18 shard pods again (blue/green).
    assert (q.ab_arm_replicas, q.ab_extra_pods, q.ab_extra_cores) == (2, 4, 8)
    assert (q.ab_candidate_pods, q.ab_candidate_cores) == (18, 36)
    assert _pipeline(ab_share=0.0).ab_candidate_pods == 0


def test_cost_per_1k_requests_by_hand() -> None:
    q = _pipeline()
    # Serving: 60 cores x $0.03 + 240 GiB x $0.0045 = $2.88/h, $69.12/day over 1e9 requests.
    assert q.requests_per_day == 1e9
    assert q.serving_usd_per_day == pytest.approx(69.12)
    assert q.serving_usd_per_1k == pytest.approx(69.12e-6)
    # Extras: (6.72 fold-in + 36 retrieval + 24 ranking + 36 candidate) cores x $0.03 + the
    # candidate's 18 x 8 GiB x $0.0045, 24 h; one training a day.
    training = 463.28 / 3600 * 0.03 + q.training_memory_bytes / GIB * 2 * 0.0045
    extras = 24 * (102.72 * 0.03 + 144 * 0.0045)
    assert q.pipeline_usd_per_day == pytest.approx(69.12 + extras + training)
    # Two regions: each runs the serving and its extras, training runs once.
    assert q.all_regions_usd_per_day == pytest.approx(2 * (69.12 + extras) + training)
    assert q.cores_all_regions == pytest.approx(2 * (60 + 102.72))


@pytest.mark.parametrize(
    ("field", "values", "figure"),
    [
        ("events_per_user_day", (1, 10, 100), "log_partitions"),
        ("event_bytes", (100, 1000, 10_000), "log_stored_bytes"),
        ("training_interactions_per_user", (10, 100, 1000), "training_core_hours"),
        ("training_iterations", (5, 10, 20), "training_cores"),
        ("ranking_us_per_candidate", (1, 5, 25), "ranking_cores"),
        ("ab_share", (0.0, 0.05, 0.5), "ab_extra_pods"),
        ("regions", (1, 2, 3), "all_regions_usd_per_1k"),
        ("core_hour_usd", (0.01, 0.03, 0.1), "pipeline_usd_per_1k"),
        ("requests_per_user_day", (1, 10, 100), "serving_usd_per_day"),
    ],
)
def test_more_of_an_assumption_never_costs_less(field: str, values: tuple[float, ...], figure: str) -> None:
    figures = [getattr(_pipeline(**{field: value}), figure) for value in values]
    assert figures == sorted(figures)


def test_more_requests_a_day_cost_less_per_request() -> None:
    per_1k = [_pipeline(requests_per_user_day=n).serving_usd_per_1k for n in (1, 10, 100)]
    assert per_1k == sorted(per_1k, reverse=True)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"events_per_user_day": -1}, "--events-per-user-day must be 0 or more"),
        ({"regions": 0}, "--regions must be greater than 0"),
        ({"ab_share": 1.5}, r"--ab-share must be within \[0, 1\]"),
        ({"event_peak_factor": 0.5}, "--event-peak-factor must be at least 1"),
        ({"core_hour_usd": float("nan")}, "--core-hour-usd"),
    ],
)
def test_bad_assumptions_name_the_flag(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        _pipeline(**changes)


def test_the_ranking_plan_must_be_planned_at_the_candidates() -> None:
    plan = make_plan(EXAMPLE, coefficients(), scale_model())
    with pytest.raises(PipelineError, match="k = --ranking-candidates"):
        make_pipeline(PipelineTarget(), plan, plan, EXACT)


def test_the_rows_name_every_section_and_say_what_is_assumed() -> None:
    rows = pipeline_rows(_pipeline())
    sections = [row.section for row in rows]
    for section in ("events", "training", "freshness", "caching", "ranking", "a/b test", "regions", "cost"):
        assert section in sections
    table = markdown(rows)
    assert "EXTRAPOLATED" in table and "ASSUMED" in table and "given points" in table
