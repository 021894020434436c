"""Capacity plan: pure arithmetic from a target and the measured coefficients.

The rules, in the order they are applied:
- Shards are driven by memory: a shard pod holds `items/shards` items at the measured resident
  bytes per item, plus the process baseline, within `memory_fill` of its memory budget.
- Shard CPU per request comes from the scale model (`scale.py`, fitted to `make bench-scale`): the
  efSearch the recall target needs at this shard size and shard count, hnswlib searching at
  max(ef, k + the request's exclusions held by the shard), the CPU of that search at this size and
  dimension, the measured cost per excluded item, plus the shard's measured per-request overhead.
- Replicas per shard are driven by CPU (every request searches every shard once) at
  `cpu_utilisation` of the pod's cores at peak, then raised until losing the largest zone share
  (`ceil(R/zones)` replicas, topology spread keeps skew at 1) still leaves that CPU, and until the
  availability target holds under the strict policy with independent pod failures.
- Router replicas: the same CPU and zone rules on the router's measured CPU per request.
- Users: in every router while the table fits its budget, else in a store beside the routers,
  `user_store_copies` copies (one per zone by default) of its raw payload, counted in the totals.
- Spike: the pods a `spike_factor` spike needs, and how many of them must run before it: a pod
  asked for when the spike starts serves after `node_provision_seconds` (a new node) plus its
  shard's load, by which time the load has climbed a linear ramp of `spike_ramp_seconds`.
- N+1: the capacity after losing the largest zone share AND one more node drained (one more
  replica of every shard and one more router at worst), and by how much it falls short of peak.
- Threads and processes as the code starts them: a shard pod runs one search thread and a router
  pod one worker process (one event loop, at most one core each) per CPU its quota allows
  (`serving/cpus.py`: ceil of the CPU limit), so a pod's cores are all usable; each router worker
  holds its own process baseline, and the user table (memory-mapped) is held once per pod.

Nothing here measures or reads anything; every figure comes from `Target`, `Coefficients` or the
`ScaleModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from shardrec.planning.preview import Rates
from shardrec.tools.capacity.coefficients import FLOAT32_BYTES, Coefficients
from shardrec.tools.capacity.scale import MODEL, ScaleModel

GIB = 1024**3
SECONDS_PER_30_DAYS = 30 * 24 * 3600
MAX_RECALL = 0.995
"""Above this the scale fit (measured up to recall 0.98) is not asked: the plan is refused."""


class PlanError(ValueError):
    """The target cannot be planned; the message names the flag to change."""


@dataclass(frozen=True)
class Target:
    """What to plan for. Field `foo_bar` is the CLI flag `--foo-bar`."""

    peak_qps: float
    items: int
    dimension: int
    users: int
    k: int = 10
    recall: float = 0.95
    exclude: int = 0
    availability: float = 99.95
    zones: int = 3
    m: int = 16
    spike_factor: float = 10.0
    shard_pod_memory_gib: float = 16.0
    shard_pod_cores: float = 2.0
    router_pod_memory_gib: float = 8.0
    router_pod_cores: float = 2.0
    cpu_utilisation: float = 0.6
    memory_fill: float = 0.8
    pod_availability: float = 99.0
    build_cores: float = 16.0
    keep_previous_layouts: int = 1
    rollback_window_seconds: float = 300.0
    max_shards: int = 64
    node_provision_seconds: float = 90.0
    spike_ramp_seconds: float = 300.0
    user_store_copies: int = 0

    def check(self) -> None:
        """Raise PlanError naming the first flag out of range."""
        positive: tuple[str, ...] = (
            "peak_qps", "items", "dimension", "k", "zones", "m", "spike_factor", "shard_pod_memory_gib",
            "shard_pod_cores", "router_pod_memory_gib", "router_pod_cores", "build_cores", "max_shards",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not value > 0 or not math.isfinite(value):
                raise PlanError(f"{flag(name)} must be greater than 0, got {value}")
        if self.users < 0:
            raise PlanError(f"--users must be 0 or more, got {self.users}")
        if self.exclude < 0:
            raise PlanError(f"--exclude must be 0 or more, got {self.exclude}")
        if self.m < 2:
            raise PlanError(f"--m must be at least 2, got {self.m}")
        for name in ("recall", "cpu_utilisation", "memory_fill"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise PlanError(f"{flag(name)} must be within (0, 1], got {value}")
        for name in ("availability", "pod_availability"):
            value = getattr(self, name)
            if not 0 < value < 100:
                raise PlanError(f"{flag(name)} must be a percentage within (0, 100), got {value}")
        if self.keep_previous_layouts < 0 or self.rollback_window_seconds < 0:
            raise PlanError("--keep-previous-layouts and --rollback-window-seconds must be 0 or more")
        if self.node_provision_seconds < 0 or self.spike_ramp_seconds < 0:
            raise PlanError("--node-provision-seconds and --spike-ramp-seconds must be 0 or more")
        if self.user_store_copies < 0:
            raise PlanError(
                f"--user-store-copies must be 0 (one per zone) or more, got {self.user_store_copies}"
            )
        if self.spike_factor < 1:
            raise PlanError(f"--spike-factor must be at least 1, got {self.spike_factor}")


def flag(name: str) -> str:
    """The CLI flag of a `Target` field."""
    return "--" + name.replace("_", "-")


TARGET_FIELDS = tuple(f.name for f in fields(Target))


# --- building blocks (each hand-checked in tests/capacity) -------------------------------------


def shards_for_memory(items: int, bytes_per_item: float, usable_bytes: float) -> int:
    """Fewest shards whose items fit in `usable_bytes` each."""
    if usable_bytes <= 0:
        raise PlanError("the pod memory budget leaves no room for items; raise --shard-pod-memory-gib")
    return max(1, math.ceil(items * bytes_per_item / usable_bytes))


def replicas_for_cpu(cores_needed: float, cores_per_pod: float, utilisation: float) -> int:
    """Fewest pods that run `cores_needed` at `utilisation` of their cores (at least one)."""
    return max(1, math.ceil(cores_needed / (cores_per_pod * utilisation) - 1e-9))


def survives_zone_loss(replicas: int, zones: int) -> int:
    """Replicas left after losing the zone holding the most of them (spread with skew 1)."""
    if zones < 2:
        return 0
    return replicas - math.ceil(replicas / zones)


def replicas_for_zone_loss(needed: int, zones: int) -> int:
    """Fewest replicas such that losing one zone still leaves `needed` (and at least one)."""
    if zones < 2:
        return needed
    replicas = needed
    while survives_zone_loss(replicas, zones) < max(needed, 1):
        replicas += 1
    return replicas


def replicas_for_availability(target: float, shards: int, pod_availability: float) -> int:
    """Fewest replicas per shard such that every one of `shards` has a live replica with
    probability >= `target` (strict policy; independent pod failures; fractions, not percent)."""
    per_shard = target ** (1.0 / shards)
    replicas = 1
    while 1.0 - (1.0 - pod_availability) ** replicas < per_shard:
        replicas += 1
        if replicas > 64:
            raise PlanError("--availability cannot be reached with independent pods of --pod-availability")
    return replicas


def load_during_ramp(peak: float, spike: float, ramp_seconds: float, seconds: float) -> float:
    """Requests/s `seconds` after a spike starts rising from `peak` to `spike`, linearly over
    `ramp_seconds` (0: a step, the whole spike at once)."""
    if ramp_seconds <= 0 or seconds >= ramp_seconds:
        return spike
    return peak + (spike - peak) * max(seconds, 0.0) / ramp_seconds


def survives_zone_loss_and_drain(replicas: int, zones: int) -> int:
    """Replicas left after losing the zone holding the most of them and then draining one more node:
    a drain evicts at most one replica of a shard (PodDisruptionBudget maxUnavailable 1, and a
    node that holds several shards' pods holds one replica of each at worst)."""
    return max(survives_zone_loss(replicas, zones) - 1, 0)


def threads_for_quota(cores: float) -> int:
    """Threads (or worker processes) a pod with a CPU limit of `cores` starts: the CPUs its quota
    allows, rounded up, at least one (as `serving.cpus.cpus_within` does with a large affinity)."""
    return max(1, math.ceil(cores - 1e-9))


def error_budget_minutes(availability_percent: float, seconds: float = SECONDS_PER_30_DAYS) -> float:
    return (1.0 - availability_percent / 100.0) * seconds / 60.0


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Every figure of a plan, in SI units (bytes, seconds, requests/s)."""

    target: Target
    # memory and shards
    bytes_per_item: float
    index_file_bytes_per_item: float
    shards: int
    items_per_shard: float
    shard_memory_bytes: float
    # cpu and replicas
    shard_search_threads: int
    router_workers: int
    ef_search: int
    ef_searched: int
    shard_search_cpu_ms: float
    shard_exclusion_cpu_ms: float
    shard_cpu_ms: float
    replicas_cpu: int
    replicas_zone: int
    replicas_availability: int
    replicas: int
    router_cpu_ms: float
    router_replicas_cpu: int
    routers: int
    # users
    user_bytes_per_user: float
    user_table_bytes: float
    user_table_in_router: bool
    user_store_bytes: float
    user_store_copies: int
    user_memory_bytes: float
    router_memory_bytes: float
    # totals
    shard_pods: int
    pods: int
    cores: float
    memory_needed_bytes: float
    memory_requested_bytes: float
    # spike
    capacity_qps: float
    spike_qps: float
    spike_served_fraction: float
    spike_replicas: int
    spike_routers: int
    spike_extra_pods: int
    spike_ready_after_seconds: float
    spike_load_when_ready_qps: float
    spike_prewarm_replicas: int
    spike_prewarm_routers: int
    spike_prewarm_extra_pods: int
    # versions
    build_items_per_core_second: float
    build_seconds: float
    load_seconds: float
    roll_seconds: float
    blue_green_extra_bytes: float
    blue_green_extra_pods: int
    blue_green_extra_cores: float
    blue_green_requested_bytes: float
    blue_green_extra_seconds: float
    in_place_extra_bytes: float
    # storage and bandwidth
    artifact_bytes: float
    layouts_stored: int
    storage_bytes: float
    client_in_bytes: float
    client_out_bytes: float
    fanout_bytes: float
    peak_client_bytes_per_s: float
    peak_fanout_bytes_per_s: float
    roll_read_bytes: float
    # availability
    error_budget_minutes: float
    per_shard_availability: float
    zone_loss_capacity_qps: float
    zone_loss_drain_capacity_qps: float
    zone_loss_drain_shortfall_qps: float
    # where the plan extrapolates beyond the measurements
    warnings: tuple[str, ...]


def make_plan(target: Target, c: Coefficients, scale: ScaleModel = MODEL) -> Plan:
    """The plan for `target`; raises PlanError (naming a flag) or CoefficientsError. `scale` is the
    search and build cost by size (default: fitted to the committed `make bench-scale` points)."""
    target.check()
    sizing = _memory(target, c)
    sizing.update(_replicas(target, c, scale, sizing["shards"], sizing["items_per_shard"]))
    sizing.update(_users_and_totals(target, c, sizing))
    sizing.update(_spike(target, sizing, c))
    sizing.update(_versions_storage_bandwidth(target, c, scale, sizing))
    sizing["warnings"] = tuple(scale.warnings(target.recall, sizing["items_per_shard"], target.dimension))
    return Plan(target=target, **sizing)


def _memory(t: Target, c: Coefficients) -> dict[str, Any]:
    """Shards: the fewest whose items fit the pod memory budget."""
    bpi = c.shard_resident_bytes_per_item(t.dimension, t.m)
    usable = t.shard_pod_memory_gib * GIB * t.memory_fill - c.shard_process_baseline_bytes
    shards = shards_for_memory(t.items, bpi, usable)
    if shards > t.max_shards:
        raise PlanError(
            f"{t.items} items at {bpi:.0f} bytes each need {shards} shards of "
            f"{t.shard_pod_memory_gib:g} GiB, more than --max-shards {t.max_shards}: raise "
            "--shard-pod-memory-gib or --max-shards"
        )
    if shards > t.items:
        raise PlanError(f"--items {t.items} is fewer than the {shards} shards the memory budget asks for")
    per_shard = t.items / shards
    return {
        "bytes_per_item": bpi,
        "index_file_bytes_per_item": c.index_file_bytes_per_item(t.dimension, t.m),
        "shards": shards,
        "items_per_shard": per_shard,
        "shard_memory_bytes": per_shard * bpi + c.shard_process_baseline_bytes,
    }


def _replicas(t: Target, c: Coefficients, scale: ScaleModel, shards: int, per_shard: float) -> dict[str, Any]:
    """Replicas per shard (CPU, zone loss, availability) and routers (CPU, zone loss, >= 2)."""
    if t.recall > MAX_RECALL:
        raise PlanError(
            f"--recall {t.recall:g}: the ef fit is measured at {scale.recalls[0]:g}-{scale.recalls[1]:g} and "
            f"cannot promise more than {MAX_RECALL:g}; measure it with make bench-scale"
        )
    search = scale.shard_search(
        t.recall, t.k, items_per_shard=per_shard, shards=shards, dimension=t.dimension, excluded=t.exclude
    )
    shard_ms = search.cpu_us / 1000.0 + c.shard_overhead_cpu_ms
    replicas_cpu = replicas_for_cpu(t.peak_qps * shard_ms / 1000.0, t.shard_pod_cores, t.cpu_utilisation)
    replicas_zone = replicas_for_zone_loss(replicas_cpu, t.zones)
    replicas_avail = replicas_for_availability(t.availability / 100.0, shards, t.pod_availability / 100.0)
    router_ms = c.router_cpu_ms_per_request(shards)
    routers_cpu = replicas_for_cpu(t.peak_qps * router_ms / 1000.0, t.router_pod_cores, t.cpu_utilisation)
    return {
        "shard_search_threads": threads_for_quota(t.shard_pod_cores),
        "router_workers": threads_for_quota(t.router_pod_cores),
        "ef_search": search.ef,
        "ef_searched": search.ef_searched,
        "shard_search_cpu_ms": search.search_us / 1000.0,
        "shard_exclusion_cpu_ms": search.exclusion_us / 1000.0,
        "shard_cpu_ms": shard_ms,
        "replicas_cpu": replicas_cpu,
        "replicas_zone": replicas_zone,
        "replicas_availability": replicas_avail,
        "replicas": max(replicas_cpu, replicas_zone, replicas_avail),
        "router_cpu_ms": router_ms,
        "router_replicas_cpu": routers_cpu,
        "routers": max(replicas_for_zone_loss(routers_cpu, t.zones), 2),
    }


def _users_and_totals(t: Target, c: Coefficients, s: dict[str, Any]) -> dict[str, Any]:
    """Users live in the router while they fit its budget, else in a store beside it (sized by
    its raw payload); then the fleet's totals."""
    user_bpu = c.user_bytes_per_user(t.dimension)
    user_table = t.users * user_bpu
    baselines = s["router_workers"] * c.router_process_baseline_bytes
    router_room = t.router_pod_memory_gib * GIB * t.memory_fill - baselines
    in_router = user_table <= router_room
    router_memory = baselines + (user_table if in_router else 0.0)
    shard_pods = s["shards"] * s["replicas"]
    routers = s["routers"]
    copies = 0 if in_router else (t.user_store_copies or t.zones)
    store = 0.0 if in_router else t.users * (FLOAT32_BYTES * t.dimension + c.workload.user_id_bytes)
    return {
        "user_bytes_per_user": user_bpu,
        "user_table_bytes": user_table,
        "user_table_in_router": in_router,
        "user_store_bytes": store,
        "user_store_copies": copies,
        # The user table's share of the fleet's memory: held by every router, or the store's copies.
        "user_memory_bytes": routers * user_table if in_router else store * copies,
        "router_memory_bytes": router_memory,
        "shard_pods": shard_pods,
        "pods": shard_pods + routers,
        "cores": shard_pods * t.shard_pod_cores + routers * t.router_pod_cores,
        "memory_needed_bytes": shard_pods * s["shard_memory_bytes"]
        + routers * router_memory
        + store * copies,
        "memory_requested_bytes": (shard_pods * t.shard_pod_memory_gib + routers * t.router_pod_memory_gib)
        * GIB,
    }


def _spike(t: Target, s: dict[str, Any], c: Coefficients) -> dict[str, Any]:
    """What the fleet serves at 100% CPU (also after a zone loss, and after a zone loss with one
    more node drained), what a spike would need, and how much of it must run before the spike: a
    pod asked for when the spike starts serves after a new node (`node_provision_seconds`) and,
    for a shard, its load; by then the load has climbed the ramp."""
    shard_ms: float = s["shard_cpu_ms"]
    router_ms: float = s["router_cpu_ms"]
    replicas: int = s["replicas"]
    routers: int = s["routers"]

    def capacity(shard_pods: int, router_pods: int) -> float:
        return min(
            shard_pods * t.shard_pod_cores * 1000.0 / shard_ms,
            router_pods * t.router_pod_cores * 1000.0 / router_ms,
        )

    def pods_for(load: float) -> tuple[int, int]:
        return (
            replicas_for_zone_loss(
                replicas_for_cpu(load * shard_ms / 1000.0, t.shard_pod_cores, t.cpu_utilisation), t.zones
            ),
            replicas_for_zone_loss(
                replicas_for_cpu(load * router_ms / 1000.0, t.router_pod_cores, t.cpu_utilisation), t.zones
            ),
        )

    def extra(pods: tuple[int, int]) -> int:
        return int(s["shards"]) * max(pods[0] - replicas, 0) + max(pods[1] - routers, 0)

    spike = t.peak_qps * t.spike_factor
    spike_replicas, spike_routers = pods_for(spike)
    ready_after = t.node_provision_seconds + _load_seconds(t, c, s)
    load_when_ready = load_during_ramp(t.peak_qps, spike, t.spike_ramp_seconds, ready_after)
    prewarm = pods_for(load_when_ready)
    full = capacity(replicas, routers)
    drained = capacity(
        survives_zone_loss_and_drain(replicas, t.zones), survives_zone_loss_and_drain(routers, t.zones)
    )
    return {
        "capacity_qps": full,
        "spike_qps": spike,
        "spike_served_fraction": min(1.0, full / spike),
        "spike_replicas": spike_replicas,
        "spike_routers": spike_routers,
        "spike_extra_pods": extra((spike_replicas, spike_routers)),
        "spike_ready_after_seconds": ready_after,
        "spike_load_when_ready_qps": load_when_ready,
        "spike_prewarm_replicas": max(prewarm[0], replicas),
        "spike_prewarm_routers": max(prewarm[1], routers),
        "spike_prewarm_extra_pods": extra(prewarm),
        "zone_loss_capacity_qps": capacity(
            survives_zone_loss(replicas, t.zones), survives_zone_loss(routers, t.zones)
        ),
        "zone_loss_drain_capacity_qps": drained,
        "zone_loss_drain_shortfall_qps": max(t.peak_qps - drained, 0.0),
    }


def _load_seconds(t: Target, c: Coefficients, s: dict[str, Any]) -> float:
    """Seconds a new shard replica takes to load its shard file (at the measured load rate)."""
    return float(
        s["items_per_shard"] * c.index_file_bytes_per_item(t.dimension, t.m) / c.load_bytes_per_second
    )


def _versions_storage_bandwidth(
    t: Target, c: Coefficients, scale: ScaleModel, s: dict[str, Any]
) -> dict[str, Any]:
    """A new version is built off the serving pods (at the measured rate for its shard size, which
    falls as shards grow) and loaded by every replica in parallel."""
    build_rate = scale.build_items_per_core_second(s["items_per_shard"], t.dimension)
    build_s = t.items / (build_rate * t.build_cores)
    shard_file = s["items_per_shard"] * s["index_file_bytes_per_item"]
    load_s = _load_seconds(t, c, s)
    roll_s = build_s + load_s
    index_bytes = t.items * s["index_file_bytes_per_item"]
    ids_bytes = t.items * (c.workload.item_id_bytes + 1)
    users_bytes = t.users * (FLOAT32_BYTES * t.dimension + c.workload.user_id_bytes + 1)
    artifact = index_bytes + ids_bytes + users_bytes
    layouts_stored = 1 + t.keep_previous_layouts + 1  # serving, kept for rollback, being built
    fanout = s["shards"] * (c.shard_request_bytes(t.dimension) + c.shard_response_bytes(t.k))
    client_in, client_out = c.wire.client_request, c.client_response_bytes(t.k)
    return {
        "build_items_per_core_second": build_rate,
        "build_seconds": build_s,
        "load_seconds": load_s,
        "roll_seconds": roll_s,
        "blue_green_extra_bytes": s["shard_pods"] * s["shard_memory_bytes"],
        # The new layout starts every shard at replicasPerShard beside the old one: the scheduler
        # must place those pods at their requests, whatever they hold.
        "blue_green_extra_pods": s["shard_pods"],
        "blue_green_extra_cores": s["shard_pods"] * t.shard_pod_cores,
        "blue_green_requested_bytes": s["shard_pods"] * t.shard_pod_memory_gib * GIB,
        "blue_green_extra_seconds": roll_s + (t.rollback_window_seconds if t.keep_previous_layouts else 0.0),
        "in_place_extra_bytes": s["shard_pods"] * s["items_per_shard"] * s["bytes_per_item"],
        "artifact_bytes": artifact,
        "layouts_stored": layouts_stored,
        "storage_bytes": artifact * layouts_stored + FLOAT32_BYTES * t.dimension * (t.items + t.users),
        "client_in_bytes": client_in,
        "client_out_bytes": client_out,
        "fanout_bytes": fanout,
        "peak_client_bytes_per_s": t.peak_qps * (client_in + client_out),
        "peak_fanout_bytes_per_s": t.peak_qps * fanout,
        "roll_read_bytes": s["shard_pods"] * shard_file,
        "error_budget_minutes": error_budget_minutes(t.availability),
        "per_shard_availability": (t.availability / 100.0) ** (1.0 / s["shards"]),
    }


# --- rates for the plan preview (shardrec.planning.preview) --------------------------------------


def preview_rates(c: Coefficients, dimension: int, m: int, source: str) -> Rates:
    """The measured rates `recctl plan` needs, at one dimension and HNSW M: the same cost
    functions the capacity plan uses, so both read one set of numbers."""
    measured = c.source_of("build_items_per_core_second")
    return Rates(
        resident_bytes_per_item=c.shard_resident_bytes_per_item(dimension, m),
        index_file_bytes_per_item=c.index_file_bytes_per_item(dimension, m),
        shard_baseline_bytes=float(c.shard_process_baseline_bytes),
        build_items_per_core_second=c.build_items_per_core_second,
        load_bytes_per_second=c.load_bytes_per_second,
        source=f"{source} (measured {measured.date[:10]} on {measured.host})",
        search_ms_by_ef=tuple((point.ef_search, point.search_ms) for point in c.search),
    )
