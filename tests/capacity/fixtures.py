"""Hand-made coefficients with round numbers, so plans can be checked by hand.

Not measurements: the real ones are in benchmarks/coefficients.json. The values are chosen so that
every step of the worked example in test_planner.py comes out in round figures.
"""

from __future__ import annotations

import math
from typing import Any

from shardrec.tools.capacity.coefficients import MEASURED_FIELDS, Coefficients
from shardrec.tools.capacity.scale import ScaleModel

GIB = 1024**3


def document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "provenance": [
            {
                "command": "hand-made test fixture",
                "date": "2026-01-01",
                "host": "tests",
                "fields": list(MEASURED_FIELDS),
            }
        ],
        "workload": {
            "items_per_shard": 5_000_000,
            "shards": 2,
            "dimension": 64,
            "m": 16,
            "ef_construction": 200,
            "k": 10,
            "metric": "cosine",
            "item_id_bytes": 12.0,
            "user_id_bytes": 12.0,
        },
        # efSearch 64 reaches recall 0.95 at 0.2 ms per query per shard.
        "search": [
            {"ef_search": 32, "recall_at_k": 0.90, "search_ms": 0.1},
            {"ef_search": 64, "recall_at_k": 0.96, "search_ms": 0.2},
        ],
        "shard_overhead_cpu_ms": 0.3,
        # Router: 0.2 ms per shard + 0.2 ms.
        "router_cpu": [
            {"shards": 1, "cpu_ms_per_request": 0.4},
            {"shards": 4, "cpu_ms_per_request": 1.0},
        ],
        # File bytes per item = 4*D + 8*M + 16: 400 at (64, 16), 528 at (64, 32).
        "index_file": [
            {"dimension": 64, "m": 16, "items": 1000, "file_bytes_per_item": 400.0},
            {"dimension": 64, "m": 32, "items": 1000, "file_bytes_per_item": 528.0},
        ],
        "index_resident_extra_bytes_per_item": 100.0,
        "shard_process_baseline_bytes": GIB // 2,
        "router_process_baseline_bytes": GIB // 4,
        "user_resident_bytes_per_user": 356.0,
        "build_items_per_core_second": 10_000.0,
        "load_bytes_per_second": 1e9,
        "wire": {
            "client_request": 200.0,
            "client_response_fixed": 150.0,
            "client_response_per_item": 50.0,
            "shard_request_fixed": 150.0,
            "shard_response_fixed": 100.0,
            "shard_response_per_result": 16.0,
        },
        "shard_latency_ms": {
            "quantiles": [0.0, 0.5, 0.9, 0.99, 1.0],
            "ms": [0.2, 0.5, 1.0, 5.0, 20.0],
            "requests": 1000,
        },
    }
    doc.update(overrides)
    return doc


def coefficients(**overrides: Any) -> Coefficients:
    return Coefficients.model_validate(document(**overrides))


def scale_model(largest_items: int = 100_000_000) -> ScaleModel:
    """Search and build cost with round numbers, independent of size: efSearch 64 for every recall
    and shard, 200 µs per search at ef 64 growing in proportion to ef (3.125 µs per unit of ef),
    1 µs per excluded item, 10k items per core-second to build."""
    return ScaleModel(
        ef=(math.log(64), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        cpu=(math.log(200 / 64), 1.0, 0.0, 0.0),
        per_excluded=(0.0, 0.0, 0.0),
        build=(math.log(10_000), 0.0, 0.0),
        largest_items=largest_items,
        dimensions=(32, 512),
        recalls=(0.90, 0.98),
    )
