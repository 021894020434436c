"""Coefficient fields from measurements: pure functions, no I/O.

coefficients_from_bench(results, existing)   the fields a bench results document holds
quantiles_ms(samples)                        a latency distribution in the file's form
coefficients_from_measurement(...)           the fields `coefficients.py measure` writes
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from shardrec.tools.capacity.coefficients import Coefficients

QUANTILES: tuple[float, ...] = (
    0.0,
    0.01,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.97,
    0.98,
    0.99,
)
QUANTILES += (0.995, 0.999, 1.0)
CPU_CLIENTS = 16
"""Concurrent clients under which CPU per request is measured (`coefficients.py measure`'s closed
loop; from `make bench`, its wrk -c16 row). CPU per request falls as concurrency grows (the router
coalesces more queries into each shard request), so every router point of the file comes from one
concurrency: 16 in flight is 8 per worker of a 2-CPU router pod, near what the seed's plan puts on
a worker at peak; the saturating row (wrk -c64) would make the plan optimistic."""


def coefficients_from_bench(results: dict[str, Any], existing: Coefficients | None = None) -> dict[str, Any]:
    """The measured coefficient fields in a bench results document.

    Two forms are read:
    - `{"command": ..., "coefficients": {<fields of the coefficients file>}}`: taken as they are;
    - the `results.json` that `benchmarks/run.py` writes (`command`, `rows` with per-process CPU
      ms per request): from its single-query router row at wrk -c`CPU_CLIENTS` (else its first
      single-query router row that is not the half-load one), the router's CPU per request at
      that shard count (`router_cpu`, merged with `existing` points at other shard
      counts) and the shards' CPU per query beyond the in-process search
      (`shard_overhead_cpu_ms` = shard CPU per request / shards - in-process single-query CPU /
      shards).
    Raises ValueError when neither form yields a field."""
    command = results.get("command")
    if not isinstance(command, str) or not command:
        raise ValueError('bench results: no "command" naming how they were produced')
    section = results.get("coefficients")
    if isinstance(section, dict) and section:
        measured = {name: value for name, value in section.items() if name != "provenance"}
        measured["provenance"] = {"command": command, "note": str(results.get("note", ""))}
        return measured
    rows = results.get("rows")
    if not isinstance(rows, list):
        raise ValueError('bench results: neither "coefficients" nor "rows"')
    measured = _from_rows(rows, existing)
    if not measured:
        raise ValueError("bench results: no router row with per-process CPU (was the router benchmarked?)")
    measured["provenance"] = {
        "command": command,
        "note": "router_cpu and shard_overhead_cpu_ms from the single-query router row at "
        f"wrk -c{CPU_CLIENTS} of the benchmark (the concurrency coefficients.py measure uses); "
        "router_cpu points at other shard counts are kept from earlier measurements",
    }
    return measured


def _cpu(row: dict[str, Any], prefix: str) -> tuple[str, float] | None:
    for stats in row.get("processes", []):
        name, value = str(stats.get("name", "")), stats.get("cpu_ms_per_request")
        if name.startswith(prefix) and isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return name, float(value)
    return None


def _router_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The single-query router row at wrk -c`CPU_CLIENTS`, else the first one but the half-load
    row (which names the concurrency that gave half the saturating rate)."""
    singles = [
        r
        for r in rows
        if r.get("scenario", "").startswith("router, single query, wrk -c")
        and "(~half load)" not in r["scenario"]
    ]
    wanted = re.compile(rf"router, single query, wrk -c{CPU_CLIENTS}\b")
    return next((r for r in singles if wanted.match(r["scenario"])), singles[0] if singles else None)


def _from_rows(rows: list[dict[str, Any]], existing: Coefficients | None) -> dict[str, Any]:
    router_row = _router_row(rows)
    single = next(
        (r for r in rows if r.get("scenario", "").startswith("in-process hnswlib, single query")), None
    )
    if router_row is None:
        return {}
    router, shard_stats = _cpu(router_row, "router"), _cpu(router_row, "shards x")
    if router is None or shard_stats is None:
        return {}
    shards = int(shard_stats[0].removeprefix("shards x"))
    points = [p.model_dump() for p in existing.router_cpu if p.shards != shards] if existing else []
    points.append({"shards": shards, "cpu_ms_per_request": round(router[1], 4)})
    measured: dict[str, Any] = {"router_cpu": sorted(points, key=lambda p: p["shards"])}
    inprocess = _cpu(single, "in-process") if single is not None else None
    if inprocess is not None:
        overhead = (shard_stats[1] - inprocess[1]) / shards
        measured["shard_overhead_cpu_ms"] = round(max(overhead, 0.0), 4)
    return measured


def quantiles_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    values = np.percentile(np.asarray(samples_s) * 1000.0, [q * 100 for q in QUANTILES])
    ms = np.maximum.accumulate(np.round(values, 4))
    return {"quantiles": list(QUANTILES), "ms": [float(v) for v in ms], "requests": len(samples_s)}


def _workers(count: int) -> str:
    if count == 1:
        return "one process"
    return f"a supervisor and {count} worker processes, one per usable CPU"


def coefficients_from_measurement(
    *,
    command: str,
    items: int,
    shards: int,
    dimension: int,
    m: int,
    ef_construction: int,
    recall: float,
    k: int,
    target_ef: int,
    search: list[dict[str, Any]],
    search_ms_at: float,
    shard_ms: float,
    router_points: list[dict[str, Any]],
    file_points: list[dict[str, Any]],
    memory: dict[str, Any],
    base: dict[str, int],
    built: dict[str, float],
    wire: dict[str, float],
    distribution: dict[str, Any],
    router_workers: int,
) -> dict[str, Any]:
    """The fields `coefficients.py measure` writes, with its provenance, from what it measured:
    the offline part (`search` sweep, index `file_points`, resident `memory`, `built` rate), the
    process `base`lines, CPU per request (`shard_ms`, `router_points`), bytes on the `wire` and
    the shard latency `distribution`; `target_ef` is the cheapest efSearch reaching `recall`
    and `search_ms_at` its in-process search CPU."""
    return {
        "provenance": {
            "command": command,
            "note": (
                "first short measurement (not make bench): synthetic clustered data, cosine, "
                f"{shards} shards x 1 replica, one search thread per shard, router load: "
                f"closed loop of {CPU_CLIENTS} concurrent raw HTTP/1.1 keep-alive clients on the same "
                "machine; "
                f"the router as it starts by default ({_workers(router_workers)}), its CPU and "
                "memory summed over its processes; "
                f"ef {target_ef} is "
                f"the cheapest with recall@{k} >= {recall}; user table without seen items; "
                "index load from a warm page cache."
            ),
        },
        "workload": {
            "items_per_shard": items // shards,
            "shards": shards,
            "dimension": dimension,
            "m": m,
            "ef_construction": ef_construction,
            "k": k,
            "metric": "cosine",
            "item_id_bytes": float(len(f"item-{0:07d}")),
            "user_id_bytes": float(len(f"user-{0:07d}")),
        },
        "search": search,
        "shard_overhead_cpu_ms": round(max(shard_ms - search_ms_at, 0.0), 4),
        "router_cpu": router_points,
        "index_file": file_points,
        "index_resident_extra_bytes_per_item": round(
            max(memory["shard_bytes"] - memory["index_bytes"], 0) / memory["count"], 2
        ),
        "shard_process_baseline_bytes": base["shard"],
        "router_process_baseline_bytes": base["router"],
        "user_resident_bytes_per_user": round(memory["users_bytes"] / max(memory["users"], 1), 2),
        "build_items_per_core_second": round(built["items"] / built["cpu_s"], 1),
        "load_bytes_per_second": round(memory["index_bytes"] / memory["load_s"], 1),
        "wire": {name: round(value, 2) for name, value in wire.items()},
        "shard_latency_ms": distribution,
    }
