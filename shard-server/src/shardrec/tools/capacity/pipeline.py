"""The pipeline around the serving fleet, in numbers: events in, training, freshness, caching, a
ranking stage, A/B tests, regions and cost per request. Pure arithmetic on a `PipelineTarget`
(every assumption a parameter, a flag of `recctl capacity --pipeline`), the serving `Plan`, and
measured points named with the command that measured them.

What is measured, and where it is written down:
- ALS training CPU per iteration on MovieLens ml-latest-small at 16-256 factors: `MEASURED_ALS`,
  the rows of the `train-rate` table of docs/benchmarks.md (`python benchmarks/train_rate.py`;
  tests/ship/test_pipeline_points.py fails when the two differ). It is extrapolated to the seed by
  the cost of one conjugate-gradient ALS iteration (`fit_als_cost`):
  `t = a x nnz x f + b x (users + items) x f^2 + c`, where the f-independent `c` is scaled with
  (users + items) for the estimate, and then multiplied by how far that fit fell below the same
  bench's larger seeded checks (`als_calibration`): the measured CPU grows faster than the fit.
- Item writes acknowledged per second (`MEASURED_WRITES`, docs/design.md, item writes), the user
  fold-in CPU (`MEASURED_FOLDIN_MS`, docs/evaluation.md) and the result cache's hit ratio under
  Zipf (`MEASURED_CACHE_HIT`, docs/benchmarks.md): copied here with their commands.
Everything else (events per user, bytes per event, partition throughput, the ranking model's cost,
prices) is an assumption, printed as one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from shardrec.tools.capacity.planner import GIB, Plan, replicas_for_cpu, replicas_for_zone_loss

SECONDS_PER_DAY = 86_400.0
MIB = 1024**2
FLOAT32 = 4


class PipelineError(ValueError):
    """A pipeline assumption is out of range; the message names the flag."""


# --- measured points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlsPoint:
    """One row of the train-rate table: CPU seconds per ALS iteration at `factors` (one thread)."""

    factors: int
    cpu_s_median: float
    cpu_s_min: float
    cpu_s_max: float


@dataclass(frozen=True)
class AlsCheck:
    """One row of the train-rate check table: CPU seconds per iteration measured on a larger seeded
    matrix, against which the fit's extrapolation is held (and calibrated)."""

    users: int
    items: int
    nnz: int
    factors: int
    cpu_s: float


@dataclass(frozen=True)
class AlsMeasurement:
    """The train-rate table: the data set's shape, its points, the larger checks and the command
    that measured them."""

    command: str
    date: str
    users: int
    items: int
    nnz: int
    points: tuple[AlsPoint, ...]
    checks: tuple[AlsCheck, ...] = ()


MEASURED_ALS = AlsMeasurement(
    command="python benchmarks/train_rate.py",
    date="2026-12-06",
    users=610,
    items=9_724,
    nnz=100_836,
    points=(
        AlsPoint(16, 0.0283, 0.0279, 0.0289),
        AlsPoint(32, 0.0287, 0.0276, 0.0294),
        AlsPoint(64, 0.0475, 0.0470, 0.0500),
        AlsPoint(128, 0.0988, 0.0955, 0.1015),
        AlsPoint(256, 0.2331, 0.2289, 0.2396),
    ),
    checks=(
        AlsCheck(200_000, 20_000, 1_978_722, 64, 1.356),
        AlsCheck(1_000_000, 50_000, 9_928_938, 64, 7.208),
        AlsCheck(200_000, 20_000, 18_592_787, 64, 5.759),
    ),
)

MEASURED_WRITES = (62.0, 78.0, 2)
"""Acknowledged item writes/s (low, high) through a router to this many shard leaders (2 shards x
2 replicas, fsync per write, a loaded 2-core machine): docs/design.md, item writes, "Measured"
(tests/serving/test_writes_integration.py)."""

MEASURED_FOLDIN_MS = (0.28, 128)
"""CPU ms of one user fold-in from its last clicks (one BLAS thread) and the factors it was measured
at: docs/evaluation.md, user fold-in (`python benchmarks/foldin_eval.py`)."""

MEASURED_CACHE_HIT = 0.906
"""Result cache hit ratio of a warmed router under Zipf s=1.1 over 100,000 users: docs/benchmarks.md,
result cache (`python benchmarks/result_cache.py --seconds 8 --warmup 4`)."""

Overhead = Literal["constant", "rows", "nnz"]


@dataclass(frozen=True)
class AlsFit:
    """One ALS iteration's CPU: `a_ns` per (nonzero x factor), `b_ns` per (row x factor^2), and
    `c_s` seconds independent of the factors at the measured `nnz` and `rows`."""

    a_ns: float
    b_ns: float
    c_s: float
    nnz: int
    rows: int

    def cpu_seconds(self, *, nnz: float, rows: float, factors: int, overhead: Overhead = "rows") -> float:
        """CPU seconds of one iteration on `nnz` nonzeros and `rows` users + items; the
        f-independent part scales with `overhead` (kept as measured, by rows, or by nonzeros)."""
        scale = {"constant": 1.0, "rows": rows / self.rows, "nnz": nnz / self.nnz}[overhead]
        return (self.a_ns * nnz * factors + self.b_ns * rows * factors**2) * 1e-9 + self.c_s * scale


def fit_als_cost(measured: AlsMeasurement, which: str = "median") -> AlsFit:
    """Least squares of `t(f) = a nnz f + b rows f^2 + c` through the points' `which` CPU (median,
    min or max), every coefficient >= 0: of the fits of every subset of the three terms with no
    negative coefficient, the one with the smallest squared error."""
    if len(measured.points) < 3:
        raise PipelineError("the ALS cost fit needs at least three factor counts")
    rows = measured.users + measured.items
    f = np.array([p.factors for p in measured.points], dtype=np.float64)
    columns = np.c_[measured.nnz * f * 1e-9, rows * f**2 * 1e-9, np.ones_like(f)]
    y = np.array([getattr(p, f"cpu_s_{which}") for p in measured.points], dtype=np.float64)
    best: tuple[float, np.ndarray] | None = None
    for size in (3, 2, 1):
        for subset in itertools.combinations(range(3), size):
            solution, *_ = np.linalg.lstsq(columns[:, subset], y, rcond=None)
            if (solution < 0).any():
                continue
            coefficients = np.zeros(3)
            coefficients[list(subset)] = solution
            error = float(((columns @ coefficients - y) ** 2).sum())
            if best is None or error < best[0] - 1e-15:
                best = (error, coefficients)
    assert best is not None  # the intercept alone is never negative for positive times
    a, b, c = (float(value) for value in best[1])
    return AlsFit(a_ns=a, b_ns=b, c_s=c, nnz=measured.nnz, rows=rows)


def als_iteration_estimate(
    als: AlsMeasurement, *, nnz: float, rows: float, factors: int
) -> tuple[float, float, float]:
    """(low, estimate, high) CPU seconds of one ALS iteration on `nnz` nonzeros and `rows` users +
    items: the estimate is the medians' fit with the factor-independent part scaled by rows; the
    range runs from the fastest runs' fit with that part scaled least (kept constant, by rows or by
    nonzeros) to the slowest runs' fit with it scaled most."""
    overheads: tuple[Overhead, ...] = ("constant", "rows", "nnz")
    fit, fastest, slowest = fit_als_cost(als), fit_als_cost(als, "min"), fit_als_cost(als, "max")
    low = min(fastest.cpu_seconds(nnz=nnz, rows=rows, factors=factors, overhead=o) for o in overheads)
    high = max(slowest.cpu_seconds(nnz=nnz, rows=rows, factors=factors, overhead=o) for o in overheads)
    return low, fit.cpu_seconds(nnz=nnz, rows=rows, factors=factors), high


@dataclass(frozen=True)
class AlsCalibration:
    """Measured / fitted CPU on the checks: `ratio` at the check whose nonzeros per row are nearest
    the target's (of those, the largest), `largest_ratio` the highest of any check."""

    ratio: float
    largest_ratio: float
    check: AlsCheck | None


def als_calibration(als: AlsMeasurement, *, nnz: float, rows: float) -> AlsCalibration:
    """How far the fit's estimate fell below the larger measurements: 1 without checks."""
    if not als.checks:
        return AlsCalibration(1.0, 1.0, None)

    def ratio(check: AlsCheck) -> float:
        estimate = als_iteration_estimate(
            als, nnz=check.nnz, rows=check.users + check.items, factors=check.factors
        )[1]
        return check.cpu_s / estimate

    density = math.log(nnz / rows)
    nearest = min(
        als.checks, key=lambda c: (round(abs(math.log(c.nnz / (c.users + c.items)) - density), 1), -c.nnz)
    )
    return AlsCalibration(ratio(nearest), max(ratio(c) for c in als.checks), nearest)


# --- the assumptions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineTarget:
    """The pipeline's assumptions. Field `foo_bar` is the CLI flag `--foo-bar`."""

    daily_active_users: int = 100_000_000
    requests_per_user_day: float = 10.0
    events_per_user_day: float = 10.0
    event_bytes: float = 200.0
    event_peak_factor: float = 3.0
    partition_mib_per_second: float = 5.0
    partition_events_per_second: float = 2_000.0
    log_replication: int = 3
    log_retention_days: float = 7.0
    training_interactions_per_user: float = 100.0
    training_iterations: int = 10
    train_every_hours: float = 24.0
    training_deadline_hours: float = 2.0
    item_writes_per_day: float = 100_000.0
    foldin_share: float = 1.0
    ranking_candidates: int = 200
    ranking_us_per_candidate: float = 5.0
    ab_share: float = 0.05
    regions: int = 2
    core_hour_usd: float = 0.03
    gib_hour_usd: float = 0.0045

    def check(self) -> None:
        """Raise PipelineError naming the first flag out of range."""
        for item in fields(self):
            value = getattr(self, item.name)
            if not math.isfinite(value) or value < 0:
                raise PipelineError(f"{pipeline_flag(item.name)} must be 0 or more, got {value}")
        positive = (
            "daily_active_users", "requests_per_user_day", "event_bytes", "partition_mib_per_second",
            "partition_events_per_second",
            "log_replication", "training_iterations", "train_every_hours", "training_deadline_hours",
            "ranking_candidates", "regions",
        )  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise PipelineError(
                    f"{pipeline_flag(name)} must be greater than 0, got {getattr(self, name)}"
                )
        if self.event_peak_factor < 1:
            raise PipelineError(f"--event-peak-factor must be at least 1, got {self.event_peak_factor}")
        for name in ("foldin_share", "ab_share"):
            if getattr(self, name) > 1:
                raise PipelineError(f"{pipeline_flag(name)} must be within [0, 1], got {getattr(self, name)}")


def pipeline_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


PIPELINE_FIELDS = tuple(f.name for f in fields(PipelineTarget))


# --- the answer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """Every figure of the pipeline, in SI units (events, bytes, seconds, cores, USD)."""

    target: PipelineTarget
    plan: Plan
    # events
    events_per_day: float
    events_mean_per_s: float
    events_peak_per_s: float
    event_bytes_per_day: float
    log_peak_bytes_per_s: float
    log_partitions: int
    log_stored_bytes: float
    # training
    training_nnz: float
    training_rows: int
    training_factors: int
    als_fit: AlsFit
    als_iteration_cpu_s: float
    als_iteration_cpu_s_low: float
    als_iteration_cpu_s_high: float
    extrapolation_nnz: float
    als_calibration: float
    als_calibration_largest: float
    als_calibration_check_nnz: int
    extrapolation_checked_nnz: float
    training_core_hours: float
    training_core_hours_low: float
    training_core_hours_high: float
    training_cores: int
    training_memory_bytes: float
    trainings_per_day: float
    # freshness
    item_writes_mean_per_s: float
    item_writes_peak_per_s: float
    writes_per_leader_peak: float
    measured_writes_per_leader: float
    foldin_cpu_ms: float
    foldin_cores: float
    # caching
    cache_hit_ratio: float
    shard_cores_saved_by_cache: float
    # ranking
    ranking_ef_searched: int
    ranking_retrieval_extra_cores: float
    ranking_cpu_ms: float
    ranking_cores: float
    # A/B
    ab_arm_replicas: int
    ab_extra_pods: int
    ab_extra_cores: float
    ab_candidate_pods: int
    ab_candidate_cores: float
    # regions
    regions: int
    cores_all_regions: float
    cross_region_bytes_per_s: float
    # cost
    requests_per_day: float
    serving_usd_per_day: float
    serving_usd_per_1k: float
    pipeline_usd_per_day: float
    pipeline_usd_per_1k: float
    all_regions_usd_per_day: float
    all_regions_usd_per_1k: float


def make_pipeline(
    pt: PipelineTarget, plan: Plan, ranking_plan: Plan, als: AlsMeasurement = MEASURED_ALS
) -> Pipeline:
    """The pipeline for `plan` (the serving plan) under `pt`; `ranking_plan` is the same target
    planned at k = `pt.ranking_candidates` (the retrieval a ranking stage would ask for); `als` the
    measured training points (default: the committed train-rate table)."""
    pt.check()
    t = plan.target
    if ranking_plan.target.k != pt.ranking_candidates:
        raise PipelineError("the ranking plan must be planned at k = --ranking-candidates")
    hours = 24.0

    # Events: one log, keyed by user; partitions for the peak at the assumed bytes per partition
    # (the log's write limit) and events per partition (what one consumer processes).
    events_day = pt.daily_active_users * pt.events_per_user_day
    events_mean = events_day / SECONDS_PER_DAY
    events_peak = events_mean * pt.event_peak_factor
    bytes_day = events_day * pt.event_bytes
    peak_bytes = events_peak * pt.event_bytes
    partitions = max(
        1,
        math.ceil(peak_bytes / (pt.partition_mib_per_second * MIB) - 1e-9),
        math.ceil(events_peak / pt.partition_events_per_second - 1e-9),
    )

    # Training: ALS over (users with an embedding) x items at the plan's dimension.
    fit = fit_als_cost(als)
    nnz = t.users * pt.training_interactions_per_user
    rows = t.users + t.items
    f = t.dimension
    # The fit on the small data set, scaled by how far it fell below the larger checks: the check
    # nearest the target's nonzeros per row for the estimate, the largest for the high end; the low
    # end is the small data set's own.
    iteration_low, fitted, fitted_high = als_iteration_estimate(als, nnz=nnz, rows=rows, factors=f)
    calibration = als_calibration(als, nnz=nnz, rows=rows)
    iteration = fitted * calibration.ratio
    iteration_high = max(fitted_high * calibration.largest_ratio, iteration)
    iteration_low = min(iteration_low, iteration)
    largest_check = max((c.nnz for c in als.checks), default=als.nnz)
    core_hours = iteration * pt.training_iterations / 3600.0
    trainings = hours / pt.train_every_hours
    # Factors of both sides (float32) + the matrix in both orientations (CSR: int32 index +
    # float32 value per nonzero, int64 row pointers).
    training_memory = FLOAT32 * rows * f + 2 * nnz * 8 + 8 * (rows + 2)

    # Freshness: item writes spread over the shards' leaders (one per shard).
    writes_mean = pt.item_writes_per_day / SECONDS_PER_DAY
    writes_peak = writes_mean * pt.event_peak_factor
    low, _, measured_shards = MEASURED_WRITES
    foldin_ms, _ = MEASURED_FOLDIN_MS
    foldin_cores = t.peak_qps * pt.foldin_share * foldin_ms / 1000.0 / t.cpu_utilisation

    # Ranking: retrieval at k = candidates, then a model scoring each candidate.
    ranking_ms = pt.ranking_candidates * pt.ranking_us_per_candidate / 1000.0
    ranking_cores = t.peak_qps * ranking_ms / 1000.0 / t.cpu_utilisation

    # A/B by user across layouts: the B arm is a second layout serving `ab_share` of the users.
    # As the product runs it (a canary held at a weight step) the candidate starts every shard at
    # replicasPerShard, the plan's full size (what blue/green places), and that is what is costed;
    # sized for its share alone (CPU at the target utilisation, zone loss) it would need less.
    arm_load = t.peak_qps * pt.ab_share
    arm_replicas = (
        replicas_for_zone_loss(
            replicas_for_cpu(arm_load * plan.shard_cpu_ms / 1000.0, t.shard_pod_cores, t.cpu_utilisation),
            t.zones,
        )
        if arm_load > 0
        else 0
    )
    ab_pods = plan.shards * arm_replicas

    serving_cores = plan.cores
    serving_gib = plan.memory_requested_bytes / GIB + (
        0.0 if plan.user_table_in_router else plan.user_memory_bytes / GIB
    )
    serving_day = hours * (serving_cores * pt.core_hour_usd + serving_gib * pt.gib_hour_usd)
    retrieval_extra = max(ranking_plan.cores - plan.cores, 0.0)
    candidate_pods = plan.blue_green_extra_pods if pt.ab_share > 0 else 0
    extra_cores = foldin_cores + retrieval_extra + ranking_cores + candidate_pods * t.shard_pod_cores
    extra_gib = candidate_pods * t.shard_pod_memory_gib
    training_day = trainings * (
        core_hours * pt.core_hour_usd + training_memory / GIB * pt.training_deadline_hours * pt.gib_hour_usd
    )
    pipeline_day = (
        serving_day + hours * (extra_cores * pt.core_hour_usd + extra_gib * pt.gib_hour_usd) + training_day
    )
    requests_day = pt.daily_active_users * pt.requests_per_user_day
    per_1k = 1000.0 / requests_day
    # Every region runs the whole plan (each can take every user when the others are down) and its
    # own serving extras; training runs once and its output is copied. Events cross to each other
    # region once.
    all_regions_day = pt.regions * (pipeline_day - training_day) + training_day
    return Pipeline(
        target=pt,
        plan=plan,
        events_per_day=events_day,
        events_mean_per_s=events_mean,
        events_peak_per_s=events_peak,
        event_bytes_per_day=bytes_day,
        log_peak_bytes_per_s=peak_bytes,
        log_partitions=partitions,
        log_stored_bytes=bytes_day * pt.log_retention_days * pt.log_replication,
        training_nnz=nnz,
        training_rows=rows,
        training_factors=f,
        als_fit=fit,
        als_iteration_cpu_s=iteration,
        als_iteration_cpu_s_low=iteration_low,
        als_iteration_cpu_s_high=iteration_high,
        extrapolation_nnz=nnz / als.nnz,
        als_calibration=calibration.ratio,
        als_calibration_largest=calibration.largest_ratio,
        als_calibration_check_nnz=calibration.check.nnz if calibration.check else 0,
        extrapolation_checked_nnz=nnz / largest_check,
        training_core_hours=core_hours,
        training_core_hours_low=iteration_low * pt.training_iterations / 3600.0,
        training_core_hours_high=iteration_high * pt.training_iterations / 3600.0,
        training_cores=max(1, math.ceil(core_hours / pt.training_deadline_hours - 1e-9)),
        training_memory_bytes=training_memory,
        trainings_per_day=trainings,
        item_writes_mean_per_s=writes_mean,
        item_writes_peak_per_s=writes_peak,
        writes_per_leader_peak=writes_peak / plan.shards,
        measured_writes_per_leader=low / measured_shards,
        foldin_cpu_ms=foldin_ms,
        foldin_cores=foldin_cores,
        cache_hit_ratio=MEASURED_CACHE_HIT,
        shard_cores_saved_by_cache=MEASURED_CACHE_HIT * plan.shard_pods * t.shard_pod_cores,
        ranking_ef_searched=ranking_plan.ef_searched,
        ranking_retrieval_extra_cores=retrieval_extra,
        ranking_cpu_ms=ranking_ms,
        ranking_cores=ranking_cores,
        ab_arm_replicas=arm_replicas,
        ab_extra_pods=ab_pods,
        ab_extra_cores=ab_pods * t.shard_pod_cores,
        ab_candidate_pods=candidate_pods,
        ab_candidate_cores=candidate_pods * t.shard_pod_cores,
        regions=pt.regions,
        cores_all_regions=pt.regions * (serving_cores + extra_cores),
        cross_region_bytes_per_s=(pt.regions - 1) * bytes_day / SECONDS_PER_DAY,
        requests_per_day=requests_day,
        serving_usd_per_day=serving_day,
        serving_usd_per_1k=serving_day * per_1k,
        pipeline_usd_per_day=pipeline_day,
        pipeline_usd_per_1k=pipeline_day * per_1k,
        all_regions_usd_per_day=all_regions_day,
        all_regions_usd_per_1k=all_regions_day * per_1k,
    )
