"""The tail at scale, simulated: scatter-gather latency against shards, replicas, hedging and load.

Model (seeded, plain numpy):
- Client requests arrive as a Poisson process. Every request goes to every shard (fan-out), and
  the router answers when the slowest shard has answered: latency = max over shards.
- Each shard has `replicas` replicas; the primary copy of a shard request goes to one replica
  chosen uniformly at random (the real router's power-of-two-choices does better, so the model
  is pessimistic there). Each replica is one FIFO server whose service times are drawn from the
  MEASURED per-shard latency distribution (`Coefficients.shard_latency_ms`, inverse CDF).
- `utilisation` is the primary load of one replica: arrival rate / replicas x mean service.
- Hedging: a shard request unanswered after `hedge_after_ms` is sent to another replica; the
  first answer wins. Both copies are served in full (the loser's cancellation does not stop a
  search that started), which is what hedging costs. A token bucket allows at most
  `hedge_budget` hedges per primary request, banking at most 10 (as `router.hedging`).
  The hedged copies load the queues, which changes who is slow: a short fixed-point iteration
  (hedges of pass i are the queue load of pass i+1) settles it.

Waiting times use the Lindley recursion in closed form, W_n = P_n - min_{k<=n} P_k with
P_n = sum_{j<n} (S_j - (a_{j+1} - a_j)), so every queue is a handful of vectorised numpy calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

MAX_BANKED_HEDGES = 10
HEDGE_PASSES = 3


class SimulationError(ValueError):
    """A scenario that cannot be simulated; the message names the parameter."""


@dataclass(frozen=True)
class ServiceTime:
    """A latency distribution given by quantiles (piecewise-linear inverse CDF)."""

    quantiles: tuple[float, ...]
    ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.quantiles) != len(self.ms) or len(self.ms) < 2:
            raise SimulationError("service time: quantiles and ms need the same length (>= 2)")
        if self.quantiles[0] != 0.0 or self.quantiles[-1] != 1.0:
            raise SimulationError("service time: quantiles must run from 0.0 to 1.0")
        if np.any(np.diff(self.quantiles) <= 0) or np.any(np.diff(self.ms) < 0) or self.ms[0] < 0:
            raise SimulationError("service time: quantiles must increase and ms must not decrease")

    def sample(self, rng: np.random.Generator, size: int) -> Floats:
        return np.interp(rng.random(size), self.quantiles, self.ms)

    @property
    def mean_ms(self) -> float:
        q, ms = np.asarray(self.quantiles), np.asarray(self.ms)
        return float(np.sum(np.diff(q) * (ms[1:] + ms[:-1]) / 2.0))

    def quantile_ms(self, q: float) -> float:
        return float(np.interp(q, self.quantiles, self.ms))


@dataclass(frozen=True)
class Scenario:
    shards: int
    replicas: int
    utilisation: float
    hedge_after_ms: float | None = None
    hedge_budget: float = 0.1
    requests: int = 20_000
    seed: int = 0
    router_ms: float = 0.0
    deadline_ms: float | None = None

    def check(self) -> None:
        if self.shards < 1:
            raise SimulationError(f"shards must be at least 1, got {self.shards}")
        if self.replicas < 1:
            raise SimulationError(f"replicas must be at least 1, got {self.replicas}")
        if not 0 < self.utilisation < 1:
            raise SimulationError(f"utilisation must be within (0, 1), got {self.utilisation}")
        if self.hedge_after_ms is not None and self.hedge_after_ms < 0:
            raise SimulationError(f"hedge_after_ms must be 0 or more, got {self.hedge_after_ms}")
        if not 0 <= self.hedge_budget <= 1:
            raise SimulationError(f"hedge_budget must be within [0, 1], got {self.hedge_budget}")
        if self.requests < 100:
            raise SimulationError(f"requests must be at least 100, got {self.requests}")


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    p50_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    hedge_rate: float
    """Hedged shard requests per primary shard request."""
    extra_load: float
    """Service time of hedge copies / service time of primaries: the extra CPU hedging costs."""
    late_fraction: float
    """Requests slower than `deadline_ms` (0 without a deadline)."""
    latencies_ms: Floats = field(repr=False, compare=False)


def fifo_latencies(arrivals: Floats, services: Floats) -> Floats:
    """Response times (wait + service) of one FIFO server, for arrivals sorted by time."""
    if len(arrivals) == 0:
        return np.zeros(0)
    steps = services[:-1] - np.diff(arrivals)
    prefix = np.concatenate(([0.0], np.cumsum(steps)))
    waits = prefix - np.minimum.accumulate(prefix)
    return waits + services


def _queue_latencies(replica: Ints, arrivals: Floats, services: Floats, replicas: int) -> Floats:
    """Response time of every job, each replica a FIFO server over its jobs in arrival order."""
    out = np.empty_like(arrivals)
    order = np.lexsort((arrivals, replica))
    bounds = np.searchsorted(replica[order], np.arange(replicas + 1))
    for r in range(replicas):
        jobs = order[bounds[r] : bounds[r + 1]]
        out[jobs] = fifo_latencies(arrivals[jobs], services[jobs])
    return out


def _budgeted(eligible: npt.NDArray[np.bool_], budget: float) -> npt.NDArray[np.bool_]:
    """Which eligible requests (in arrival order) the token bucket lets hedge."""
    if budget >= 1.0:
        return eligible.copy()
    chosen = np.zeros_like(eligible)
    if budget <= 0.0:
        return chosen
    # Whole hundredths, exactly like router.hedging.HedgeBudget.
    earn, cost, cap = round(budget * 100), 100, MAX_BANKED_HEDGES * 100
    balance, last = 0, -1
    for i in np.flatnonzero(eligible).tolist():
        balance = min(cap, balance + earn * (i - last))
        last = i
        if balance >= cost:
            balance -= cost
            chosen[i] = True
    return chosen


def _one_shard(
    arrivals: Floats, service: ServiceTime, scenario: Scenario, rng: np.random.Generator
) -> tuple[Floats, int, float, float]:
    """(per-request latency, hedges, hedge service ms, primary service ms) of one shard."""
    n, replicas = len(arrivals), scenario.replicas
    primary_replica = rng.integers(0, replicas, size=n)
    primary_service = service.sample(rng, n)
    other = (primary_replica + rng.integers(1, max(replicas, 2), size=n)) % replicas
    hedge_service = service.sample(rng, n)
    latency = _queue_latencies(primary_replica, arrivals, primary_service, replicas)
    h = scenario.hedge_after_ms
    if h is None or replicas < 2:
        return latency, 0, 0.0, float(primary_service.sum())
    hedged = np.zeros(n, dtype=bool)
    for _ in range(HEDGE_PASSES):
        hedged = _budgeted(latency > h, scenario.hedge_budget)
        idx = np.flatnonzero(hedged)
        jobs_replica = np.concatenate((primary_replica, other[idx]))
        jobs_arrival = np.concatenate((arrivals, arrivals[idx] + h))
        jobs_service = np.concatenate((primary_service, hedge_service[idx]))
        all_latency = _queue_latencies(jobs_replica, jobs_arrival, jobs_service, replicas)
        latency = all_latency[:n].copy()
        copy_latency = h + all_latency[n:]
        answered = latency.copy()
        answered[idx] = np.minimum(latency[idx], copy_latency)
    return answered, int(hedged.sum()), float(hedge_service[hedged].sum()), float(primary_service.sum())


def simulate(service: ServiceTime, scenario: Scenario) -> Outcome:
    scenario.check()
    rng = np.random.default_rng(scenario.seed)
    rate_per_ms = scenario.utilisation * scenario.replicas / service.mean_ms
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_ms, size=scenario.requests))
    slowest = np.zeros(scenario.requests)
    hedges, hedge_ms, primary_ms = 0, 0.0, 0.0
    for _ in range(scenario.shards):
        latency, n_hedges, h_ms, p_ms = _one_shard(arrivals, service, scenario, rng)
        np.maximum(slowest, latency, out=slowest)
        hedges += n_hedges
        hedge_ms += h_ms
        primary_ms += p_ms
    latencies = slowest + scenario.router_ms
    # The first 5% warm the queues up from empty; they are not counted.
    settled = latencies[scenario.requests // 20 :]
    p50, p99, p999 = np.percentile(settled, [50, 99, 99.9])
    late = 0.0 if scenario.deadline_ms is None else float(np.mean(settled > scenario.deadline_ms))
    return Outcome(
        scenario=scenario,
        p50_ms=float(p50),
        p99_ms=float(p99),
        p999_ms=float(p999),
        mean_ms=float(settled.mean()),
        hedge_rate=hedges / (scenario.requests * scenario.shards),
        extra_load=hedge_ms / primary_ms if primary_ms else 0.0,
        late_fraction=late,
        latencies_ms=settled,
    )
