"""The capacity arithmetic on hand-checked cases (tests/capacity/fixtures.py has round numbers)."""

from __future__ import annotations

from typing import Any

import pytest

from shardrec.tools.capacity.planner import (
    GIB,
    PlanError,
    Target,
    error_budget_minutes,
    load_during_ramp,
    make_plan,
    replicas_for_availability,
    replicas_for_cpu,
    replicas_for_zone_loss,
    shards_for_memory,
    survives_zone_loss,
    survives_zone_loss_and_drain,
    threads_for_quota,
)
from shardrec.tools.capacity.scale import MODEL
from tests.capacity.fixtures import coefficients, scale_model

# The worked example: 10M items of 64 dims in 8 GiB pods of which 56.25% (4.5 GiB) may hold data,
# i.e. 4 GiB after the 0.5 GiB process baseline.
EXAMPLE = Target(
    peak_qps=12_000,
    items=10_000_000,
    dimension=64,
    users=1_000_000,
    k=10,
    recall=0.95,
    availability=99.95,
    zones=3,
    shard_pod_memory_gib=8,
    shard_pod_cores=2,
    router_pod_memory_gib=8,
    router_pod_cores=2,
    cpu_utilisation=0.5,
    memory_fill=0.5625,
    build_cores=16,
)


def test_shards_are_the_fewest_that_fit_memory() -> None:
    assert shards_for_memory(10_000_000, 500, 4 * GIB) == 2  # 5e9 B / 4.29e9 B = 1.16
    assert shards_for_memory(8_589_934, 500, 4 * GIB) == 1  # 4294967000 B: just fits
    assert shards_for_memory(10, 500, 4 * GIB) == 1
    with pytest.raises(PlanError, match="--shard-pod-memory-gib"):
        shards_for_memory(10, 500, 0)


def test_replicas_for_cpu_round_up_at_the_target_utilisation() -> None:
    assert replicas_for_cpu(10.0, 2.0, 0.5) == 10
    assert replicas_for_cpu(3.0, 2.0, 0.6) == 3  # 2.5 pods
    assert replicas_for_cpu(2.4, 2.0, 0.6) == 2  # exactly 2 pods, no spurious third
    assert replicas_for_cpu(0.001, 2.0, 0.6) == 1


def test_zone_loss_leaves_the_needed_replicas() -> None:
    # 3 zones: 6 replicas lose 2 (4 left) -> 9 replicas lose 3 (6 left).
    assert survives_zone_loss(9, 3) == 6
    assert replicas_for_zone_loss(6, 3) == 9
    assert replicas_for_zone_loss(4, 3) == 6
    assert replicas_for_zone_loss(1, 3) == 2
    assert replicas_for_zone_loss(3, 2) == 6
    # One zone cannot survive its own loss: nothing is added for it.
    assert replicas_for_zone_loss(3, 1) == 3
    assert survives_zone_loss(3, 1) == 0


def test_threads_and_workers_follow_the_cpu_limit_not_the_node() -> None:
    assert threads_for_quota(2.0) == 2
    assert threads_for_quota(1.5) == 2  # ceil: the quota keeps two threads busy part of the time
    assert threads_for_quota(0.5) == 1
    plan = make_plan(_with(EXAMPLE, shard_pod_cores=4, router_pod_cores=1), coefficients(), scale_model())
    assert (plan.shard_search_threads, plan.router_workers) == (4, 1)
    assert plan.router_memory_bytes == pytest.approx(GIB / 4 + 356e6)


def test_availability_needs_every_shard_under_strict() -> None:
    # One shard at 99.95% with 99% pods: 1 replica gives 99%, 2 give 99.99%.
    assert replicas_for_availability(0.9995, 1, 0.99) == 2
    # Ten shards at 99.9%: each must be up 99.99% (0.999 ** 0.1); 90% pods need 4 (99.99%).
    assert replicas_for_availability(0.999, 10, 0.9) == 4
    assert error_budget_minutes(99.95) == pytest.approx(21.6)
    assert error_budget_minutes(99.9) == pytest.approx(43.2)


def test_the_worked_example_by_hand() -> None:
    plan = make_plan(EXAMPLE, coefficients(), scale_model())
    # Memory: 4*64 + 8*16 + 16 = 400 B in the file, + 100 B resident extras = 500 B per item.
    assert plan.index_file_bytes_per_item == pytest.approx(400)
    assert plan.bytes_per_item == pytest.approx(500)
    assert plan.shards == 2
    assert plan.items_per_shard == 5_000_000
    assert plan.shard_memory_bytes == pytest.approx(5_000_000 * 500 + GIB / 2)
    # CPU: efSearch 64 at 0.2 ms + 0.3 ms overhead = 0.5 ms per shard request (no exclusions);
    # 12k req/s x 0.5 ms = 6 cores per shard = 6 pods of 2 cores at 50%; 9 survive a zone loss.
    assert (plan.ef_search, plan.ef_searched) == (64, 64)
    assert plan.shard_search_cpu_ms == pytest.approx(0.2)
    assert plan.shard_exclusion_cpu_ms == 0
    assert plan.shard_cpu_ms == pytest.approx(0.5)
    assert (plan.replicas_cpu, plan.replicas_zone, plan.replicas_availability) == (6, 9, 2)
    assert plan.replicas == 9
    # Router: 0.2 + 0.2 x 2 shards = 0.6 ms; 7.2 cores -> 8 pods -> 12 to survive a zone loss.
    assert plan.router_cpu_ms == pytest.approx(0.6)
    assert plan.router_replicas_cpu == 8
    assert plan.routers == 12
    # Users: 4*64 + 100 extra = 356 B each; 356 MB fits the router.
    assert plan.user_bytes_per_user == pytest.approx(356)
    assert plan.user_table_in_router
    # Two worker processes per 2-core router pod, each with its 0.25 GiB baseline; the user table
    # is memory-mapped, so held once.
    assert (plan.router_workers, plan.shard_search_threads) == (2, 2)
    assert plan.router_memory_bytes == pytest.approx(2 * GIB / 4 + 356e6)
    # Totals.
    assert (plan.shard_pods, plan.pods, plan.cores) == (18, 30, 60)
    assert plan.memory_requested_bytes == pytest.approx(30 * 8 * GIB)
    # Spike: shards serve 9 x 2 cores / 0.5 ms = 36k/s, routers 12 x 2 / 0.6 ms = 40k/s.
    assert plan.capacity_qps == pytest.approx(36_000)
    assert plan.spike_qps == pytest.approx(120_000)
    assert plan.spike_served_fraction == pytest.approx(0.3)
    # After a zone loss 6 replicas (24k/s) and 8 routers (26.7k/s) remain.
    assert plan.zone_loss_capacity_qps == pytest.approx(24_000)
    # Versions: 10M / (10k items/s/core x 16 cores) = 62.5 s; each replica loads 2 GB at 1 GB/s.
    assert plan.build_items_per_core_second == pytest.approx(10_000)
    assert plan.build_seconds == pytest.approx(62.5)
    assert plan.load_seconds == pytest.approx(2.0)
    assert plan.roll_seconds == pytest.approx(64.5)
    assert plan.blue_green_extra_bytes == pytest.approx(18 * plan.shard_memory_bytes)
    # The scheduler places the second layout's 18 shard pods at their requests: 36 cores, 144 GiB.
    assert (plan.blue_green_extra_pods, plan.blue_green_extra_cores) == (18, 36)
    assert plan.blue_green_requested_bytes == pytest.approx(18 * 8 * GIB)
    assert plan.blue_green_extra_seconds == pytest.approx(64.5 + 300)
    assert plan.in_place_extra_bytes == pytest.approx(18 * 5_000_000 * 500)
    # Storage: index 4e9 + ids 13e7 + users 1M x (256 + 13) per layout; 3 layouts + embeddings.
    assert plan.artifact_bytes == pytest.approx(4e9 + 1.3e8 + 2.69e8)
    assert plan.storage_bytes == pytest.approx(3 * plan.artifact_bytes + 256 * 11_000_000)
    # Bandwidth: 2 shards x ((150 + 256) + (100 + 16 x 10)) = 1332 B per request behind the router.
    assert plan.fanout_bytes == pytest.approx(1332)
    assert (plan.client_in_bytes, plan.client_out_bytes) == (200, 650)
    assert plan.peak_fanout_bytes_per_s == pytest.approx(12_000 * 1332)
    assert plan.warnings == ()


def test_more_items_need_more_shards_and_more_load_needs_more_replicas() -> None:
    c = coefficients()
    base = make_plan(EXAMPLE, c, scale_model())
    bigger = make_plan(_with(EXAMPLE, items=40_000_000), c, scale_model())
    busier = make_plan(_with(EXAMPLE, peak_qps=48_000), c, scale_model())
    assert bigger.shards > base.shards
    assert busier.shards == base.shards
    assert busier.replicas > base.replicas
    assert busier.routers > base.routers


def test_zone_loss_keeps_peak_capacity_at_full_cpu() -> None:
    for zones in (2, 3, 4):
        plan = make_plan(_with(EXAMPLE, zones=zones), coefficients(), scale_model())
        assert survives_zone_loss(plan.replicas, zones) >= plan.replicas_cpu
        assert plan.zone_loss_capacity_qps >= EXAMPLE.peak_qps


def test_a_user_table_too_big_for_the_router_goes_to_a_store() -> None:
    plan = make_plan(_with(EXAMPLE, users=100_000_000), coefficients(), scale_model())
    assert not plan.user_table_in_router
    assert plan.user_table_bytes == pytest.approx(3.56e10)
    assert plan.user_store_bytes == pytest.approx(100_000_000 * (256 + 12))
    assert plan.router_memory_bytes == pytest.approx(2 * GIB / 4)


def test_exclusions_widen_the_search_and_cost_per_item_held_by_the_shard() -> None:
    # 200 excluded over 2 shards: each shard holds 100, fetches k + 100 = 110 > ef 64, so hnswlib
    # searches at 110 (200/64 x 110 = 343.75 µs) and pays 1 µs per excluded item (100 µs).
    plan = make_plan(_with(EXAMPLE, exclude=200), coefficients(), scale_model())
    assert (plan.ef_search, plan.ef_searched) == (64, 110)
    assert plan.shard_search_cpu_ms == pytest.approx(0.34375)
    assert plan.shard_exclusion_cpu_ms == pytest.approx(0.1)
    assert plan.shard_cpu_ms == pytest.approx(0.34375 + 0.1 + 0.3)
    # 40 excluded (20 per shard): k + 20 = 30 < ef 64, only the per-item cost is added.
    light = make_plan(_with(EXAMPLE, exclude=40), coefficients(), scale_model())
    assert light.ef_searched == 64
    assert light.shard_cpu_ms == pytest.approx(0.2 + 0.02 + 0.3)


def test_a_plan_beyond_the_measured_shard_size_says_so() -> None:
    # The fixture measured up to 1M items per shard: 5M per shard is 5x beyond.
    plan = make_plan(EXAMPLE, coefficients(), scale_model(largest_items=1_000_000))
    assert len(plan.warnings) == 1
    assert "5.0x the largest measured" in plan.warnings[0]
    assert "beyond 10x" not in plan.warnings[0]
    far = make_plan(
        _with(EXAMPLE, items=40_000_000, shard_pod_memory_gib=32), coefficients(), scale_model(1_000_000)
    )
    assert "beyond 10x: a guess" in far.warnings[0]


def test_the_seed_sizing_on_the_measured_scale_points_plans_from_the_10m_point() -> None:
    seed = Target(peak_qps=36_000, items=10_000_000, dimension=64, users=100_000_000)
    plan = make_plan(seed, coefficients(), MODEL)
    assert plan.shards == 1
    assert not plan.warnings  # 10M x 64 is measured, not extrapolated
    # The measured 10M shard reached 0.95 at ef 384 (one grid step above 256), using 1,395 µs
    # of CPU there: the fit comes back within a grid step and 25%, far from ef 24.
    assert 256 / 1.5 <= plan.ef_search <= 384 * 1.5
    assert plan.shard_search_cpu_ms == pytest.approx(1.395 * plan.ef_search / 384, rel=0.35)


def test_recall_beyond_what_the_fit_can_promise_is_refused_naming_the_flag() -> None:
    with pytest.raises(PlanError, match=r"--recall 0\.999"):
        make_plan(_with(EXAMPLE, recall=0.999), coefficients(), scale_model())
    plan = make_plan(_with(EXAMPLE, recall=0.99), coefficients(), scale_model())
    assert any("recall 0.99 is outside the measured 0.9-0.98" in warning for warning in plan.warnings)


def test_the_load_climbs_the_ramp_linearly_and_a_step_is_the_whole_spike() -> None:
    assert load_during_ramp(100, 1000, 300, 0) == 100
    assert load_during_ramp(100, 1000, 300, 100) == pytest.approx(400)
    assert load_during_ramp(100, 1000, 300, 300) == 1000
    assert load_during_ramp(100, 1000, 300, 900) == 1000
    assert load_during_ramp(100, 1000, 0, 0) == 1000  # a step


def test_spike_pods_that_must_run_before_the_spike_by_hand() -> None:
    # A pod asked for at the spike's start serves after the 90 s node + the 2 s shard load = 92 s,
    # when a 300 s ramp from 12k to 120k is at 12k x (1 + 9 x 92/300) = 45,120 req/s.
    plan = make_plan(EXAMPLE, coefficients(), scale_model())
    assert plan.spike_ready_after_seconds == pytest.approx(92)
    assert plan.spike_load_when_ready_qps == pytest.approx(45_120)
    # Shards: 45,120 x 0.5 ms = 22.56 cores -> 23 pods at 50% of 2 cores -> 35 to survive a zone
    # (35 - 12 = 23). Routers: 45,120 x 0.6 ms = 27.07 cores -> 28 -> 42 (42 - 14 = 28).
    assert (plan.spike_prewarm_replicas, plan.spike_prewarm_routers) == (35, 42)
    # Beyond the plan's 9 replicas x 2 shards and 12 routers: 2 x 26 + 30.
    assert plan.spike_prewarm_extra_pods == 82
    # A step spike (no ramp) needs every spike pod before it.
    step = make_plan(_with(EXAMPLE, spike_ramp_seconds=0), coefficients(), scale_model())
    assert step.spike_prewarm_extra_pods == step.spike_extra_pods
    assert (step.spike_prewarm_replicas, step.spike_prewarm_routers) == (
        step.spike_replicas,
        step.spike_routers,
    )


@pytest.mark.parametrize("field", ["node_provision_seconds", "spike_ramp_seconds"])
def test_prewarmed_spike_pods_are_monotone_in_the_delay_and_the_ramp(field: str) -> None:
    counts = [
        make_plan(_with(EXAMPLE, **{field: seconds}), coefficients(), scale_model()).spike_prewarm_extra_pods
        for seconds in (0, 30, 90, 180, 300, 600, 1200)
    ]
    # A slower node needs more pods running beforehand; a slower ramp fewer.
    expected = sorted(counts) if field == "node_provision_seconds" else sorted(counts, reverse=True)
    assert counts == expected
    spike_pods = make_plan(EXAMPLE, coefficients(), scale_model()).spike_extra_pods
    assert all(0 <= count <= spike_pods for count in counts)


def test_a_drain_during_a_zone_loss_takes_one_more_replica() -> None:
    assert survives_zone_loss_and_drain(9, 3) == 5
    assert survives_zone_loss_and_drain(2, 3) == 0
    assert survives_zone_loss_and_drain(1, 1) == 0
    for replicas in range(1, 40):
        for zones in (1, 2, 3, 4):
            assert survives_zone_loss_and_drain(replicas, zones) <= survives_zone_loss(replicas, zones)


def test_zone_loss_and_drain_capacity_by_hand() -> None:
    # The example: 9 replicas -> 6 after a zone -> 5 after a drain: 5 x 2 cores / 0.5 ms = 20k/s;
    # 12 routers -> 8 -> 7: 23.3k/s. 20k >= the 12k peak: no shortfall.
    plan = make_plan(EXAMPLE, coefficients(), scale_model())
    assert plan.zone_loss_drain_capacity_qps == pytest.approx(20_000)
    assert plan.zone_loss_drain_shortfall_qps == 0
    # Planned at 100% CPU: 3 replicas for CPU, 5 for a zone loss (5 - 2 = 3); after a zone and a
    # drain 2 are left: 8k/s (routers 6 -> 3: 10k/s), 4k short of the 12k peak.
    tight = make_plan(_with(EXAMPLE, cpu_utilisation=1.0), coefficients(), scale_model())
    assert (tight.replicas, tight.routers) == (5, 6)
    assert tight.zone_loss_drain_capacity_qps == pytest.approx(8_000)
    assert tight.zone_loss_drain_shortfall_qps == pytest.approx(4_000)


def test_n_plus_one_capacity_never_exceeds_zone_loss_and_grows_with_replicas() -> None:
    previous = 0.0
    for peak in (3_000, 6_000, 12_000, 24_000, 48_000):
        plan = make_plan(_with(EXAMPLE, peak_qps=peak), coefficients(), scale_model())
        assert plan.zone_loss_drain_capacity_qps <= plan.zone_loss_capacity_qps <= plan.capacity_qps
        assert plan.zone_loss_drain_capacity_qps >= previous
        previous = plan.zone_loss_drain_capacity_qps


def test_the_user_store_is_its_own_memory_line_in_the_totals() -> None:
    # 100M users leave the router: 100M x (256 + 12) B = 26.8 GB per copy, one copy per zone (3).
    plan = make_plan(_with(EXAMPLE, users=100_000_000), coefficients(), scale_model())
    assert plan.user_store_copies == 3
    assert plan.user_memory_bytes == pytest.approx(3 * 26.8e9)
    pods_only = plan.shard_pods * plan.shard_memory_bytes + plan.routers * plan.router_memory_bytes
    assert plan.memory_needed_bytes == pytest.approx(pods_only + 3 * 26.8e9)
    two = make_plan(_with(EXAMPLE, users=100_000_000, user_store_copies=2), coefficients(), scale_model())
    assert two.user_memory_bytes == pytest.approx(2 * 26.8e9)
    assert two.memory_needed_bytes < plan.memory_needed_bytes
    # 1M users fit each of the 12 routers: the line is 12 copies of the 356 MB table.
    small = make_plan(EXAMPLE, coefficients(), scale_model())
    assert small.user_store_copies == 0
    assert small.user_memory_bytes == pytest.approx(12 * 356e6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peak_qps": 0}, "--peak-qps must be greater than 0"),
        ({"items": -5}, "--items must be greater than 0"),
        ({"recall": 1.5}, r"--recall must be within \(0, 1\]"),
        ({"availability": 100}, "--availability must be a percentage"),
        ({"cpu_utilisation": 0}, "--cpu-utilisation must be within"),
        ({"users": -1}, "--users must be 0 or more"),
        ({"spike_factor": 0.5}, "--spike-factor must be at least 1"),
        ({"shard_pod_memory_gib": 0.25}, "--shard-pod-memory-gib"),
        ({"items": 10_000_000_000, "max_shards": 64}, "--max-shards 64"),
        ({"m": 1}, "--m must be at least 2"),
        ({"exclude": -1}, "--exclude must be 0 or more"),
        ({"node_provision_seconds": -1}, "--node-provision-seconds"),
        ({"spike_ramp_seconds": -5}, "--spike-ramp-seconds"),
        ({"user_store_copies": -1}, "--user-store-copies"),
    ],
)
def test_bad_targets_name_the_flag(changes: dict[str, float], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        make_plan(_with(EXAMPLE, **changes), coefficients(), scale_model())


def _with(target: Target, **changes: Any) -> Target:
    from dataclasses import replace

    return replace(target, **changes)
