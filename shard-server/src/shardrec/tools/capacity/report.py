"""A plan as rows (section, quantity, value, basis) and as a plain-text table.

The basis column says where each figure comes from: a flag of the target, a measured coefficient
(by its field name in the coefficients file), or the arithmetic that joins them.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardrec.tools.capacity.coefficients import Coefficients
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
