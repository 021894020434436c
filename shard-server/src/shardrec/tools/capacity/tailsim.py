"""The tail at scale, simulated: scatter-gather latency against shards, replicas, hedging and CPU load.

State and model (seeded, plain numpy):
- Client requests arrive as a Poisson process (or `sequential`: each after the last has left, so
  every queue is empty when it arrives, like a closed loop of one client).
- Router: `Costs.router_workers` FIFO servers (the router's worker processes). A request occupies
  one for its router CPU time (`Costs.router_cpu_ms`), then fans out to every shard; the router
  answers when the slowest shard has answered.
- Shards: each has `replicas` replicas; the primary copy of a shard request goes to one replica
  chosen uniformly at random (the real router's power-of-two-choices does better, so the model is
  pessimistic there). A replica is `threads` FIFO servers (its search threads). A shard request
  OCCUPIES a search thread for its CPU time (`Costs.shard_cpu`: search plus per-query overhead),
  and then takes `Costs.shard_rest` more wall time that occupies nothing (network, HTTP, event-loop
  wake-ups). `Costs.split` derives the rest from a measured unloaded wall-latency distribution
  minus the CPU, so an idle system answers exactly as measured.
  Shard latency = wait for a thread + CPU + rest; request latency = router wait + router CPU +
  the slowest shard.
- Load: `utilisation` is the CPU load of the search threads, arrival rate x mean shard CPU /
  (replicas x threads) (hedge copies come on top, reported as `extra_load`). It is not a wall-time
  load: a replica whose searches take 0.07 ms of CPU and 0.5 ms of wall time is at 7% per 1000 req/s.
  The router's own CPU load is reported as `router_utilisation`.
- Hedging: a shard request unanswered after `hedge_after_ms` is sent to another replica; the
  first answer wins. Both copies are served in full (the loser's cancellation does not stop a
  search that started), which is what hedging costs. A token bucket allows at most
  `hedge_budget` hedges per primary request, banking at most 10 (as `router.hedging`).
  The hedged copies load the queues, which changes who is slow: a short fixed-point iteration
  (hedges of pass i are the queue load of pass i+1) settles it.
- Correlated slowness (`slow`): replica 0 of shard 0 takes `factor` x the CPU time per search for
  the requests that arrive within a window (a CPU-starved or throttled pod); the outcome reports the
  latency of the requests inside the window separately.

- Shared cores (`Scenario.cores`, optional): without it every server has its own core. With it
  every process of the fleet (router workers, shard replicas and, if it has a CPU cost, the load
  generator) runs on one pool of `SharedCores.count` cores, and `simulate_shared_cores` replaces the
  closed forms with an event simulation (its docstring states that model).

Not modelled: garbage collection and the client's own HTTP exchange with the router; without
`Scenario.cores`, CPU contention between processes and the load generator.

Single-server waiting times use the Lindley recursion in closed form, W_n = P_n - min_{k<=n} P_k
with P_n = sum_{j<n} (S_j - (a_{j+1} - a_j)); several servers use a heap of free times.
Percentiles over several seeds (`simulate_seeds`) come as the mean and a 95% t-interval of the mean.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

MAX_BANKED_HEDGES = 10
# Linux (EEVDF, kernel 6.6+) gives a runnable task a slice of base_slice_ns = 0.75 ms x
# (1 + log2 of the CPU count, at most 8): 1.5 ms on the 2-core machine of `make tail-check`.
LINUX_SLICE_MS_ON_2_CORES = 1.5
# The event simulation of shared cores stops (SimulationError) past this many events.
MAX_SHARED_CORE_EVENTS = 5_000_000
HEDGE_PASSES = 3
WARM_UP = 0.05
SEQUENTIAL_GAP_MS = 1e6
# Two-sided 95% Student t quantiles by degrees of freedom (beyond 30: the normal 1.96).
T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip


class SimulationError(ValueError):
    """A scenario that cannot be simulated; the message names the parameter."""


@dataclass(frozen=True)
class ServiceTime:
    """A time distribution given by quantiles (piecewise-linear inverse CDF)."""

    quantiles: tuple[float, ...]
    ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.quantiles) != len(self.ms) or len(self.ms) < 2:
            raise SimulationError("service time: quantiles and ms need the same length (>= 2)")
        if self.quantiles[0] != 0.0 or self.quantiles[-1] != 1.0:
            raise SimulationError("service time: quantiles must run from 0.0 to 1.0")
        if np.any(np.diff(self.quantiles) <= 0) or np.any(np.diff(self.ms) < 0) or self.ms[0] < 0:
            raise SimulationError("service time: quantiles must increase and ms must not decrease")

    @classmethod
    def constant(cls, ms: float) -> ServiceTime:
        return cls((0.0, 1.0), (ms, ms))

    def sample(self, rng: np.random.Generator, size: int) -> Floats:
        if self.ms[0] == self.ms[-1]:  # a constant: no draws
            return np.full(size, self.ms[0])
        return np.interp(rng.random(size), self.quantiles, self.ms)

    @property
    def mean_ms(self) -> float:
        q, ms = np.asarray(self.quantiles), np.asarray(self.ms)
        return float(np.sum(np.diff(q) * (ms[1:] + ms[:-1]) / 2.0))

    def quantile_ms(self, q: float) -> float:
        return float(np.interp(q, self.quantiles, self.ms))


@dataclass(frozen=True)
class Costs:
    """What a request costs: CPU that occupies a server, and wall time that occupies nothing."""

    shard_cpu: ServiceTime
    """CPU ms of one shard request (search + per-query overhead): a search thread's occupancy."""
    shard_rest: ServiceTime
    """Wall ms of one shard request beyond its CPU and its wait (network, HTTP, wake-ups)."""
    router_cpu_ms: float = 0.0
    router_workers: int = 1

    @classmethod
    def split(
        cls, unloaded_wall: ServiceTime, cpu_ms: float, router_cpu_ms: float = 0.0, router_workers: int = 1
    ) -> Costs:
        """CPU `cpu_ms` (fixed: only its mean is measured) and the rest of a measured unloaded wall
        latency (its quantiles minus the CPU, at least 0)."""
        if cpu_ms <= 0:
            raise SimulationError(f"shard CPU must be positive, got {cpu_ms}")
        rest = tuple(max(ms - cpu_ms, 0.0) for ms in unloaded_wall.ms)
        return cls(
            ServiceTime.constant(cpu_ms),
            ServiceTime(unloaded_wall.quantiles, rest),
            router_cpu_ms,
            router_workers,
        )

    def unloaded_ms(self, q: float) -> float:
        """Approximate quantile of one idle shard's latency (CPU + rest)."""
        return self.shard_cpu.mean_ms + self.shard_rest.quantile_ms(q)


@dataclass(frozen=True)
class SlowReplica:
    """Replica 0 of shard 0 runs `factor` x slower for the requests with index in the window
    [start, start + length) (fractions of the run)."""

    factor: float
    start: float = 0.4
    length: float = 0.2


@dataclass(frozen=True)
class SharedCores:
    """A pool of `count` cores that every process of the fleet runs on (`simulate_shared_cores`).

    On a machine of its own (the local check) `count` is its cores; a fleet of pods on dedicated
    cores is approximated by `count` = the sum of the pods' CPU requests (`pooled_cores`), which is
    optimistic: a pool lets a busy shard borrow an idle router's core, pods cannot."""

    count: int
    quantum_ms: float = LINUX_SLICE_MS_ON_2_CORES
    """A job holds a core for at most this long before it goes to the back of the run queue."""
    router_before_fanout: float = 0.5
    """The share of the router's CPU per request spent before the fan-out (parse, send to the
    shards); the rest comes after the last shard answered (read, merge, answer)."""
    loadgen_cpu_ms: float = 0.0
    """The load generator's CPU per request (0: it does not run on the pool); half to send
    (before the latency clock starts), half to read the answer (before it stops)."""
    background_cores: float = 0.0
    """Other work on the same cores, in cores: CPU-bound bursts of one quantum, Poisson."""

    def check(self) -> None:
        if self.count < 1:
            raise SimulationError(f"cores: count must be at least 1, got {self.count}")
        if self.quantum_ms <= 0:
            raise SimulationError(f"cores: quantum_ms must be positive, got {self.quantum_ms}")
        if not 0 <= self.router_before_fanout <= 1:
            raise SimulationError(
                f"cores: router_before_fanout must be within [0, 1], got {self.router_before_fanout}"
            )
        if self.loadgen_cpu_ms < 0:
            raise SimulationError(f"cores: loadgen_cpu_ms must be 0 or more, got {self.loadgen_cpu_ms}")
        if not 0 <= self.background_cores < self.count:
            raise SimulationError(
                f"cores: background_cores must be within [0, count), got {self.background_cores}"
            )


def pooled_cores(shard_pods: int, shard_pod_cores: float, router_pods: int, router_pod_cores: float) -> int:
    """The planner's fleet (every pod with its CPU request) as one pool: the sum of the requests."""
    return max(1, math.floor(shard_pods * shard_pod_cores + router_pods * router_pod_cores))


@dataclass(frozen=True)
class Scenario:
    shards: int
    replicas: int
    utilisation: float
    threads: int = 1
    hedge_after_ms: float | None = None
    hedge_budget: float = 0.1
    requests: int = 20_000
    seed: int = 0
    sequential: bool = False
    deadline_ms: float | None = None
    slow: SlowReplica | None = None
    cores: SharedCores | None = None
    """Every process on one pool of cores (None: each server has its own core)."""
    clients: int | None = None
    """A closed loop of this many clients (each sends when its last request answered) instead of
    Poisson arrivals; more than one needs `cores` (the closed forms have no closed loop)."""

    def check(self) -> None:
        if self.shards < 1:
            raise SimulationError(f"shards must be at least 1, got {self.shards}")
        if self.replicas < 1:
            raise SimulationError(f"replicas must be at least 1, got {self.replicas}")
        if self.threads < 1:
            raise SimulationError(f"threads must be at least 1, got {self.threads}")
        if not 0 < self.utilisation < 1:
            raise SimulationError(f"utilisation must be within (0, 1), got {self.utilisation}")
        if self.hedge_after_ms is not None and self.hedge_after_ms < 0:
            raise SimulationError(f"hedge_after_ms must be 0 or more, got {self.hedge_after_ms}")
        if not 0 <= self.hedge_budget <= 1:
            raise SimulationError(f"hedge_budget must be within [0, 1], got {self.hedge_budget}")
        if self.requests < 100:
            raise SimulationError(f"requests must be at least 100, got {self.requests}")
        if self.slow is not None and (
            self.slow.factor < 1
            or not 0 <= self.slow.start < 1
            or not 0 < self.slow.length <= 1 - self.slow.start
        ):
            raise SimulationError(f"slow: factor >= 1 and a window within the run, got {self.slow}")
        if self.clients is not None and self.clients < 1:
            raise SimulationError(f"clients must be at least 1, got {self.clients}")
        if self.cores is None:
            if self.clients is not None and self.clients > 1:
                raise SimulationError("clients: a closed loop of several clients needs cores")
            return
        self.cores.check()
        if self.hedge_after_ms is not None:
            raise SimulationError("hedge_after_ms: hedging is not simulated on shared cores")


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
    """CPU of hedge copies / CPU of primaries: the extra CPU hedging costs."""
    late_fraction: float
    """Requests slower than `deadline_ms` (0 without a deadline)."""
    router_utilisation: float
    """CPU load of the router's workers."""
    counted: int
    """Requests the percentiles are taken over (after the warm-up)."""
    window_p50_ms: float | None = None
    window_p99_ms: float | None = None
    """Percentiles of the requests that arrived while a replica was slow (`Scenario.slow`)."""
    achieved_per_s: float | None = None
    """Shared cores: answered requests per second (what a closed loop reaches)."""
    core_utilisation: float | None = None
    """Shared cores: CPU used (the fleet, the generator and the background) / cores, over the run."""
    latencies_ms: Floats = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)


def fifo_latencies(arrivals: Floats, services: Floats) -> Floats:
    """Response times (wait + service) of one FIFO server, for arrivals sorted by time."""
    if len(arrivals) == 0:
        return np.zeros(0)
    steps = services[:-1] - np.diff(arrivals)
    prefix = np.concatenate(([0.0], np.cumsum(steps)))
    waits = prefix - np.minimum.accumulate(prefix)
    return waits + services


def fifo_servers_latencies(arrivals: Floats, services: Floats, servers: int) -> Floats:
    """Response times of `servers` FIFO servers sharing one queue, for arrivals sorted by time."""
    if servers == 1:
        return fifo_latencies(arrivals, services)
    free = [0.0] * servers
    out = np.empty(len(arrivals))
    for i, (a, s) in enumerate(zip(arrivals.tolist(), services.tolist(), strict=True)):
        start = max(a, heapq.heappop(free))
        heapq.heappush(free, start + s)
        out[i] = start + s - a
    return out


def _queue_latencies(
    replica: Ints, arrivals: Floats, services: Floats, replicas: int, threads: int
) -> Floats:
    """Response time of every job, each replica `threads` FIFO servers over its jobs in arrival order."""
    out = np.empty_like(arrivals)
    by_time = np.argsort(arrivals, kind="stable")
    order = by_time[np.argsort(replica[by_time], kind="stable")]
    bounds = np.searchsorted(replica[order], np.arange(replicas + 1))
    for r in range(replicas):
        jobs = order[bounds[r] : bounds[r + 1]]
        out[jobs] = fifo_servers_latencies(arrivals[jobs], services[jobs], threads)
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


def _window(scenario: Scenario) -> slice:
    if scenario.slow is None:
        return slice(0, 0)
    n = scenario.requests
    first = int(scenario.slow.start * n)
    return slice(first, first + max(1, int(scenario.slow.length * n)))


def _one_shard(
    arrivals: Floats, costs: Costs, scenario: Scenario, rng: np.random.Generator, slow: bool
) -> tuple[Floats, int, float, float]:
    """(per-request latency, hedges, hedge CPU ms, primary CPU ms) of one shard."""
    n, replicas, threads = len(arrivals), scenario.replicas, scenario.threads
    primary_replica = rng.integers(0, replicas, size=n)
    primary_cpu = costs.shard_cpu.sample(rng, n)
    primary_rest = costs.shard_rest.sample(rng, n)
    h = scenario.hedge_after_ms
    hedging = h is not None and replicas > 1
    other = (
        (primary_replica + rng.integers(1, max(replicas, 2), size=n)) % replicas
        if hedging
        else primary_replica
    )
    hedge_cpu = costs.shard_cpu.sample(rng, n) if hedging else primary_cpu
    hedge_rest = costs.shard_rest.sample(rng, n) if hedging else primary_rest
    if slow and scenario.slow is not None:
        window = np.zeros(n, dtype=bool)
        window[_window(scenario)] = True
        primary_occupancy = np.where(
            window & (primary_replica == 0), primary_cpu * scenario.slow.factor, primary_cpu
        )
        hedge_occupancy = np.where(window & (other == 0), hedge_cpu * scenario.slow.factor, hedge_cpu)
    else:
        primary_occupancy, hedge_occupancy = primary_cpu, hedge_cpu
    latency = _queue_latencies(primary_replica, arrivals, primary_occupancy, replicas, threads) + primary_rest
    if h is None or not hedging:
        return latency, 0, 0.0, float(primary_cpu.sum())
    hedged = np.zeros(n, dtype=bool)
    answered = latency
    for _ in range(HEDGE_PASSES):
        hedged = _budgeted(latency > h, scenario.hedge_budget)
        idx = np.flatnonzero(hedged)
        jobs_replica = np.concatenate((primary_replica, other[idx]))
        jobs_arrival = np.concatenate((arrivals, arrivals[idx] + h))
        jobs_service = np.concatenate((primary_occupancy, hedge_occupancy[idx]))
        all_latency = _queue_latencies(jobs_replica, jobs_arrival, jobs_service, replicas, threads)
        latency = all_latency[:n] + primary_rest
        copy_latency = h + all_latency[n:] + hedge_rest[idx]
        answered = latency.copy()
        answered[idx] = np.minimum(latency[idx], copy_latency)
    return answered, int(hedged.sum()), float(hedge_cpu[hedged].sum()), float(primary_cpu.sum())


def arrival_rate_per_ms(costs: Costs, scenario: Scenario) -> float:
    """The request rate at which the search threads run at `scenario.utilisation` CPU load."""
    return scenario.utilisation * scenario.replicas * scenario.threads / costs.shard_cpu.mean_ms


def utilisation_at(costs: Costs, scenario: Scenario, rate_per_s: float) -> float:
    """The search threads' CPU load at `rate_per_s` requests per second (inverse of the above)."""
    return rate_per_s / 1000.0 * costs.shard_cpu.mean_ms / (scenario.replicas * scenario.threads)


def simulate(costs: Costs, scenario: Scenario) -> Outcome:
    scenario.check()
    if scenario.cores is not None:
        return simulate_shared_cores(costs, scenario)
    rng = np.random.default_rng(scenario.seed)
    n = scenario.requests
    rate_per_ms = arrival_rate_per_ms(costs, scenario)
    if scenario.sequential:
        arrivals = np.arange(n, dtype=np.float64) * SEQUENTIAL_GAP_MS
        rate_per_ms = 0.0
    else:
        arrivals = np.cumsum(rng.exponential(1.0 / rate_per_ms, size=n))
    router = fifo_servers_latencies(arrivals, np.full(n, costs.router_cpu_ms), costs.router_workers)
    fanned_out = arrivals + router
    slowest = np.zeros(n)
    hedges, hedge_ms, primary_ms = 0, 0.0, 0.0
    for shard in range(scenario.shards):
        latency, n_hedges, h_ms, p_ms = _one_shard(fanned_out, costs, scenario, rng, slow=shard == 0)
        np.maximum(slowest, latency, out=slowest)
        hedges += n_hedges
        hedge_ms += h_ms
        primary_ms += p_ms
    latencies = router + slowest
    window = _window(scenario)
    window_p50 = window_p99 = None
    if scenario.slow is not None:
        window_p50, window_p99 = (float(v) for v in np.percentile(latencies[window], [50, 99]))
    # The first 5% warm the queues up from empty; they are not counted.
    settled = latencies[int(n * WARM_UP) :]
    p50, p99, p999 = np.percentile(settled, [50, 99, 99.9])
    late = 0.0 if scenario.deadline_ms is None else float(np.mean(settled > scenario.deadline_ms))
    return Outcome(
        scenario=scenario,
        p50_ms=float(p50),
        p99_ms=float(p99),
        p999_ms=float(p999),
        mean_ms=float(settled.mean()),
        hedge_rate=hedges / (n * scenario.shards),
        extra_load=hedge_ms / primary_ms if primary_ms else 0.0,
        late_fraction=late,
        router_utilisation=rate_per_ms * costs.router_cpu_ms / costs.router_workers,
        counted=len(settled),
        window_p50_ms=window_p50,
        window_p99_ms=window_p99,
        latencies_ms=settled,
    )


# What a CPU job of the shared-core simulation is, and so what follows when it is done.
_SEND, _ROUTER_IN, _SHARD, _ROUTER_OUT, _READ, _BACKGROUND = range(6)
# Events: a request is due (open loop), a job's time on a core ends, a shard's answer reaches the
# router (after its rest), a background burst arrives.
_DUE, _SLICE_END, _ANSWER, _BURST = range(4)


class _Process:
    """A process of the fleet: `slots` threads, each running one job at a time, jobs in FIFO order."""

    __slots__ = ("active", "slots", "waiting")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.active = 0
        self.waiting: deque[_Job] = deque()


class _Job:
    """CPU work of one request on one process (or a background burst, which has no process)."""

    __slots__ = ("kind", "process", "remaining", "request", "shard")

    def __init__(
        self, kind: int, remaining: float, process: _Process | None, request: int, shard: int
    ) -> None:
        self.kind = kind
        self.remaining = remaining
        self.process = process
        self.request = request
        self.shard = shard


class _SharedCoreRun:
    """The event loop of `simulate_shared_cores`: state and handlers."""

    def __init__(self, costs: Costs, scenario: Scenario, cores: SharedCores) -> None:
        self.costs, self.scenario, self.cores = costs, scenario, cores
        n, shards = scenario.requests, scenario.shards
        rng = np.random.default_rng(scenario.seed)
        clients = scenario.clients if scenario.clients is not None else (1 if scenario.sequential else None)
        self.closed_loop = clients
        self.rate_per_ms = arrival_rate_per_ms(costs, scenario)
        # The same draws in the same order as `simulate` (arrivals, then per shard: replica, CPU,
        # rest), so that on enough cores both give the same latencies.
        self.arrivals = (
            np.cumsum(rng.exponential(1.0 / self.rate_per_ms, size=n)) if clients is None else np.zeros(n)
        )
        replica = np.empty((shards, n), dtype=np.int64)
        cpu = np.empty((shards, n))
        rest = np.empty((shards, n))
        for shard in range(shards):
            replica[shard] = rng.integers(0, scenario.replicas, size=n)
            cpu[shard] = costs.shard_cpu.sample(rng, n)
            rest[shard] = costs.shard_rest.sample(rng, n)
        if scenario.slow is not None:
            window = np.zeros(n, dtype=bool)
            window[_window(scenario)] = True
            cpu[0] = np.where(window & (replica[0] == 0), cpu[0] * scenario.slow.factor, cpu[0])
        # Draws the closed forms do not make come from a second stream, so the first stays aligned.
        self.extra = np.random.default_rng([scenario.seed, 1])
        # Python lists: the event loop reads them one element at a time, where numpy is slow.
        self.worker: list[int] = self.extra.integers(0, costs.router_workers, size=n).tolist()
        self.replica: list[list[int]] = replica.tolist()
        self.cpu: list[list[float]] = cpu.tolist()
        self.rest: list[list[float]] = rest.tolist()
        self.routers = [_Process(1) for _ in range(costs.router_workers)]
        self.shards = [[_Process(scenario.threads) for _ in range(scenario.replicas)] for _ in range(shards)]
        self.loadgen = _Process(1)
        self.router_in_ms = costs.router_cpu_ms * cores.router_before_fanout
        self.router_out_ms = costs.router_cpu_ms - self.router_in_ms
        self.loadgen_half_ms = cores.loadgen_cpu_ms / 2.0
        self.sent = [0.0] * n
        self.done = [0.0] * n
        self.unanswered = [shards] * n
        self.heap: list[tuple[float, int, int, _Job | None, int]] = []
        self.sequence = 0
        self.free_cores = cores.count
        self.run_queue: deque[_Job] = deque()
        self.busy_ms = 0.0
        self.issued = 0
        self.completed = 0
        self.events = 0

    def push(self, time: float, event: int, job: _Job | None, request: int) -> None:
        self.sequence += 1
        heapq.heappush(self.heap, (time, self.sequence, event, job, request))

    def run(self) -> None:
        if self.closed_loop is None:
            self.push(float(self.arrivals[0]), _DUE, None, 0)
        else:
            for _ in range(min(self.closed_loop, self.scenario.requests)):
                self.issue(0.0)
            self.dispatch(0.0)
        if self.cores.background_cores > 0:
            self.push(self.next_burst(0.0), _BURST, None, 0)
        n = self.scenario.requests
        while self.completed < n:
            self.events += 1
            if self.events > MAX_SHARED_CORE_EVENTS:
                raise SimulationError(
                    f"requests: more than {MAX_SHARED_CORE_EVENTS:,} events for {n:,} requests; "
                    "simulate fewer requests or a longer quantum_ms"
                )
            time, _, event, job, request = heapq.heappop(self.heap)
            if event == _SLICE_END:
                assert job is not None
                self.slice_ended(job, time)
            elif event == _ANSWER:
                self.unanswered[request] -= 1
                if self.unanswered[request] == 0:
                    worker = self.routers[self.worker[request]]
                    self.job(_Job(_ROUTER_OUT, self.router_out_ms, worker, request, 0), time)
            elif event == _DUE:
                self.issue(time)
                if request + 1 < n:
                    self.push(float(self.arrivals[request + 1]), _DUE, None, request + 1)
            else:  # a background burst of one quantum, on no process of the fleet
                self.run_queue.append(_Job(_BACKGROUND, self.cores.quantum_ms, None, -1, 0))
                self.push(self.next_burst(time), _BURST, None, 0)
            self.dispatch(time)

    def next_burst(self, time: float) -> float:
        per_ms = self.cores.background_cores / self.cores.quantum_ms
        return time + float(self.extra.exponential(1.0 / per_ms))

    def issue(self, time: float) -> None:
        request = self.issued
        self.issued += 1
        self.job(_Job(_SEND, self.loadgen_half_ms, self.loadgen, request, 0), time)

    def job(self, work: _Job, time: float) -> None:
        """Queue CPU work on its process; work of no CPU is done at once."""
        process = work.process
        if work.remaining <= 0.0 or process is None:
            self.after(work.kind, work.request, work.shard, time)
            return
        if process.active < process.slots:
            process.active += 1
            self.run_queue.append(work)
        else:
            process.waiting.append(work)

    def dispatch(self, time: float) -> None:
        """Free cores take jobs from the head of the run queue, each for at most a quantum."""
        quantum = self.cores.quantum_ms
        while self.free_cores and self.run_queue:
            work = self.run_queue.popleft()
            piece = min(work.remaining, quantum)
            work.remaining -= piece
            self.busy_ms += piece
            self.free_cores -= 1
            self.push(time + piece, _SLICE_END, work, work.request)

    def slice_ended(self, work: _Job, time: float) -> None:
        self.free_cores += 1
        if work.remaining > 1e-12:  # preempted: to the back of the run queue, its thread still held
            self.run_queue.append(work)
            return
        process = work.process
        if process is not None:
            if process.waiting:
                self.run_queue.append(process.waiting.popleft())
            else:
                process.active -= 1
        self.after(work.kind, work.request, work.shard, time)

    def after(self, kind: int, request: int, shard: int, time: float) -> None:
        """What follows a request's CPU work."""
        if kind == _SEND:
            self.sent[request] = time
            worker = self.routers[self.worker[request]]
            self.job(_Job(_ROUTER_IN, self.router_in_ms, worker, request, 0), time)
        elif kind == _ROUTER_IN:
            for s in range(self.scenario.shards):
                replica = self.shards[s][self.replica[s][request]]
                self.job(_Job(_SHARD, self.cpu[s][request], replica, request, s), time)
        elif kind == _SHARD:
            self.push(time + self.rest[shard][request], _ANSWER, None, request)
        elif kind == _ROUTER_OUT:
            self.job(_Job(_READ, self.loadgen_half_ms, self.loadgen, request, 0), time)
        elif kind == _READ:
            self.done[request] = time
            self.completed += 1
            if self.closed_loop is not None and self.issued < self.scenario.requests:
                self.issue(time)


def _least_events_per_request(costs: Costs, scenario: Scenario, cores: SharedCores) -> int:
    """Slice ends of a request's jobs at their mean CPU, its shards' answers and its arrival."""

    def slices(cpu_ms: float) -> int:
        return math.ceil(cpu_ms / cores.quantum_ms) if cpu_ms > 0 else 0

    router_in = costs.router_cpu_ms * cores.router_before_fanout
    return (
        scenario.shards * (slices(costs.shard_cpu.mean_ms) + 1)
        + slices(router_in)
        + slices(costs.router_cpu_ms - router_in)
        + 2 * slices(cores.loadgen_cpu_ms / 2.0)
        + 1
    )


def simulate_shared_cores(costs: Costs, scenario: Scenario) -> Outcome:
    """The fleet on `scenario.cores`: an event simulation of processes on a pool of cores.

    - Processes: each router worker (1 thread: its event loop), each shard replica (`threads`
      threads) and the load generator (1 thread, if `loadgen_cpu_ms` > 0). A process runs its jobs
      in FIFO order, at most one per thread; a job is CPU work of one request.
    - Cores: a job whose thread is free is runnable and waits in ONE FIFO run queue for any of the
      `count` cores; it then holds the core for at most `quantum_ms` and, unfinished, goes to the
      back of the queue (round robin). A quantum longer than every job is FIFO run-to-completion
      on `count` cores; a quantum towards 0 approaches processor sharing.
      Why a run queue and not processor sharing: the measured jobs (0.27-1.3 ms of CPU per request
      and process, benchmarks/tail_check.json) are shorter than Linux's 1.5 ms slice, so once a job
      has a core it runs to the end: it waits, it is not slowed down. Processor sharing would
      stretch every job while more are runnable than cores, and could not give a CPU-bound
      neighbour (the background) the whole slice it takes from a waiting job.
    - A request: the generator's send (half its CPU; the clock starts when it is done, as the
      bench measures latency from the send), the router's CPU before the fan-out on one worker
      chosen at random, one search on one replica of every shard, each answer reaching the router
      `Costs.shard_rest` after its CPU (wall time that occupies no core), the router's CPU after
      the last answer, the generator's read (the other half). Hedging is not simulated here.
    - Arrivals: Poisson at the scenario's rate, or a closed loop of `clients` (`sequential`: one).
    - Background: Poisson bursts of one quantum each, `background_cores` cores on average.

    Deterministic per seed; at most MAX_SHARED_CORE_EVENTS events."""
    scenario.check()
    cores = scenario.cores
    if cores is None:
        raise SimulationError("cores: simulate_shared_cores needs Scenario.cores")
    least_events = scenario.requests * _least_events_per_request(costs, scenario, cores)
    if least_events > MAX_SHARED_CORE_EVENTS:
        raise SimulationError(
            f"requests: at least {least_events:,} events, more than {MAX_SHARED_CORE_EVENTS:,}; "
            "simulate fewer requests or a longer quantum_ms"
        )
    run = _SharedCoreRun(costs, scenario, cores)
    run.run()
    n = scenario.requests
    latencies = np.asarray(run.done) - np.asarray(run.sent)
    window_p50 = window_p99 = None
    if scenario.slow is not None:
        window_p50, window_p99 = (float(v) for v in np.percentile(latencies[_window(scenario)], [50, 99]))
    settled = latencies[int(n * WARM_UP) :]
    p50, p99, p999 = np.percentile(settled, [50, 99, 99.9])
    late = 0.0 if scenario.deadline_ms is None else float(np.mean(settled > scenario.deadline_ms))
    duration_ms = max(run.done)
    achieved_per_ms = n / duration_ms
    return Outcome(
        scenario=scenario,
        p50_ms=float(p50),
        p99_ms=float(p99),
        p999_ms=float(p999),
        mean_ms=float(settled.mean()),
        hedge_rate=0.0,
        extra_load=0.0,
        late_fraction=late,
        router_utilisation=achieved_per_ms * costs.router_cpu_ms / costs.router_workers,
        counted=len(settled),
        window_p50_ms=window_p50,
        window_p99_ms=window_p99,
        achieved_per_s=achieved_per_ms * 1000.0,
        core_utilisation=run.busy_ms / (cores.count * duration_ms),
        latencies_ms=settled,
    )


@dataclass(frozen=True)
class Interval:
    """Mean over seeds and its 95% t-interval."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Interval:
        mean = float(np.mean(values))
        if len(values) < 2:
            return cls(mean, mean, mean)
        half = T975.get(len(values) - 1, 1.96) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
        return cls(mean, mean - half, mean + half)


@dataclass(frozen=True)
class Summary:
    """One scenario over `seeds` seeds (scenario.seed, scenario.seed + 1, ...)."""

    scenario: Scenario
    seeds: int
    counted_per_seed: int
    """Requests counted per seed; p99.9 rests on counted_per_seed / 1000 tail samples."""
    p50_ms: Interval
    p99_ms: Interval
    p999_ms: Interval
    hedge_rate: float
    extra_load: float
    router_utilisation: float
    window_p50_ms: Interval | None
    window_p99_ms: Interval | None
    achieved_per_s: Interval | None = None
    core_utilisation: float | None = None

    @property
    def p999_tail_samples(self) -> int:
        return int(self.counted_per_seed * 0.001)


def simulate_seeds(costs: Costs, scenario: Scenario, seeds: int) -> Summary:
    if seeds < 1:
        raise SimulationError(f"seeds must be at least 1, got {seeds}")
    runs = [simulate(costs, replace(scenario, seed=scenario.seed + i)) for i in range(seeds)]
    windowed = scenario.slow is not None
    return Summary(
        scenario=scenario,
        seeds=seeds,
        counted_per_seed=runs[0].counted,
        p50_ms=Interval.of([r.p50_ms for r in runs]),
        p99_ms=Interval.of([r.p99_ms for r in runs]),
        p999_ms=Interval.of([r.p999_ms for r in runs]),
        hedge_rate=float(np.mean([r.hedge_rate for r in runs])),
        extra_load=float(np.mean([r.extra_load for r in runs])),
        router_utilisation=runs[0].router_utilisation,
        window_p50_ms=Interval.of([r.window_p50_ms or 0.0 for r in runs]) if windowed else None,
        window_p99_ms=Interval.of([r.window_p99_ms or 0.0 for r in runs]) if windowed else None,
        achieved_per_s=(
            Interval.of([r.achieved_per_s or 0.0 for r in runs]) if scenario.cores is not None else None
        ),
        core_utilisation=(
            float(np.mean([r.core_utilisation or 0.0 for r in runs])) if scenario.cores is not None else None
        ),
    )
