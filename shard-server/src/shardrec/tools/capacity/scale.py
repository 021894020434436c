"""Search and build cost at scale: the points `benchmarks/scale_bench.py` measured, and the fits the
planner runs on.

`MEASURED` is the one home of these numbers in code. Each point is one row of a `bench-scale-*`
table of docs/benchmarks.md, copied from the run named in its `command` (tests/ship checks that
the rows and this constant agree). The fits below are the only place they are extrapolated:

- ef for a recall target: `log ef = e0 + e_n log(n) + e_s log(shards) + e_d log(dim) + e_r r
  + e_nn (log(n) - log(1M))^2 + e_dr log(dim) r`, with n = items/shard and r = -log(1 - recall),
  least squares over every (point, target, one shard / S merged). The measured ef are the
  smallest of a coarse grid (10, 16, 24, 32, 48, 64, 96, ...) that reach the target, so each is
  within one grid step above the true one. The two last terms came with the 10M point: the ef a
  target needs grew 2x from 100k to 1M items but 4x from 1M to 10M (64 dims), which no power of
  n fits (e_nn), and the recall axis is steeper at 64 than at 256 dimensions (e_dr). Without
  them the fit missed the 1M points by more than a grid step;
- CPU per search: `log us = c0 + c_ef log ef + c_n log(items/shard) + c_d log(dim)`, least squares
  over the CPU measured at ef 24 and at the one-shard ef for 0.95;
- excluding E items: the shard fetches k + E, so hnswlib searches at ef' = max(ef, k + E); what the
  measured query with 100 excluded cost beyond the CPU fit at that ef' is charged per excluded item
  (`log us = x0 + x_n log(items) + x_d log(dim)`, through the measured points), so E = 0 costs
  nothing extra and E = 100 costs as measured;
- build rate per core: `log rate = b0 + b_n log(items/shard) + b_d log(dim)` through the measured
  points (wall time on all cores of the machine, divided by its cores).

Everything here is pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RECALL_TARGETS: tuple[float, ...] = (0.90, 0.95, 0.98)
MEASURED_K = 10
EXCLUDED = 100
"""The exclusion list the bench measured with (the query's exact neighbours 11-110)."""
TRUSTED_FACTOR = 10.0
"""How far beyond the largest measured shard the plan still says it extrapolates, not guesses."""


@dataclass(frozen=True)
class ScalePoint:
    """One row of a `bench-scale-*` table: one shard of `items`, and `shards_merged` of items/S."""

    items: int
    dimension: int
    shards_merged: int
    ef_single: tuple[float, ...]  # one shard of `items`: the ef reaching each of RECALL_TARGETS
    ef_merged: tuple[float, ...]  # `shards_merged` shards of items/S, merged by score
    planner_ef: int  # the fixed ef the planner used to plan with (24)
    cpu_us_planner_ef: float  # CPU µs per query at planner_ef, one shard of `items`, one thread
    cpu_us: float  # at the one-shard ef for 0.95 (ef_single[1])
    cpu_us_excluded: float  # the same with EXCLUDED items excluded
    build_items_per_second: float  # wall, one shard of `items`, every core of the machine
    build_cores: int  # the machine's cores during the build
    command: str  # the run that measured it


def _run(flags: str, where: str = "2026-12-05, 2 cores (AMD EPYC), 24 GiB, niced on a shared machine") -> str:
    return f"python benchmarks/scale_bench.py {flags} --write-doc ({where})"


MEASURED: tuple[ScalePoint, ...] = (
    ScalePoint(
        items=100_000,
        dimension=64,
        shards_merged=4,
        ef_single=(24, 48, 64),
        ef_merged=(10, 16, 24),
        planner_ef=24,
        cpu_us_planner_ef=49.0,
        cpu_us=81.0,
        cpu_us_excluded=309.0,
        build_items_per_second=3156.0,
        build_cores=2,
        command=_run("--sizes 100k --dims 64"),
    ),
    ScalePoint(
        items=100_000,
        dimension=256,
        shards_merged=4,
        ef_single=(48, 96, 96),
        ef_merged=(16, 24, 32),
        planner_ef=24,
        cpu_us_planner_ef=125.0,
        cpu_us=332.0,
        cpu_us_excluded=636.0,
        build_items_per_second=1864.0,
        build_cores=2,
        command=_run("--sizes 100k --dims 256"),
    ),
    ScalePoint(
        items=1_000_000,
        dimension=64,
        shards_merged=4,
        ef_single=(48, 96, 192),
        ef_merged=(24, 32, 64),
        planner_ef=24,
        cpu_us_planner_ef=84.0,
        cpu_us=203.0,
        cpu_us_excluded=424.0,
        build_items_per_second=1680.0,
        build_cores=2,
        command=_run("--sizes 1m --dims 64"),
    ),
    ScalePoint(
        items=1_000_000,
        dimension=256,
        shards_merged=4,
        ef_single=(64, 96, 128),
        ef_merged=(24, 32, 48),
        planner_ef=24,
        cpu_us_planner_ef=291.0,
        cpu_us=653.0,
        cpu_us_excluded=1062.0,
        build_items_per_second=2276.0,
        build_cores=2,
        command=_run(
            "--sizes 1m --dims 256",
            "2026-12-06, 2 cores (Intel Xeon), 24 GiB, nice 19 on a shared machine; --work elsewhere",
        ),
    ),
    ScalePoint(
        items=10_000_000,
        dimension=64,
        shards_merged=4,
        ef_single=(192, 384, 768),
        ef_merged=(64, 128, 256),
        planner_ef=24,
        cpu_us_planner_ef=149.0,
        cpu_us=1395.0,
        cpu_us_excluded=1823.0,
        # The wall rate, as for the other points (all niced on a shared machine); its CPU-based
        # rate (3,008/s: items / (process CPU s / 2 cores)) is in the table beside it.
        build_items_per_second=1619.0,
        build_cores=2,
        command=_run(
            "--sizes 10m --dims 64 --work /work/bench-scale-10m --resume",
            "2026-12-06, 2 cores (Intel Xeon), 24 GiB, nice 19 in the background over 2 runs",
        ),
    ),
)


def _lstsq(rows: Sequence[Sequence[float]], values: Sequence[float]) -> tuple[float, ...]:
    """Least-squares coefficients of `values ~ rows @ coefficients` (minimum norm if underdetermined)."""
    solution = np.linalg.lstsq(np.asarray(rows, dtype=float), np.asarray(values, dtype=float), rcond=None)[0]
    return tuple(float(x) for x in solution)


def _odds(recall: float) -> float:
    """-log(1 - recall): the recall axis the ef fit is linear in (0.90 -> 2.30, 0.95 -> 3.00)."""
    return -math.log(max(1.0 - recall, 1e-6))


_CENTRE = math.log(1_000_000)
"""Where the quadratic term in log(items/shard) is centred (the middle measured size)."""


def ef_terms(recall: float, items_per_shard: float, shards: int, dimension: int) -> tuple[float, ...]:
    """The terms the log of ef is linear in (module docstring), in the order of `ScaleModel.ef`."""
    n = math.log(max(items_per_shard, 2.0))
    d = math.log(dimension)
    r = _odds(recall)
    return (1.0, n, math.log(shards), d, r, (n - _CENTRE) ** 2, d * r)


@dataclass(frozen=True)
class ShardSearch:
    """What one shard does for one request, by the model."""

    ef: int  # the efSearch the recall target needs at this shard size and shard count
    ef_searched: int  # what hnswlib searches with: max(ef, k + excluded per shard)
    excluded_per_shard: float
    search_us: float  # CPU of the search at ef_searched
    exclusion_us: float  # the measured extra per excluded item, times excluded_per_shard

    @property
    def cpu_us(self) -> float:
        return self.search_us + self.exclusion_us


@dataclass(frozen=True)
class ScaleModel:
    """The fitted coefficients (natural logs); `fit(MEASURED)` gives the planner's."""

    ef: tuple[float, ...]  # e0, e_n, e_s, e_d, e_r, e_nn, e_dr: the terms of `ef_terms`
    cpu: tuple[float, float, float, float]  # c0, c_ef, c_n, c_d
    per_excluded: tuple[float, float, float]  # x0, x_n, x_d
    build: tuple[float, float, float]  # b0, b_n, b_d
    largest_items: int
    dimensions: tuple[int, int]  # smallest and largest measured
    recalls: tuple[float, float]
    # (dimension, the largest shard measured at it), by dimension; empty: `largest_items` at all.
    largest_by_dimension: tuple[tuple[int, int], ...] = ()

    def largest_measured(self, dimension: int) -> int:
        """The largest shard measured at `dimension` or wider: a 5M x 256 shard is not covered by
        a 10M x 64 point (a wider vector's graph is harder to search), so it is extrapolated from
        the widest points, not interpolated."""
        wider = [items for measured, items in self.largest_by_dimension if measured >= dimension]
        return max(wider) if wider else self.largest_items

    def ef_for(self, recall: float, items_per_shard: float, shards: int, dimension: int) -> int:
        """The efSearch reaching `recall` when `shards` shards of `items_per_shard` are merged."""
        terms = ef_terms(recall, items_per_shard, shards, dimension)
        value = sum(coefficient * term for coefficient, term in zip(self.ef, terms, strict=True))
        return max(1, math.ceil(math.exp(value)))

    def search_us(self, ef: float, items_per_shard: float, dimension: int) -> float:
        """CPU µs of one search at `ef` on one shard of `items_per_shard`, one thread."""
        c0, c_ef, c_n, c_d = self.cpu
        return math.exp(
            c0 + c_ef * math.log(ef) + c_n * math.log(max(items_per_shard, 2.0)) + c_d * math.log(dimension)
        )

    def per_excluded_us(self, items_per_shard: float, dimension: int) -> float:
        x0, x_n, x_d = self.per_excluded
        return math.exp(x0 + x_n * math.log(max(items_per_shard, 2.0)) + x_d * math.log(dimension))

    def shard_search(
        self, recall: float, k: int, *, items_per_shard: float, shards: int, dimension: int, excluded: float
    ) -> ShardSearch:
        """One request's search on one shard; `excluded` is the request's exclusion list, of which a
        shard holds (and fetches k + ) excluded / shards on average."""
        ef = self.ef_for(recall, items_per_shard, shards, dimension)
        per_shard = excluded / shards
        searched = max(ef, math.ceil(k + per_shard))
        return ShardSearch(
            ef=ef,
            ef_searched=searched,
            excluded_per_shard=per_shard,
            search_us=self.search_us(searched, items_per_shard, dimension),
            exclusion_us=per_shard * self.per_excluded_us(items_per_shard, dimension),
        )

    def build_items_per_core_second(self, items_per_shard: float, dimension: int) -> float:
        b0, b_n, b_d = self.build
        return math.exp(b0 + b_n * math.log(max(items_per_shard, 2.0)) + b_d * math.log(dimension))

    def warnings(self, recall: float, items_per_shard: float, dimension: int) -> list[str]:
        """What the plan extrapolates beyond the measurements, in words for the output."""
        out: list[str] = []
        largest = self.largest_measured(dimension)
        factor = items_per_shard / largest
        if factor > 1.0:
            beyond = ", beyond 10x: a guess" if factor > TRUSTED_FACTOR else ""
            at = f" at {dimension} dimensions or more" if largest != self.largest_items else ""
            out.append(
                f"WARNING: {items_per_shard:,.0f} items/shard is {factor:.1f}x the largest measured{at} "
                f"({largest:,}){beyond}: ef, CPU and build rate extrapolated"
            )
        low, high = self.dimensions
        if not low <= dimension <= high:
            out.append(f"WARNING: dimension {dimension} is outside the measured {low}-{high}; extrapolated")
        if not self.recalls[0] <= recall <= self.recalls[1]:
            low_recall, high_recall = self.recalls
            out.append(
                f"WARNING: recall {recall:g} is outside the measured {low_recall:g}-{high_recall:g}; "
                "ef extrapolated"
            )
        return out


def fit(points: Sequence[ScalePoint]) -> ScaleModel:
    """Fit the model to `points` (see the module's docstring for the forms)."""
    if not points:
        raise ValueError("no scale points to fit")
    ef_rows: list[list[float]] = []
    ef_values: list[float] = []
    cpu_rows: list[list[float]] = []
    cpu_values: list[float] = []
    for p in points:
        for target, single, merged in zip(RECALL_TARGETS, p.ef_single, p.ef_merged, strict=True):
            ef_rows.append(list(ef_terms(target, p.items, 1, p.dimension)))
            ef_values.append(math.log(single))
            ef_rows.append(list(ef_terms(target, p.items / p.shards_merged, p.shards_merged, p.dimension)))
            ef_values.append(math.log(merged))
        for ef, us in ((p.planner_ef, p.cpu_us_planner_ef), (p.ef_single[1], p.cpu_us)):
            cpu_rows.append([1.0, math.log(ef), math.log(p.items), math.log(p.dimension)])
            cpu_values.append(math.log(us))
    c0, c_ef, c_n, c_d = _lstsq(cpu_rows, cpu_values)
    partial = ScaleModel(
        ef=_lstsq(ef_rows, ef_values),
        cpu=(c0, c_ef, c_n, c_d),
        per_excluded=(0.0, 0.0, 0.0),
        build=(0.0, 0.0, 0.0),
        largest_items=max(p.items for p in points),
        dimensions=(min(p.dimension for p in points), max(p.dimension for p in points)),
        recalls=(RECALL_TARGETS[0], RECALL_TARGETS[-1]),
        largest_by_dimension=tuple(
            (dimension, max(p.items for p in points if p.dimension == dimension))
            for dimension in sorted({p.dimension for p in points})
        ),
    )
    exclusion_rows: list[list[float]] = []
    exclusion_values: list[float] = []
    build_values: list[float] = []
    for p in points:
        searched = max(p.ef_single[1], MEASURED_K + EXCLUDED)
        extra = (p.cpu_us_excluded - partial.search_us(searched, p.items, p.dimension)) / EXCLUDED
        exclusion_rows.append([1.0, math.log(p.items), math.log(p.dimension)])
        exclusion_values.append(math.log(max(extra, 1e-3)))
        build_values.append(math.log(p.build_items_per_second / p.build_cores))
    x0, x_n, x_d = _lstsq(exclusion_rows, exclusion_values)
    b0, b_n, b_d = _lstsq(exclusion_rows, build_values)
    return ScaleModel(
        ef=partial.ef,
        cpu=partial.cpu,
        per_excluded=(x0, x_n, x_d),
        build=(b0, b_n, b_d),
        largest_items=partial.largest_items,
        dimensions=partial.dimensions,
        recalls=partial.recalls,
        largest_by_dimension=partial.largest_by_dimension,
    )


MODEL = fit(MEASURED)
"""The model the planner uses by default: fitted to MEASURED."""
