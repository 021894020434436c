"""Sanity of the tail-latency simulation: queueing by hand, fan-out, hedging, load, determinism."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shardrec.tools.capacity.coefficients import load_coefficients
from shardrec.tools.capacity.tailsim import Scenario, ServiceTime, SimulationError, fifo_latencies, simulate

REPO = Path(__file__).resolve().parents[2]
# Mostly fast, with rare stalls (the shape a shared machine or a GC pause gives).
STALLY = ServiceTime((0.0, 0.5, 0.9, 0.97, 0.99, 1.0), (0.3, 0.5, 0.8, 1.2, 10.0, 30.0))
BASE = Scenario(shards=8, replicas=2, utilisation=0.1, requests=8000, seed=3)


def measured() -> ServiceTime:
    c = load_coefficients(REPO / "benchmarks" / "coefficients.json")
    return ServiceTime(tuple(c.shard_latency_ms.quantiles), tuple(c.shard_latency_ms.ms))


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
    # The slowest of 32 is slower than the median of one by far.
    assert p50s[-1] > distribution.quantile_ms(0.5) * 1.5


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
    ],
)
def test_bad_scenarios_name_the_parameter(changes: dict[str, float], message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        simulate(STALLY, replace(BASE, **changes))
