"""Replica choice (power of two choices), outlier ejection and the health state machine, hedging
budget, admission bound: pure decisions driven by an explicit clock and seeded randomness."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shardrec.serving.router.admission import Admission
from shardrec.serving.router.hedging import HedgeBudget
from shardrec.serving.router.replicas import EjectionPolicy, Replica, choose_replica

POLICY = EjectionPolicy(failure_threshold=2, base_ejection_s=1.0, max_ejection_s=8.0, flap_window_s=60.0)


def replicas(count: int) -> list[Replica[None]]:
    return [
        Replica(name=f"r{i}", url=f"http://127.0.0.1:{9000 + i}", client=None, policy=POLICY)
        for i in range(count)
    ]


def test_p2c_prefers_the_less_loaded_of_two() -> None:
    pool = replicas(2)
    pool[0].outstanding = 5
    rng = random.Random(1)
    assert all(choose_replica(pool, 0.0, rng) is pool[1] for _ in range(50))


def test_p2c_weighs_latency_as_well_as_outstanding_requests() -> None:
    pool = replicas(2)
    pool[0].latency_ewma_s = 0.050  # idle but slow: (0+1) * 50 ms
    pool[1].latency_ewma_s = 0.002
    pool[1].outstanding = 3  # busy but fast: (3+1) * 2 ms
    assert choose_replica(pool, 0.0, random.Random(3)) is pool[1]


def test_p2c_spreads_equal_replicas_and_never_picks_the_worst_of_three() -> None:
    pool = replicas(3)
    pool[2].outstanding = 10
    rng = random.Random(5)
    picks = Counter(choose_replica(pool, 0.0, rng).name for _ in range(3000))  # type: ignore[union-attr]
    assert picks["r2"] == 0  # any pair containing r2 also holds a cheaper replica
    assert abs(picks["r0"] - picks["r1"]) < 300  # the two idle ones share the load


def test_choice_skips_replicas_already_tried_and_ejected_ones() -> None:
    pool = replicas(3)
    pool[0].health = "ejected"
    rng = random.Random(0)
    assert choose_replica(pool, 0.0, rng, avoid=[pool[1]]) is pool[2]


def test_panic_routing_uses_ejected_replicas_when_no_live_one_is_left() -> None:
    pool = replicas(2)
    for replica in pool:
        replica.health = "ejected"
    chosen = choose_replica(pool, 0.0, random.Random(0), avoid=[pool[0]])
    assert chosen is pool[1]
    assert choose_replica(pool, 0.0, random.Random(0), avoid=pool) is None


def test_replicas_known_dead_are_never_chosen_so_their_shard_fails_at_once() -> None:
    pool = replicas(2)
    rng = random.Random(0)
    for replica in pool:
        assert replica.probed(False, 0.0)  # a failed probe ejects and marks it known dead
    assert choose_replica(pool, 0.5, rng) is None  # no panic routing onto known-dead replicas
    pool[1].probed(True, 0.6)  # answers its probe again, still within its ejection time
    assert pool[1].health == "ejected"
    assert choose_replica(pool, 0.6, rng) is pool[1]  # panic routing may try it again
    pool[0].probed(False, 0.7)
    pool[1].succeeded(0.01, 0.7)
    assert choose_replica(pool, 0.7, rng) is pool[1] and pool[1].health == "healthy"


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    (replica,) = replicas(1)
    replica.started()
    assert replica.failed(now=10.0) is False
    replica.started()
    replica.succeeded(0.001, now=10.1)
    replica.started()
    assert replica.failed(now=10.2) is False  # the streak was broken
    replica.started()
    assert replica.failed(now=10.3) is True
    assert replica.health == "ejected"
    assert replica.ejected_until == pytest.approx(11.3)
    assert replica.outstanding == 0


def test_probe_returns_an_ejected_replica_only_after_its_ejection_time() -> None:
    (replica,) = replicas(1)
    assert replica.probed(ready=False, now=0.0) is True  # a failed probe ejects at once
    replica.probed(ready=True, now=0.5)
    assert replica.health == "ejected"
    replica.probed(ready=True, now=1.0)
    assert replica.health == "healthy"
    assert replica.probed(ready=False, now=1.5) is True


def test_flapping_replica_stays_out_longer_each_time_up_to_the_cap() -> None:
    (replica,) = replicas(1)
    durations = []
    now = 0.0
    for _ in range(6):
        replica.probed(ready=False, now=now)
        durations.append(replica.ejected_until - now)
        now = replica.ejected_until
        replica.probed(ready=True, now=now)
        now += 1.0
    assert durations == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    # Quiet for longer than the flap window: back to the base time.
    replica.probed(ready=False, now=now + 120.0)
    assert replica.ejected_until - (now + 120.0) == 1.0


def test_an_answer_from_an_ejected_replica_brings_it_back() -> None:
    (replica,) = replicas(1)
    replica.probed(ready=False, now=0.0)
    replica.started()
    replica.succeeded(0.002, now=0.2)
    assert replica.health == "healthy"


def test_latency_ewma_moves_towards_samples() -> None:
    (replica,) = replicas(1)
    for _ in range(30):
        replica.started()
        replica.succeeded(0.010, now=0.0)
    assert replica.latency_ewma_s == pytest.approx(0.010, rel=0.01)


def test_hedge_budget_never_exceeds_its_share() -> None:
    budget = HedgeBudget(10)
    hedges = 0
    for _ in range(1000):
        budget.on_request()
        if budget.try_spend():  # a pathological case: every request wants a hedge
            hedges += 1
    assert hedges == 100


def test_hedge_budget_caps_banked_hedges_after_a_quiet_period() -> None:
    budget = HedgeBudget(50, max_banked_hedges=3)
    for _ in range(1000):
        budget.on_request()
    assert sum(budget.try_spend() for _ in range(10)) == 3


def test_zero_budget_never_hedges_and_bounds_are_checked() -> None:
    budget = HedgeBudget(0)
    for _ in range(100):
        budget.on_request()
    assert budget.try_spend() is False
    with pytest.raises(ValueError, match="budget_percent"):
        HedgeBudget(101)


def test_admission_refuses_past_the_bound_and_recovers() -> None:
    admission = Admission(2)
    assert admission.try_enter() and admission.try_enter()
    assert admission.try_enter() is False
    admission.leave()
    assert admission.try_enter() is True
    admission.leave()
    admission.leave()
    with pytest.raises(RuntimeError):
        admission.leave()
    with pytest.raises(ValueError):
        Admission(0)


def test_failures_make_a_fast_failing_replica_look_expensive_and_probes_decay_it() -> None:
    pool = replicas(2)
    pool[0].started()
    pool[0].failed(now=0.0, latency_s=0.0001)
    assert pool[0].latency_ewma_s > pool[1].latency_ewma_s
    assert choose_replica(pool, 0.0, random.Random(0)) is pool[1]
    for _ in range(20):
        pool[0].probed(ready=True, now=1.0)
    assert pool[0].latency_ewma_s == pytest.approx(POLICY.initial_latency_s, rel=0.01)
