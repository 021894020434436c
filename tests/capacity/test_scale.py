"""The scale model: fitted to the `make bench-scale` points, it gives back what was measured and
moves the right way with items, shards, dimension, recall and exclusions."""

from __future__ import annotations

import math

import pytest

from shardrec.tools.capacity.scale import (
    EXCLUDED,
    MEASURED,
    MEASURED_K,
    MODEL,
    RECALL_TARGETS,
    ScaleModel,
    ScalePoint,
    ef_terms,
    fit,
)

GRID_STEP = 1.5  # the bench's ef grid (..., 32, 48, 64, 96, 128, 192, ...) steps by 1.33-1.5x
EF_GRID = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)  # benchmarks/scale_bench.py
RESIDUAL = 0.25
"""With more measured points than coefficients the fits are regressions: each point comes back
within this (the build rates were measured at different machine loads, see each table's load)."""


def _grid_below(ef: int) -> int:
    """The grid value before `ef`: a measured ef of 96 says only that the true one is in (64, 96]."""
    return max((value for value in EF_GRID if value < ef), default=ef)


@pytest.mark.parametrize("point", MEASURED, ids=lambda p: f"{p.items}x{p.dimension}")
def test_the_fit_gives_back_the_measured_ef_within_a_grid_step(point: ScalePoint) -> None:
    for target, single, merged in zip(RECALL_TARGETS, point.ef_single, point.ef_merged, strict=True):
        one = MODEL.ef_for(target, point.items, 1, point.dimension)
        many = MODEL.ef_for(target, point.items / point.shards_merged, point.shards_merged, point.dimension)
        assert _grid_below(single) / GRID_STEP <= one <= single * GRID_STEP, (target, one, single)
        assert _grid_below(merged) / GRID_STEP <= many <= merged * GRID_STEP, (target, many, merged)


@pytest.mark.parametrize("point", MEASURED, ids=lambda p: f"{p.items}x{p.dimension}")
def test_the_fit_gives_back_the_measured_cpu(point: ScalePoint) -> None:
    at_24 = MODEL.search_us(point.planner_ef, point.items, point.dimension)
    at_95 = MODEL.search_us(point.ef_single[1], point.items, point.dimension)
    assert at_24 == pytest.approx(point.cpu_us_planner_ef, rel=0.25)
    assert at_95 == pytest.approx(point.cpu_us, rel=0.25)
    # With the 100 excluded items the bench used, at the ef it measured: as measured.
    searched = max(point.ef_single[1], MEASURED_K + EXCLUDED)
    excluded = MODEL.search_us(searched, point.items, point.dimension) + EXCLUDED * MODEL.per_excluded_us(
        point.items, point.dimension
    )
    assert excluded == pytest.approx(point.cpu_us_excluded, rel=RESIDUAL)
    # The build rate comes back near the measured points (per core: wall rate / the machine's cores).
    per_core = MODEL.build_items_per_core_second(point.items, point.dimension)
    assert per_core * point.build_cores == pytest.approx(point.build_items_per_second, rel=RESIDUAL)


def test_ef_grows_with_items_recall_and_dimension_and_falls_with_shards_merged() -> None:
    base = MODEL.ef_for(0.95, 1e6, 1, 64)
    assert MODEL.ef_for(0.95, 1e7, 1, 64) > base
    assert MODEL.ef_for(0.98, 1e6, 1, 64) > base > MODEL.ef_for(0.90, 1e6, 1, 64)
    assert MODEL.ef_for(0.95, 1e6, 1, 256) > base
    # The same shard size merged over 4 shards: each contributes a few of the top 10.
    assert MODEL.ef_for(0.95, 1e6, 4, 64) < base


def test_cpu_grows_with_ef_items_and_dimension_faster_than_log_n() -> None:
    base = MODEL.search_us(96, 1e6, 64)
    assert MODEL.search_us(192, 1e6, 64) > base
    assert MODEL.search_us(96, 1e6, 256) > base
    # 10x the items at the same ef: more than the old log(n) factor log(1e7)/log(1e6) = 1.17.
    assert MODEL.search_us(96, 1e7, 64) / base > math.log(1e7) / math.log(1e6)


def test_exclusions_raise_the_searched_ef_to_k_plus_the_shards_part() -> None:
    plain = MODEL.shard_search(0.95, 10, items_per_shard=1e5, shards=1, dimension=64, excluded=0)
    assert plain.exclusion_us == 0 and plain.ef_searched == plain.ef
    heavy = MODEL.shard_search(0.95, 10, items_per_shard=1e5, shards=1, dimension=64, excluded=300)
    assert heavy.ef_searched == 310 and heavy.cpu_us > plain.cpu_us
    # Over 3 shards each holds 100 of the 300: it fetches k + 100.
    split = MODEL.shard_search(0.95, 10, items_per_shard=1e5, shards=3, dimension=64, excluded=300)
    assert split.excluded_per_shard == 100 and split.ef_searched == max(split.ef, 110)
    # Half the exclusions cost half the per-item extra (interpolated between 0 and the measured 100).
    half = MODEL.shard_search(0.95, 10, items_per_shard=1e5, shards=1, dimension=64, excluded=50)
    full = MODEL.shard_search(0.95, 10, items_per_shard=1e5, shards=1, dimension=64, excluded=100)
    assert half.exclusion_us == pytest.approx(full.exclusion_us / 2)


def test_the_build_rate_falls_with_shard_size() -> None:
    assert MODEL.build_items_per_core_second(1e7, 64) < MODEL.build_items_per_core_second(1e6, 64)
    assert MODEL.build_items_per_core_second(1e6, 64) < MODEL.build_items_per_core_second(1e5, 64)


def test_warnings_name_what_is_extrapolated() -> None:
    assert MODEL.warnings(0.95, 1e6, 64) == []
    assert MODEL.warnings(0.95, 1e7, 64) == []
    (at_100m,) = MODEL.warnings(0.95, 1e8, 64)
    assert "10.0x the largest measured (10,000,000)" in at_100m and "a guess" not in at_100m
    (at_300m,) = MODEL.warnings(0.95, 3e8, 64)
    assert "30.0x" in at_300m and "beyond 10x: a guess" in at_300m
    # 256 dimensions were measured up to 1M items: 5M x 256 is extrapolated although 10M x 64 is not.
    (wide,) = MODEL.warnings(0.95, 5e6, 256)
    assert "5.0x the largest measured at 256 dimensions or more (1,000,000)" in wide, wide
    assert MODEL.warnings(0.95, 1e6, 256) == []
    (between,) = MODEL.warnings(0.95, 2e6, 128)  # only the 256-d points are as wide
    assert "2.0x the largest measured at 128 dimensions or more (1,000,000)" in between, between
    assert any("dimension 768" in w for w in MODEL.warnings(0.95, 1e5, 768))
    assert any("recall 0.99" in w for w in MODEL.warnings(0.99, 1e5, 64))


def test_the_fit_recovers_a_known_model() -> None:
    truth = ScaleModel(
        ef=(-3.0, 0.4, -0.3, 0.3, 0.6, 0.04, -0.05),
        cpu=(-3.0, 0.7, 0.2, 0.7),
        per_excluded=(-1.5, 0.05, 0.3),
        build=(12.0, -0.3, -0.4),
        largest_items=10_000_000,
        dimensions=(64, 256),
        recalls=(0.90, 0.98),
    )
    points = []
    for items, dimension in ((100_000, 64), (100_000, 256), (1_000_000, 64), (10_000_000, 128)):

        def ef(n: float, shards: int, target: float, d: int = dimension) -> float:
            terms = ef_terms(target, n, shards, d)
            return math.exp(sum(c * t for c, t in zip(truth.ef, terms, strict=True)))

        # Exact (unrounded) ef would not be integers; the fit is checked on its own form.
        single = tuple(ef(items, 1, t) for t in RECALL_TARGETS)
        merged = tuple(ef(items / 4, 4, t) for t in RECALL_TARGETS)
        at_95 = single[1]
        searched = max(at_95, MEASURED_K + EXCLUDED)
        points.append(
            ScalePoint(
                items=items,
                dimension=dimension,
                shards_merged=4,
                ef_single=single,
                ef_merged=merged,
                planner_ef=24,
                cpu_us_planner_ef=truth.search_us(24, items, dimension),
                cpu_us=truth.search_us(at_95, items, dimension),
                cpu_us_excluded=truth.search_us(searched, items, dimension)
                + EXCLUDED * truth.per_excluded_us(items, dimension),
                build_items_per_second=2 * truth.build_items_per_core_second(items, dimension),
                build_cores=2,
                command="synthetic",
            )
        )
    fitted = fit(points)
    assert fitted.ef == pytest.approx(truth.ef, abs=1e-6)
    assert fitted.cpu == pytest.approx(truth.cpu, abs=1e-6)
    assert fitted.per_excluded == pytest.approx(truth.per_excluded, abs=1e-6)
    assert fitted.build == pytest.approx(truth.build, abs=1e-6)
    assert fitted.largest_items == 10_000_000
    assert fitted.largest_by_dimension == ((64, 1_000_000), (128, 10_000_000), (256, 100_000))


def test_no_points_is_an_error() -> None:
    with pytest.raises(ValueError, match="no scale points"):
        fit([])
