"""The shared-core model of the tail simulation (`Scenario.cores`): processes of the fleet on a
pool of cores, by hand on tiny cases, against the closed forms on many cores, load, closed loops,
background work, seeds and the bounds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shardrec.tools.capacity.tailsim import (
    Costs,
    Scenario,
    ServiceTime,
    SharedCores,
    SimulationError,
    SlowReplica,
    pooled_cores,
    simulate,
    simulate_seeds,
    simulate_shared_cores,
)

# Every request: 1 ms of CPU on each shard, nothing else (no rest, no router CPU).
ONE_MS = Costs(ServiceTime.constant(1.0), ServiceTime.constant(0.0))
# Measured-like: a variable rest that occupies nothing, CPU of a few tenths of a ms.
REST = ServiceTime((0.0, 0.5, 0.9, 0.99, 1.0), (0.05, 0.1, 0.5, 4.0, 30.0))
SHAPED = Costs(ServiceTime((0.0, 1.0), (0.2, 0.4)), REST, router_cpu_ms=0.3, router_workers=2)
TWO_SHARDS_ONE_CLIENT = Scenario(shards=2, replicas=1, utilisation=0.5, requests=200, clients=1)


def test_one_core_runs_two_equal_jobs_in_twice_the_time() -> None:
    # Two shards, one search each: on two cores they run side by side, on one they take turns.
    two = simulate(ONE_MS, replace(TWO_SHARDS_ONE_CLIENT, cores=SharedCores(2)))
    one = simulate(ONE_MS, replace(TWO_SHARDS_ONE_CLIENT, cores=SharedCores(1)))
    assert two.p50_ms == pytest.approx(1.0) and two.p99_ms == pytest.approx(1.0)
    assert one.p50_ms == pytest.approx(2.0) and one.p99_ms == pytest.approx(2.0)
    # Processor sharing (a quantum towards 0) finishes both at 2 ms too: the slowest decides.
    shared = simulate(ONE_MS, replace(TWO_SHARDS_ONE_CLIENT, cores=SharedCores(1, quantum_ms=0.01)))
    assert shared.p50_ms == pytest.approx(2.0) and shared.p99_ms == pytest.approx(2.0)
    # One client back to back: throughput is 1 / latency, and one core is always busy.
    assert one.achieved_per_s == pytest.approx(500.0)
    assert one.core_utilisation == pytest.approx(1.0)
    assert two.core_utilisation == pytest.approx(1.0)


def test_every_process_is_on_the_pool_router_and_generator_included() -> None:
    costs = replace(ONE_MS, router_cpu_ms=0.4)
    cores = SharedCores(1, router_before_fanout=0.5, loadgen_cpu_ms=0.6)
    outcome = simulate(costs, replace(TWO_SHARDS_ONE_CLIENT, cores=cores))
    # The clock starts after the send (0.3): router 0.2 + two searches 2.0 + router 0.2 + read 0.3.
    assert outcome.p50_ms == pytest.approx(2.7)
    # The send is work too: one request every 3.0 ms.
    assert outcome.achieved_per_s == pytest.approx(1000.0 / 3.0)


def test_many_cores_give_the_closed_forms_answer() -> None:
    costs = replace(SHAPED, router_workers=1, router_cpu_ms=0.05)
    plenty = SharedCores(10_000, router_before_fanout=1.0)  # all router CPU before the fan-out, as there
    for scenario in (
        Scenario(shards=4, replicas=2, utilisation=0.6, requests=5000, seed=7),
        Scenario(shards=3, replicas=2, threads=2, utilisation=0.8, requests=5000, seed=8),
        Scenario(shards=4, replicas=1, utilisation=0.5, requests=2000, seed=9, sequential=True),
        Scenario(shards=2, replicas=2, utilisation=0.5, requests=5000, seed=1, slow=SlowReplica(3.0)),
    ):
        closed_form = simulate(costs, scenario)
        events = simulate(costs, replace(scenario, cores=plenty))
        assert events.latencies_ms == pytest.approx(closed_form.latencies_ms, rel=1e-9, abs=1e-9)
        assert events.p99_ms == pytest.approx(closed_form.p99_ms, rel=1e-9)


@pytest.mark.parametrize("quantum_ms", [1.5, 0.1])
def test_more_load_or_fewer_cores_is_never_faster(quantum_ms: float) -> None:
    base = Scenario(shards=4, replicas=1, utilisation=0.1, requests=4000, seed=5)
    # A fixed rest: the tail is then the cores' (a rest of 30 ms at p99.9 would hide them).
    costs = replace(SHAPED, shard_rest=ServiceTime.constant(0.1))
    p50s, p99s = [], []
    # 0.3 ms of router CPU and 4 x 0.3 ms of searches: 1.5 ms per request on 2 cores.
    # (0.25: 833 req/s, 1.25 of the 2 cores.)
    for utilisation in (0.05, 0.1, 0.15, 0.2, 0.25):
        outcome = simulate(costs, replace(base, utilisation=utilisation, cores=SharedCores(2, quantum_ms)))
        p50s.append(outcome.p50_ms)
        p99s.append(outcome.p99_ms)
    assert p50s == sorted(p50s) and p99s == sorted(p99s)
    assert p50s[-1] > p50s[0] and p99s[-1] > p99s[0]
    crowded = simulate(costs, replace(base, utilisation=0.25, cores=SharedCores(2, quantum_ms)))
    roomy = simulate(costs, replace(base, utilisation=0.25, cores=SharedCores(8, quantum_ms)))
    assert crowded.p99_ms > roomy.p99_ms and crowded.p50_ms > roomy.p50_ms


def test_a_closed_loop_saturates_the_cores_and_waits() -> None:
    one_core = SharedCores(1)
    four = simulate(ONE_MS, replace(TWO_SHARDS_ONE_CLIENT, clients=4, requests=400, cores=one_core))
    # 2 ms of CPU per request on one core: 500 req/s whatever the clients; 4 in flight wait 4x.
    assert four.achieved_per_s == pytest.approx(500.0, rel=0.01)
    assert four.core_utilisation == pytest.approx(1.0)
    assert four.p50_ms == pytest.approx(8.0, rel=0.01)
    with pytest.raises(SimulationError, match="needs cores"):
        simulate(ONE_MS, replace(TWO_SHARDS_ONE_CLIENT, clients=4))


def test_background_work_takes_its_share_and_delays_the_fleet() -> None:
    scenario = replace(TWO_SHARDS_ONE_CLIENT, clients=4, requests=2000, seed=2)
    alone = simulate(ONE_MS, replace(scenario, cores=SharedCores(2)))
    busy = simulate(ONE_MS, replace(scenario, cores=SharedCores(2, background_cores=1.0)))
    assert alone.achieved_per_s is not None and busy.achieved_per_s is not None
    assert alone.achieved_per_s == pytest.approx(1000.0, rel=0.01)  # 2 ms of CPU on 2 cores
    assert busy.achieved_per_s == pytest.approx(500.0, rel=0.1)  # half the cores left
    assert busy.p99_ms > alone.p99_ms
    # Open loop, little load of its own: a search now and then waits for background bursts.
    light = Scenario(shards=1, replicas=1, utilisation=0.05, requests=3000, seed=3)
    quiet = simulate(ONE_MS, replace(light, cores=SharedCores(2)))
    shared = simulate(ONE_MS, replace(light, cores=SharedCores(2, background_cores=1.0)))
    assert quiet.p50_ms == pytest.approx(1.0)
    assert shared.p99_ms > quiet.p99_ms + 0.5


def test_same_seed_same_answer_other_seed_other_answer() -> None:
    scenario = Scenario(
        shards=4,
        replicas=1,
        utilisation=0.15,
        requests=3000,
        seed=11,
        cores=SharedCores(2, background_cores=0.5),
    )
    first = simulate(SHAPED, scenario)
    again = simulate(SHAPED, scenario)
    assert np.array_equal(first.latencies_ms, again.latencies_ms) and first == again
    assert simulate(SHAPED, replace(scenario, seed=12)).p99_ms != first.p99_ms
    summary = simulate_seeds(SHAPED, scenario, 3)
    assert summary.achieved_per_s is not None and summary.core_utilisation is not None
    assert summary.p99_ms.low <= summary.p99_ms.mean <= summary.p99_ms.high


def test_bad_shared_core_scenarios_name_the_parameter() -> None:
    base = replace(TWO_SHARDS_ONE_CLIENT, cores=SharedCores(2))
    for changes, message in (
        ({"cores": SharedCores(0)}, "count must be at least 1"),
        ({"cores": SharedCores(2, quantum_ms=0.0)}, "quantum_ms must be positive"),
        ({"cores": SharedCores(2, background_cores=2.0)}, "background_cores"),
        ({"cores": SharedCores(2, router_before_fanout=1.5)}, "router_before_fanout"),
        ({"hedge_after_ms": 2.0, "replicas": 2}, "hedging is not simulated on shared cores"),
        ({"clients": 0}, "clients must be at least 1"),
    ):
        with pytest.raises(SimulationError, match=message):
            simulate(ONE_MS, replace(base, **changes))
    with pytest.raises(SimulationError, match=r"needs Scenario\.cores"):
        simulate_shared_cores(ONE_MS, TWO_SHARDS_ONE_CLIENT)


def test_the_event_count_is_bounded() -> None:
    # 1 ms jobs cut into 1 us slices: 2,000 events a request, past the bound long before the end.
    tiny = replace(TWO_SHARDS_ONE_CLIENT, requests=20_000, cores=SharedCores(1, quantum_ms=0.001))
    with pytest.raises(SimulationError, match="events"):
        simulate(ONE_MS, tiny)


def test_dedicated_pods_are_pooled_as_the_sum_of_their_requests() -> None:
    assert pooled_cores(shard_pods=32, shard_pod_cores=2.0, router_pods=4, router_pod_cores=1.5) == 70
    assert pooled_cores(1, 0.25, 1, 0.25) == 1
