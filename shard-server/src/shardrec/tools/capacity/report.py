"""A plan as rows (section, quantity, value, basis) and as a plain-text table.

The basis column says where each figure comes from: a flag of the target, a measured coefficient
(by its field name in the coefficients file), or the arithmetic that joins them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shardrec.tools.capacity.coefficients import Coefficients
from shardrec.tools.capacity.pipeline import MEASURED_ALS, Pipeline, pipeline_flag
from shardrec.tools.capacity.planner import Plan, flag
from shardrec.tools.capacity.scale import MEASURED


@dataclass(frozen=True)
class Row:
    section: str
    quantity: str
    value: str
    basis: str


def size(n_bytes: float) -> str:
    """Binary units: 1.5 KiB, 12.0 GiB, 3.20 TiB."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def rate(bytes_per_s: float) -> str:
    return f"{size(bytes_per_s)}/s ({bytes_per_s * 8 / 1e9:.2f} Gbit/s)"


def plan_rows(p: Plan) -> list[Row]:
    rows: list[Row] = []
    for section, entries in (
        ("warnings", _warnings(p)),
        ("memory", _memory(p)),
        ("cpu", _cpu(p)),
        ("users", _users(p)),
        ("total", _total(p)),
        ("spike", _spike(p)),
        ("n+1", _n_plus_one(p)),
        ("versions", _versions(p)),
        ("storage", _storage(p)),
        ("bandwidth", _bandwidth(p)),
        ("availability", _availability(p)),
    ):
        rows.extend(Row(section, quantity, value, basis) for quantity, value, basis in entries)
    return rows


Entries = list[tuple[str, str, str]]


def _warnings(p: Plan) -> Entries:
    return [("extrapolated", warning, "scale fit (make bench-scale)") for warning in p.warnings]


def _memory(p: Plan) -> Entries:
    t = p.target
    budget = (
        f"items x bytes/item / ({flag('shard_pod_memory_gib')} {t.shard_pod_memory_gib:g} x "
        f"{flag('memory_fill')} {t.memory_fill:g} - baseline)"
    )
    return [
        ("bytes per indexed item", f"{p.bytes_per_item:.0f} B", "index_file fit (4*D + a*M + b) + extras"),
        ("shards", str(p.shards), budget),
        ("items per shard", f"{p.items_per_shard:,.0f}", "items / shards"),
        ("memory per shard pod", size(p.shard_memory_bytes), "items/shard x bytes/item + baseline"),
    ]


def _cpu(p: Plan) -> Entries:
    t = p.target
    replicas = (
        f"max(cpu {p.replicas_cpu}, zone loss {p.replicas_zone}, availability {p.replicas_availability})"
    )
    return [
        (
            "efSearch for the recall",
            str(p.ef_search),
            f"fit of ef for {flag('recall')} {t.recall:g} by items/shard, shards merged, dimension",
        ),
        (
            "efSearch searched",
            str(p.ef_searched),
            f"max(ef, {flag('k')} {t.k} + {flag('exclude')} {t.exclude} / shards)",
        ),
        (
            "shard search CPU",
            f"{p.shard_search_cpu_ms:.3f} ms",
            "fit of measured CPU by ef, items/shard, dimension (one thread)",
        ),
        (
            "shard exclusion CPU",
            f"{p.shard_exclusion_cpu_ms:.3f} ms",
            "excluded per shard x measured cost per excluded item",
        ),
        (
            "shard CPU per request",
            f"{p.shard_cpu_ms:.3f} ms",
            "search + exclusions + shard_overhead_cpu_ms",
        ),
        ("replicas per shard", str(p.replicas), replicas),
        (
            "search threads per shard pod",
            str(p.shard_search_threads),
            f"the CPUs the quota allows: ceil({flag('shard_pod_cores')} {t.shard_pod_cores:g}) as CPU limit",
        ),
        (
            "router workers per pod",
            str(p.router_workers),
            f"one process (event loop, <= 1 core) per CPU of {flag('router_pod_cores')} "
            f"{t.router_pod_cores:g}",
        ),
        ("router CPU per request", f"{p.router_cpu_ms:.3f} ms", "router_cpu fit over shard count"),
        (
            "router replicas",
            str(p.routers),
            f"cpu {p.router_replicas_cpu} at {flag('cpu_utilisation')} {t.cpu_utilisation:g}, "
            "zone loss, >= 2",
        ),
    ]


def _users(p: Plan) -> Entries:
    budget = f"{flag('router_pod_memory_gib')} {p.target.router_pod_memory_gib:g}"
    entries = [
        ("router bytes per user", f"{p.user_bytes_per_user:.0f} B", "4*D + user_resident extras"),
        ("user table", size(p.user_table_bytes), "users x bytes/user"),
    ]
    if p.user_table_in_router:
        entries.append(("where", "in every router", f"fits {budget}"))
    else:
        entries.append(("where", "feature store beside the router", f"exceeds {budget}"))
        entries.append(("user store payload", size(p.user_store_bytes), "users x (4*D + id bytes), per copy"))
        copies = flag("user_store_copies")
        entries.append(
            (
                "user store copies",
                str(p.user_store_copies),
                f"{copies} {p.target.user_store_copies}"
                if p.target.user_store_copies
                else f"{copies} 0: one per zone",
            )
        )
    entries.append(
        (
            "memory per router pod",
            size(p.router_memory_bytes),
            f"{p.router_workers} workers x baseline + user table once if inside (memory-mapped)",
        )
    )
    return entries


def _total(p: Plan) -> Entries:
    return [
        ("pods", f"{p.pods} ({p.shard_pods} shard + {p.routers} router)", "shards x replicas + routers"),
        ("cores", f"{p.cores:g}", f"{flag('shard_pod_cores')} / {flag('router_pod_cores')} per pod"),
        ("memory needed", size(p.memory_needed_bytes), "sum of pod memory above + the user store's copies"),
        (
            "of which users",
            size(p.user_memory_bytes),
            "user table in every router"
            if p.user_table_in_router
            else "user store payload x copies (raw payload; the store's own overhead not included)",
        ),
        ("memory requested", size(p.memory_requested_bytes), "pods x pod memory budget"),
    ]


def _spike(p: Plan) -> Entries:
    t = p.target
    served = f"{p.spike_served_fraction:.0%} served, {1 - p.spike_served_fraction:.0%} shed (503)"
    absorb = f"+{p.spike_extra_pods} pods ({p.spike_replicas} replicas/shard, {p.spike_routers} routers)"
    return [
        ("capacity at 100% CPU", f"{p.capacity_qps:,.0f} req/s", f"{p.capacity_qps / t.peak_qps:.1f}x peak"),
        (
            "capacity after a zone loss",
            f"{p.zone_loss_capacity_qps:,.0f} req/s",
            f"{p.zone_loss_capacity_qps / t.peak_qps:.2f}x peak",
        ),
        (
            f"{t.spike_factor:g}x spike ({p.spike_qps:,.0f} req/s)",
            served,
            "admission sheds past capacity; admitted requests keep their latency",
        ),
        ("to absorb the spike", absorb, f"{flag('cpu_utilisation')} {t.cpu_utilisation:g} at spike load"),
        (
            "a pod asked for at the spike serves after",
            duration(p.spike_ready_after_seconds),
            f"{flag('node_provision_seconds')} {t.node_provision_seconds:g} (a new node) + shard load",
        ),
        (
            "spike pods to run before the spike",
            f"+{p.spike_prewarm_extra_pods} of the +{p.spike_extra_pods} "
            f"({p.spike_prewarm_replicas} replicas/shard, {p.spike_prewarm_routers} routers)",
            f"the load {duration(p.spike_ready_after_seconds)} into a linear ramp to the spike over "
            f"{flag('spike_ramp_seconds')} {t.spike_ramp_seconds:g}: "
            f"{p.spike_load_when_ready_qps:,.0f} req/s (a step spike, ramp 0: all of them)",
        ),
        ("a new shard replica serves after", duration(p.load_seconds), "shard file / load_bytes_per_second"),
    ]


def _n_plus_one(p: Plan) -> Entries:
    t = p.target
    drained = p.zone_loss_drain_capacity_qps
    verdict = (
        "serves peak at 100% CPU"
        if p.zone_loss_drain_shortfall_qps <= 0
        else f"short of peak by {p.zone_loss_drain_shortfall_qps:,.0f} req/s "
        f"({p.zone_loss_drain_shortfall_qps / t.peak_qps:.0%})"
    )
    return [
        (
            "capacity after a zone loss and a drain",
            f"{drained:,.0f} req/s",
            f"{drained / t.peak_qps:.2f}x peak: the largest zone share and one more replica per shard "
            "and router lost (PDB maxUnavailable 1)",
        ),
        ("zone loss + drain at peak", verdict, f"against {flag('peak_qps')} {t.peak_qps:g}"),
    ]


def _versions(p: Plan) -> Entries:
    t = p.target
    return [
        (
            "build a version",
            duration(p.build_seconds),
            f"items / ({p.build_items_per_core_second:.0f} items/s/core at this shard size "
            f"x {flag('build_cores')} {t.build_cores:g})",
        ),
        ("roll it out", duration(p.roll_seconds), "build + load (replicas load in parallel)"),
        (
            "blue/green: pods to place",
            f"+{p.blue_green_extra_pods} pods (+{p.blue_green_extra_cores:g} cores, "
            f"+{size(p.blue_green_requested_bytes)} requested) for {duration(p.blue_green_extra_seconds)}",
            "the new layout's shard pods at their requests, beside the old, during roll + rollback window",
        ),
        (
            "blue/green cost",
            f"+{size(p.blue_green_extra_bytes)} resident",
            "the second layout's memory in use (what the pods above hold)",
        ),
        (
            "in-place alternative",
            f"+{size(p.in_place_extra_bytes)} always",
            "every pod sized to hold two indexes while it swaps",
        ),
    ]


def _storage(p: Plan) -> Entries:
    kept = f"{p.layouts_stored} layouts (serving, {flag('keep_previous_layouts')}, building) + embeddings"
    return [
        ("artifact per layout", size(p.artifact_bytes), "index files + ids + user part"),
        ("stored", size(p.storage_bytes), kept),
        ("read by a rollout", size(p.roll_read_bytes), "every replica reads its shard"),
    ]


def _bandwidth(p: Plan) -> Entries:
    return [
        ("client request in / out", f"{p.client_in_bytes:.0f} B / {p.client_out_bytes:.0f} B", "wire"),
        ("router to shards per request", f"{p.fanout_bytes:,.0f} B", "shards x (request + answer)"),
        ("at peak, clients", rate(p.peak_client_bytes_per_s), "peak x (in + out)"),
        ("at peak, router to shards", rate(p.peak_fanout_bytes_per_s), "peak x fan-out bytes"),
    ]


def _availability(p: Plan) -> Entries:
    t = p.target
    return [
        (
            "error budget",
            f"{p.error_budget_minutes:.1f} min / 30 days",
            f"{flag('availability')} {t.availability:g}",
        ),
        (
            "each shard must be up",
            f"{p.per_shard_availability * 100:.5f}%",
            "strict: a request needs every shard",
        ),
        (
            "pod availability",
            f"{t.pod_availability:g}%",
            f"assumed, not measured ({flag('pod_availability')})",
        ),
    ]


def render(rows: list[Row], header: str) -> str:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("section", "quantity", "value")]
    lines = [header, ""]
    titles = ("section", "quantity", "value", "basis")
    lines.append("  ".join(title.ljust(w) for title, w in zip(titles, [*widths, 0], strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in [*widths, 5]))
    previous = ""
    for row in rows:
        section = row.section if row.section != previous else ""
        previous = row.section
        cells = (section, row.quantity, row.value)
        lines.append("  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)) + "  " + row.basis)
    return "\n".join(lines) + "\n"


def markdown(rows: list[Row]) -> str:
    """The same rows as a Markdown table (docs/design.md embeds it; `|` in a cell is escaped)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| section | quantity | value | basis |", "|---|---|---|---|"]
    previous = ""
    for row in rows:
        section = row.section if row.section != previous else ""
        previous = row.section
        cells = (section, row.quantity, row.value, row.basis)
        lines.append("| " + " | ".join(cell(value) for value in cells) + " |")
    return "\n".join(lines) + "\n"


def provenance_lines(c: Coefficients, path: str) -> list[str]:
    lines = [f"coefficients: {path}"]
    for entry in c.provenance:
        lines.append(f"  {entry.date}  {entry.command}  [{', '.join(entry.fields)}]")
    return lines


def scale_lines() -> list[str]:
    """Where the search and build cost by size comes from: the scale points and their commands."""
    return ["scale points (search and build cost by size, shardrec/tools/capacity/scale.py):"] + [
        f"  {point.items:,} x {point.dimension}: {point.command}" for point in MEASURED
    ]


# --- the pipeline around the fleet (`recctl capacity --pipeline`) ---------------------------------


def _usd(value: float) -> str:
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 0.01:
        return f"${value:.2f}"
    return f"${value:.5f}"


def pipeline_rows(q: Pipeline) -> list[Row]:
    rows: list[Row] = []
    for section, entries in (
        ("events", _events(q)),
        ("training", _training(q)),
        ("freshness", _freshness(q)),
        ("caching", _caching(q)),
        ("ranking", _ranking(q)),
        ("a/b test", _ab(q)),
        ("regions", _regions(q)),
        ("cost", _cost(q)),
    ):
        rows.extend(Row(section, quantity, value, basis) for quantity, value, basis in entries)
    return rows


def _events(q: Pipeline) -> Entries:
    pt = q.target
    f = pipeline_flag
    return [
        (
            "events per day",
            f"{q.events_per_day:,.0f}",
            f"{f('daily_active_users')} {pt.daily_active_users:,} x {f('events_per_user_day')} "
            f"{pt.events_per_user_day:g} (assumed)",
        ),
        (
            "events/s mean / peak",
            f"{q.events_mean_per_s:,.0f} / {q.events_peak_per_s:,.0f}",
            f"per day / 86,400; peak x {f('event_peak_factor')} {pt.event_peak_factor:g} (assumed)",
        ),
        (
            "bytes per day",
            size(q.event_bytes_per_day),
            f"events x {f('event_bytes')} {pt.event_bytes:g} (assumed, uncompressed)",
        ),
        ("log write rate at peak", rate(q.log_peak_bytes_per_s), "peak events/s x event bytes"),
        (
            "log partitions",
            str(q.log_partitions),
            f"max(peak bytes / {f('partition_mib_per_second')} {pt.partition_mib_per_second:g} MiB/s, "
            f"peak events / {f('partition_events_per_second')} {pt.partition_events_per_second:g} per "
            "consumer) (assumed); keyed by user",
        ),
        (
            "log stored",
            size(q.log_stored_bytes),
            f"bytes/day x {f('log_retention_days')} {pt.log_retention_days:g} x "
            f"{f('log_replication')} {pt.log_replication}",
        ),
    ]


def _training(q: Pipeline) -> Entries:
    pt = q.target
    f = pipeline_flag
    fit = q.als_fit
    measured = MEASURED_ALS if q.als_fit.nnz == MEASURED_ALS.nnz else None
    return [
        (
            "ALS input",
            f"{q.training_nnz:,.0f} nonzeros, {q.training_rows:,} rows, {q.training_factors} factors",
            f"users x {f('training_interactions_per_user')} {pt.training_interactions_per_user:g} (assumed); "
            "users + items; the plan's dimension",
        ),
        (
            "measured",
            f"{fit.nnz:,} nonzeros, {fit.rows:,} rows"
            + (f", {measured.points[0].factors}-{measured.points[-1].factors} factors" if measured else ""),
            f"`{measured.command}` ({measured.date}; docs/benchmarks.md train-rate), one thread"
            if measured
            else "given points",
        ),
        (
            "cost of one iteration (fitted)",
            f"a {fit.a_ns:.2f} ns, b {fit.b_ns:.3f} ns, c {fit.c_s:.4f} s",
            "CPU = a x nnz x f + b x rows x f^2 + c (c: factor-independent, per iteration)",
        ),
        (
            "checked on larger matrices",
            f"measured / fit {q.als_calibration:.2f} at {q.als_calibration_check_nnz:,} nonzeros "
            f"(up to {q.als_calibration_largest:.2f})"
            if q.als_calibration_check_nnz
            else "no check",
            "the same bench on seeded matrices up to ~200x the nonzeros: the check nearest the target's "
            "nonzeros per row, and the largest ratio of any",
        ),
        (
            "CPU per iteration",
            f"{q.als_iteration_cpu_s / 3600:.2f} core-h (range {q.als_iteration_cpu_s_low / 3600:.2f}-"
            f"{q.als_iteration_cpu_s_high / 3600:.2f})",
            f"EXTRAPOLATED {q.extrapolation_checked_nnz:,.0f}x the largest check: fit (c scaled by rows) "
            "x the check's ratio; range: the fastest runs' fit with c scaled least - the slowest's with "
            "c scaled most x the largest ratio",
        ),
        (
            "CPU per training",
            f"{q.training_core_hours:,.1f} core-h (range {q.training_core_hours_low:,.1f}-"
            f"{q.training_core_hours_high:,.1f})",
            f"x {f('training_iterations')} {pt.training_iterations}",
        ),
        (
            "training cores",
            str(q.training_cores),
            f"to finish within {f('training_deadline_hours')} {pt.training_deadline_hours:g} h, "
            "assuming ALS scales linearly over cores (not measured)",
        ),
        (
            "training memory",
            size(q.training_memory_bytes),
            "factors (4 B x rows x f) + the matrix in both orientations (8 B per nonzero each)",
        ),
        (
            "cadence",
            f"{q.trainings_per_day:g} per day",
            f"{f('train_every_hours')} {pt.train_every_hours:g}; each new version rolls out as in the plan",
        ),
    ]


def _freshness(q: Pipeline) -> Entries:
    pt = q.target
    f = pipeline_flag
    headroom = (
        q.measured_writes_per_leader / q.writes_per_leader_peak if q.writes_per_leader_peak else math.inf
    )
    return [
        (
            "item writes/s mean / peak",
            f"{q.item_writes_mean_per_s:.2f} / {q.item_writes_peak_per_s:.2f}",
            f"{f('item_writes_per_day')} {pt.item_writes_per_day:,.0f} (assumed) / 86,400; peak x "
            f"{f('event_peak_factor')}",
        ),
        (
            "per shard leader at peak",
            f"{q.writes_per_leader_peak:.2f} writes/s",
            f"one leader per shard, {q.plan.shards} shard(s)",
        ),
        (
            "measured per leader",
            f"{q.measured_writes_per_leader:.0f} writes/s ({headroom:,.0f}x the need)",
            "the low end of 62-78 acknowledged writes/s over 2 leaders on a loaded 2-core machine "
            "(docs/design.md, item writes)",
        ),
        (
            "user fold-in CPU",
            f"{q.foldin_cpu_ms:.2f} ms per request",
            "measured at 128 factors, one BLAS thread (docs/evaluation.md, user fold-in); "
            "an upper bound at fewer factors",
        ),
        (
            "fold-in cores at peak",
            f"{q.foldin_cores:.1f}",
            f"peak x {f('foldin_share')} {pt.foldin_share:g} x fold-in CPU / --cpu-utilisation "
            f"{q.plan.target.cpu_utilisation:g}",
        ),
    ]


def _caching(q: Pipeline) -> Entries:
    return [
        (
            "result cache hit ratio",
            f"{q.cache_hit_ratio:.3f}",
            "measured: a warmed router, Zipf s=1.1 over 100,000 users (docs/benchmarks.md, result cache)",
        ),
        (
            "shard cores it would save at peak",
            f"{q.shard_cores_saved_by_cache:.0f} of {q.plan.shard_pods * q.plan.target.shard_pod_cores:g}",
            "hit ratio x shard cores; NOT taken: the cache keys on the layout, so every new version "
            "starts cold, and 100M users are not 100k",
        ),
    ]


def _ranking(q: Pipeline) -> Entries:
    pt = q.target
    f = pipeline_flag
    return [
        (
            "retrieval for ranking",
            f"k={pt.ranking_candidates}: efSearch searched {q.ranking_ef_searched}, "
            f"+{q.ranking_retrieval_extra_cores:g} cores",
            "the same plan at --k = the candidates: shards search at max(ef, k); the router's CPU "
            "was measured at k=10 only, its growth with k is not counted",
        ),
        (
            "ranking CPU per request",
            f"{q.ranking_cpu_ms:.2f} ms",
            f"{f('ranking_candidates')} {pt.ranking_candidates} x {f('ranking_us_per_candidate')} "
            f"{pt.ranking_us_per_candidate:g} µs (ASSUMED: a GBDT or small MLP, features at hand)",
        ),
        (
            "ranking cores at peak",
            f"{q.ranking_cores:.1f}",
            f"peak x ranking CPU / --cpu-utilisation {q.plan.target.cpu_utilisation:g}; feature "
            "fetches not included",
        ),
    ]


def _ab(q: Pipeline) -> Entries:
    pt = q.target
    return [
        (
            "B arm",
            f"{pt.ab_share:.0%} of users",
            f"{pipeline_flag('ab_share')}: the canary's sticky split, blake2b(layout, user id) < weight",
        ),
        (
            "B arm as the canary runs it",
            f"+{q.ab_candidate_pods} pods, +{q.ab_candidate_cores:g} cores (costed)",
            "the candidate layout starts every shard at replicasPerShard: the blue/green pods of the plan",
        ),
        (
            "B arm sized for its share",
            f"+{q.ab_extra_pods} pods ({q.ab_arm_replicas} replicas/shard), +{q.ab_extra_cores:g} cores",
            "its share at --cpu-utilisation and a zone loss: NOT built (a candidate scaled down, then "
            "up before a switch)",
        ),
    ]


def _regions(q: Pipeline) -> Entries:
    return [
        (
            "regions",
            str(q.regions),
            f"{pipeline_flag('regions')}: each runs the whole plan (takes every user when the others "
            "are down); training once, its artifacts copied",
        ),
        (
            "cores, all regions",
            f"{q.cores_all_regions:,.0f}",
            "regions x (plan + fold-in + retrieval for ranking + ranking + B arm as run)",
        ),
        (
            "events copied across regions",
            rate(q.cross_region_bytes_per_s),
            "(regions - 1) x mean event bytes/s",
        ),
    ]


def _cost(q: Pipeline) -> Entries:
    pt = q.target
    f = pipeline_flag
    prices = (
        f"{f('core_hour_usd')} {pt.core_hour_usd:g}, {f('gib_hour_usd')} {pt.gib_hour_usd:g} "
        "(ASSUMED on-demand prices)"
    )
    return [
        (
            "requests per day",
            f"{q.requests_per_day:,.0f}",
            f"{f('daily_active_users')} x {f('requests_per_user_day')} {pt.requests_per_user_day:g}",
        ),
        (
            "serving, one region",
            f"{_usd(q.serving_usd_per_day)}/day, {_usd(q.serving_usd_per_1k)} per 1k requests",
            f"plan cores and requested memory + the user store, 24 h; {prices}",
        ),
        (
            "with the pipeline, one region",
            f"{_usd(q.pipeline_usd_per_day)}/day, {_usd(q.pipeline_usd_per_1k)} per 1k requests",
            "+ fold-in, retrieval for ranking, ranking, B arm as run, training; NOT the log's brokers nor "
            "the feature store's CPU",
        ),
        (
            f"all {q.regions} regions",
            f"{_usd(q.all_regions_usd_per_day)}/day, {_usd(q.all_regions_usd_per_1k)} per 1k requests",
            "regions x serving and its extras + one training",
        ),
    ]
