"""Sanity of the tail-latency simulation: queueing by hand, CPU occupancy against wall time,
fan-out, hedging, load, a slow replica, seeds and their intervals, determinism."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardrec.tools.capacity.coefficients import load_coefficients
from shardrec.tools.capacity.tailsim import (
    Costs,
    Interval,
    Scenario,
    ServiceTime,
    SimulationError,
    SlowReplica,
    arrival_rate_per_ms,
    fifo_latencies,
    fifo_servers_latencies,
    simulate,
    simulate_seeds,
    utilisation_at,
)

REPO = Path(__file__).resolve().parents[2]
# Mostly fast, with rare stalls (the shape a shared machine or a GC pause gives).
# Here the whole distribution is CPU (it occupies the replica); nothing else adds wall time.
STALLY = Costs(
    ServiceTime((0.0, 0.5, 0.9, 0.97, 0.99, 1.0), (0.3, 0.5, 0.8, 1.2, 10.0, 30.0)),
    ServiceTime.constant(0.0),
)
BASE = Scenario(shards=8, replicas=2, utilisation=0.1, requests=8000, seed=3)


def measured_wall() -> ServiceTime:
    """One shard request's latency as the router's client measured it (the coefficients)."""
    c = load_coefficients(REPO / "benchmarks" / "coefficients.json")
    return ServiceTime(tuple(c.shard_latency_ms.quantiles), tuple(c.shard_latency_ms.ms))


def measured() -> Costs:
    """CPU per search from the coefficients; the rest of the measured wall latency occupies nothing."""
    c = load_coefficients(REPO / "benchmarks" / "coefficients.json")
    return Costs.split(measured_wall(), c.search[2].search_ms + c.shard_overhead_cpu_ms)


def test_fifo_queue_by_hand() -> None:
    # Back to back: each job waits for the previous one.
    assert fifo_latencies(np.array([0.0, 1.0, 2.0]), np.array([2.0, 2.0, 2.0])).tolist() == [2.0, 3.0, 4.0]
    # An idle gap empties the queue.
    assert fifo_latencies(np.array([0.0, 10.0]), np.array([1.0, 1.0])).tolist() == [1.0, 1.0]
    assert fifo_latencies(np.array([0.0, 0.5, 5.0]), np.array([1.0, 3.0, 1.0])).tolist() == [1.0, 3.5, 1.0]


def test_service_time_mean_and_quantiles() -> None:
    uniform = ServiceTime((0.0, 1.0), (0.0, 2.0))
    assert uniform.mean_ms == pytest.approx(1.0)
    assert uniform.quantile_ms(0.25) == pytest.approx(0.5)
    assert ServiceTime.constant(0.2).mean_ms == pytest.approx(0.2)
    draws = uniform.sample(np.random.default_rng(0), 50_000)
    assert draws.mean() == pytest.approx(1.0, abs=0.02)
    with pytest.raises(SimulationError, match=r"quantiles must run from 0\.0 to 1\.0"):
        ServiceTime((0.1, 1.0), (0.0, 1.0))


def test_same_seed_same_answer_other_seed_other_answer() -> None:
    first = simulate(STALLY, BASE)
    assert simulate(STALLY, BASE) == first
    assert np.array_equal(simulate(STALLY, BASE).latencies_ms, first.latencies_ms)
    assert simulate(STALLY, replace(BASE, seed=4)).p99_ms != first.p99_ms


@pytest.mark.parametrize("service", ["stally", "measured"])
def test_fan_out_raises_the_tail_monotonically(service: str) -> None:
    distribution = STALLY if service == "stally" else measured()
    p50s, p99s = [], []
    for shards in (1, 2, 4, 8, 16, 32):
        outcome = simulate(distribution, replace(BASE, shards=shards, hedge_after_ms=None))
        p50s.append(outcome.p50_ms)
        p99s.append(outcome.p99_ms)
    assert p99s == sorted(p99s) and p99s[-1] > p99s[0]
    assert p50s == sorted(p50s) and p50s[-1] > p50s[0]
    # A request waits for the slowest of its 32 shards: its median is at least the quantile
    # 0.5 ** (1/32) of one shard's latency (how far past the median of one that is depends on the
    # distribution's spread: by far for the stalling one, 1.3x for the measured one).
    one_shard = measured_wall() if service == "measured" else STALLY.shard_cpu
    slowest_of_32 = float(np.interp(0.5 ** (1 / 32), one_shard.quantiles, one_shard.ms))
    assert p50s[-1] >= slowest_of_32
    if service == "stally":
        assert p50s[-1] > p50s[0] * 1.5


def test_hedging_lowers_p99_at_a_measured_extra_load() -> None:
    plain = simulate(STALLY, BASE)
    hedge_at = 3.0  # past the fast bulk, before the stalls
    hedged = simulate(STALLY, replace(BASE, hedge_after_ms=hedge_at, hedge_budget=0.1))
    assert plain.hedge_rate == 0 and plain.extra_load == 0
    assert hedged.p99_ms < plain.p99_ms * 0.8
    # Not free: the hedges are real work, bounded by the 10% budget.
    assert 0.0 < hedged.hedge_rate <= 0.1 + 10 / BASE.requests
    assert 0.0 < hedged.extra_load < 0.2
    # Hedging only helps with a second replica to send to.
    single = simulate(STALLY, replace(BASE, replicas=1, hedge_after_ms=hedge_at))
    assert single.hedge_rate == 0


def test_the_budget_caps_hedges_when_everything_is_slow() -> None:
    # Hedging after 0 ms makes every shard request eligible; the bucket lets 5% through.
    outcome = simulate(STALLY, replace(BASE, hedge_after_ms=0.0, hedge_budget=0.05))
    assert outcome.hedge_rate == pytest.approx(0.05, abs=10 / BASE.requests)
    unlimited = simulate(STALLY, replace(BASE, hedge_after_ms=0.0, hedge_budget=1.0))
    assert unlimited.hedge_rate == pytest.approx(1.0)
    assert unlimited.extra_load == pytest.approx(1.0, rel=0.1)  # every request served twice


def test_load_raises_the_tail_and_deadlines_count_late_answers() -> None:
    light = simulate(STALLY, replace(BASE, utilisation=0.2, deadline_ms=20.0))
    heavy = simulate(STALLY, replace(BASE, utilisation=0.8, deadline_ms=20.0))
    assert heavy.p99_ms > light.p99_ms
    assert heavy.late_fraction > light.late_fraction
    assert simulate(STALLY, BASE).late_fraction == 0.0  # no deadline, nothing late


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shards": 0}, "shards must be at least 1"),
        ({"replicas": 0}, "replicas must be at least 1"),
        ({"utilisation": 1.0}, r"utilisation must be within \(0, 1\)"),
        ({"hedge_after_ms": -1.0}, "hedge_after_ms must be 0 or more"),
        ({"hedge_budget": 2.0}, "hedge_budget"),
        ({"requests": 10}, "requests must be at least 100"),
        ({"threads": 0}, "threads must be at least 1"),
    ],
)
def test_bad_scenarios_name_the_parameter(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        simulate(STALLY, replace(BASE, **changes))


def test_several_servers_by_hand() -> None:
    # Two threads: the third job waits for the first free one (at 2.0), not for the second.
    two = fifo_servers_latencies(np.array([0.0, 0.0, 0.0]), np.array([2.0, 5.0, 1.0]), 2)
    assert two.tolist() == [2.0, 5.0, 3.0]
    one = fifo_servers_latencies(np.array([0.0, 0.0, 0.0]), np.array([2.0, 5.0, 1.0]), 1)
    assert one.tolist() == fifo_latencies(np.array([0.0, 0.0, 0.0]), np.array([2.0, 5.0, 1.0])).tolist()


def test_split_keeps_the_unloaded_latency_and_occupies_only_the_cpu() -> None:
    wall = ServiceTime((0.0, 0.5, 0.99, 1.0), (0.3, 0.5, 3.0, 9.0))
    costs = Costs.split(wall, 0.1)
    assert costs.shard_cpu.mean_ms == pytest.approx(0.1)
    assert costs.shard_rest.ms == pytest.approx((0.2, 0.4, 2.9, 8.9))
    assert costs.unloaded_ms(0.5) == pytest.approx(0.5)
    # One shard, idle system (sequential): the measured wall distribution comes back.
    idle = simulate(costs, replace(BASE, shards=1, replicas=1, sequential=True, requests=20_000))
    assert idle.p50_ms == pytest.approx(0.5, rel=0.06)
    assert idle.p99_ms == pytest.approx(3.0, rel=0.1)
    with pytest.raises(SimulationError, match="shard CPU must be positive"):
        Costs.split(wall, 0.0)


def test_load_is_cpu_load_and_the_rest_does_not_queue() -> None:
    wall = ServiceTime((0.0, 1.0), (0.5, 1.5))
    cpu_bound = Costs(wall, ServiceTime.constant(0.0))  # all of the wall time occupies the replica
    mostly_rest = Costs.split(wall, 0.1)  # 0.1 ms of CPU, the rest is network and wake-ups
    scenario = replace(BASE, shards=1, replicas=1, utilisation=0.8, requests=20_000)
    # The same CPU load is ten times the request rate when a request costs a tenth of the CPU.
    assert arrival_rate_per_ms(mostly_rest, scenario) == pytest.approx(
        10 * arrival_rate_per_ms(cpu_bound, scenario)
    )
    assert utilisation_at(mostly_rest, scenario, 8000.0) == pytest.approx(0.8)
    assert utilisation_at(mostly_rest, replace(scenario, replicas=2, threads=2), 8000.0) == pytest.approx(0.2)
    queued = simulate(cpu_bound, scenario)
    light = simulate(mostly_rest, scenario)
    # At 80% CPU a queue of 0.1 ms jobs waits a fraction of a millisecond; of 1 ms jobs, several.
    assert light.p99_ms < 3.0 < queued.p99_ms
    # More search threads at the same CPU load per thread: shorter waits.
    threaded = simulate(cpu_bound, replace(scenario, threads=4))
    assert threaded.p99_ms < queued.p99_ms


def test_the_router_is_a_queue_of_its_cpu() -> None:
    costs = replace(measured(), router_cpu_ms=0.2)
    scenario = replace(BASE, shards=2, utilisation=0.3)
    one_worker = simulate(costs, scenario)
    rate = arrival_rate_per_ms(costs, scenario)
    assert one_worker.router_utilisation == pytest.approx(rate * 0.2)
    assert one_worker.router_utilisation > 1  # one router worker cannot keep up ...
    many = simulate(replace(costs, router_workers=8), scenario)
    assert many.router_utilisation == pytest.approx(rate * 0.2 / 8)
    assert many.p99_ms < 20 < one_worker.p99_ms  # ... and its queue dominates the tail


def test_a_slow_replica_hurts_its_window_and_hedging_helps_only_with_cpu_to_spare() -> None:
    light = replace(BASE, utilisation=0.1, requests=20_000)
    calm = simulate(STALLY, light)
    assert calm.window_p99_ms is None
    slow = simulate(STALLY, replace(light, slow=SlowReplica(3.0)))
    assert slow.window_p99_ms is not None and slow.window_p50_ms is not None
    assert slow.window_p99_ms > 2 * calm.p99_ms
    hedged = simulate(STALLY, replace(light, slow=SlowReplica(3.0), hedge_after_ms=3.0, hedge_budget=0.5))
    assert hedged.window_p99_ms is not None and hedged.window_p99_ms < slow.window_p99_ms / 3
    # At 30% load a 5x slower replica is overloaded (150%): the hedges it needs overload the other
    # replica too, so a generous budget makes the window worse, not better.
    busy = replace(BASE, utilisation=0.3, requests=20_000, slow=SlowReplica(5.0))
    unhedged = simulate(STALLY, busy).window_p99_ms
    generous = simulate(STALLY, replace(busy, hedge_after_ms=3.0, hedge_budget=0.5)).window_p99_ms
    assert unhedged is not None and generous is not None and generous > unhedged
    with pytest.raises(SimulationError, match="slow"):
        simulate(STALLY, replace(light, slow=SlowReplica(3.0, start=0.9, length=0.2)))


def test_seeds_give_a_mean_and_an_interval_with_the_sample_counts() -> None:
    by_hand = Interval.of([1.0, 2.0, 3.0])
    assert by_hand.mean == pytest.approx(2.0)
    assert by_hand.high - by_hand.mean == pytest.approx(4.303 / np.sqrt(3))
    assert Interval.of([5.0]) == Interval(5.0, 5.0, 5.0)
    summary = simulate_seeds(STALLY, replace(BASE, requests=2000), 5)
    runs = [simulate(STALLY, replace(BASE, requests=2000, seed=BASE.seed + i)) for i in range(5)]
    assert summary.p99_ms.mean == pytest.approx(np.mean([r.p99_ms for r in runs]))
    assert summary.p99_ms.low < summary.p99_ms.mean < summary.p99_ms.high
    assert summary.counted_per_seed == 1900 and summary.p999_tail_samples == 1
    with pytest.raises(SimulationError, match="seeds must be at least 1"):
        simulate_seeds(STALLY, BASE, 0)
