"""The measured coefficients the capacity planner and the tail simulation run on.

They live in `benchmarks/coefficients.json`, written by the benchmark (`make bench` through
`benchmarks/coefficients.py`), so a plan follows the code when it gets faster or leaner. Every
measured field must be claimed by a `provenance` entry naming the command that produced it: a
number without a command is refused when the file is read.

The cost functions below extrapolate these measurements to other sizes, each saying which model it
assumes. Search cost (efSearch for a recall, CPU per search, exclusions) and the build rate by size
are not taken from here but from the scale points of `scale.py` (`make bench-scale`); the `search`
and `build_items_per_core_second` fields stay in the file as measured at its workload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shardrec.api.errors import describe_errors

SCHEMA_VERSION = 1
COEFFICIENTS_RELATIVE = Path("benchmarks") / "coefficients.json"
_REPO_ROOT = Path(__file__).resolve().parents[5]
FLOAT32_BYTES = 4
HNSW_LEVEL0_BYTES_PER_M = 8.0
"""hnswlib keeps 2*M neighbour links of 4 bytes per item on level 0 (maxM0_ = 2*M); used for the
per-M slope only when the coefficients hold a single M and the slope cannot be fitted."""


class CoefficientsError(ValueError):
    """The coefficients file is unreadable, invalid, or cannot answer a question; names the file."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provenance(_Model):
    """One measuring command and the fields it produced."""

    command: str = Field(min_length=1, description="The command line that measured these fields.")
    date: str = Field(min_length=10, description="When (ISO 8601 date or time, UTC).")
    host: str = Field(min_length=1, description="Where: CPU count and model, memory.")
    fields: list[str] = Field(min_length=1, description="Top-level fields this command measured.")
    note: str = ""


class Workload(_Model):
    """The configuration the per-query figures were measured at."""

    items_per_shard: int = Field(ge=2)
    shards: int = Field(ge=1)
    dimension: int = Field(ge=1)
    m: int = Field(ge=2)
    ef_construction: int = Field(ge=1)
    k: int = Field(ge=1)
    metric: Literal["ip", "cosine", "l2"]
    item_id_bytes: float = Field(gt=0, description="Mean UTF-8 bytes of an item id.")
    user_id_bytes: float = Field(gt=0, description="Mean UTF-8 bytes of a user id.")


class SearchPoint(_Model):
    """In-process hnswlib search of one query on one shard (1 thread) at one efSearch."""

    ef_search: int = Field(ge=1)
    recall_at_k: float = Field(gt=0, le=1, description="Against exact brute force, all shards merged.")
    search_ms: float = Field(gt=0, description="CPU ms per query per shard.")


class IndexFilePoint(_Model):
    """Bytes per item of a saved hnswlib index (file size / items) at one dimension and M."""

    dimension: int = Field(ge=1)
    m: int = Field(ge=2)
    items: int = Field(ge=1)
    file_bytes_per_item: float = Field(gt=0)


class RouterCpuPoint(_Model):
    """Router process CPU per client request at one shard count."""

    shards: int = Field(ge=1)
    cpu_ms_per_request: float = Field(gt=0)


class WireBytes(_Model):
    """Bytes per request on each hop (bodies plus HTTP headers), measured at `workload`."""

    client_request: float = Field(gt=0, description="POST /v1/recommend {user_id, k}.")
    client_response_fixed: float = Field(gt=0, description="An answer without items.")
    client_response_per_item: float = Field(gt=0, description="Each recommended item.")
    shard_request_fixed: float = Field(gt=0, description="A one-query shard request without its vector.")
    shard_response_fixed: float = Field(gt=0, description="A shard answer without results.")
    shard_response_per_result: float = Field(gt=0, description="Each result (score and id).")


class LatencyDistribution(_Model):
    """Quantiles of one shard request's latency as the router's client sees it."""

    quantiles: list[float] = Field(min_length=3)
    ms: list[float] = Field(min_length=3)
    requests: int = Field(ge=1, description="How many requests the quantiles come from.")

    @model_validator(mode="after")
    def _monotone(self) -> LatencyDistribution:
        if len(self.quantiles) != len(self.ms):
            raise ValueError("shard_latency_ms: quantiles and ms must have the same length")
        if self.quantiles[0] != 0.0 or self.quantiles[-1] != 1.0:
            raise ValueError("shard_latency_ms: quantiles must run from 0.0 to 1.0")
        if any(b <= a for a, b in zip(self.quantiles, self.quantiles[1:], strict=False)):
            raise ValueError("shard_latency_ms: quantiles must increase")
        if any(b < a for a, b in zip(self.ms, self.ms[1:], strict=False)) or self.ms[0] < 0:
            raise ValueError("shard_latency_ms: ms must be non-negative and non-decreasing")
        return self


MEASURED_FIELDS: tuple[str, ...] = (
    "workload",
    "search",
    "shard_overhead_cpu_ms",
    "router_cpu",
    "index_file",
    "index_resident_extra_bytes_per_item",
    "shard_process_baseline_bytes",
    "router_process_baseline_bytes",
    "user_resident_bytes_per_user",
    "build_items_per_core_second",
    "load_bytes_per_second",
    "wire",
    "shard_latency_ms",
)


class Coefficients(_Model):
    """Everything the planner and the simulation need, all measured."""

    schema_version: Literal[1] = 1
    provenance: list[Provenance] = Field(min_length=1)
    workload: Workload
    search: list[SearchPoint] = Field(min_length=1)
    shard_overhead_cpu_ms: float = Field(
        ge=0, description="Shard process CPU per query beyond the search (HTTP, wire, scheduling)."
    )
    router_cpu: list[RouterCpuPoint] = Field(min_length=1)
    index_file: list[IndexFilePoint] = Field(min_length=1)
    index_resident_extra_bytes_per_item: float = Field(
        ge=0, description="A loaded shard's resident memory beyond its index file, per item (ids, maps)."
    )
    shard_process_baseline_bytes: int = Field(ge=0, description="RSS of a shard process before loading.")
    router_process_baseline_bytes: int = Field(
        ge=0,
        description="RSS of a router before its user table, per worker process (a router of several "
        "workers: all its processes together, the supervisor included, over the workers).",
    )
    user_resident_bytes_per_user: float = Field(
        gt=0, description="Router RSS per user of a loaded user table at workload.dimension."
    )
    build_items_per_core_second: float = Field(gt=0)
    load_bytes_per_second: float = Field(gt=0, description="Verify (sha256) and load an index file.")
    wire: WireBytes
    shard_latency_ms: LatencyDistribution

    @model_validator(mode="after")
    def _every_field_has_a_command(self) -> Coefficients:
        claimed = {name for entry in self.provenance for name in entry.fields}
        unknown = sorted(claimed - set(MEASURED_FIELDS))
        if unknown:
            raise ValueError(f"provenance names unknown fields {unknown}")
        missing = [name for name in MEASURED_FIELDS if name not in claimed]
        if missing:
            raise ValueError(f"no provenance entry names the command that measured {missing}")
        efs = [point.ef_search for point in self.search]
        if efs != sorted(set(efs)):
            raise ValueError("search: points must have distinct ef_search in increasing order")
        return self

    def source_of(self, field: str) -> Provenance:
        """The provenance entry that measured `field` (the last one naming it)."""
        for entry in reversed(self.provenance):
            if field in entry.fields:
                return entry
        raise KeyError(field)

    # --- cost functions ----------------------------------------------------------------------

    def index_file_model(self) -> tuple[float, float]:
        """(bytes per unit of M, fixed bytes) of `file_bytes_per_item = 4*D + a*M + b`, fitted by
        least squares over the measured points (the vector is 4*D bytes exactly)."""
        ms = [float(p.m) for p in self.index_file]
        rest = [p.file_bytes_per_item - FLOAT32_BYTES * p.dimension for p in self.index_file]
        if len(set(ms)) < 2:
            slope = HNSW_LEVEL0_BYTES_PER_M
        else:
            mean_m, mean_r = sum(ms) / len(ms), sum(rest) / len(rest)
            slope = sum((m - mean_m) * (r - mean_r) for m, r in zip(ms, rest, strict=True)) / sum(
                (m - mean_m) ** 2 for m in ms
            )
        fixed = sum(r - slope * m for m, r in zip(ms, rest, strict=True)) / len(ms)
        return slope, fixed

    def index_file_bytes_per_item(self, dimension: int, m: int) -> float:
        slope, fixed = self.index_file_model()
        return FLOAT32_BYTES * dimension + slope * m + fixed

    def shard_resident_bytes_per_item(self, dimension: int, m: int) -> float:
        """Memory of one item in a loaded shard: the index as on disk plus the measured extras."""
        return self.index_file_bytes_per_item(dimension, m) + self.index_resident_extra_bytes_per_item

    def user_bytes_per_user(self, dimension: int) -> float:
        """Router memory per user: the vector (4*D) plus the measured per-user extras (id, maps)."""
        extra = self.user_resident_bytes_per_user - FLOAT32_BYTES * self.workload.dimension
        return FLOAT32_BYTES * dimension + max(extra, 0.0)

    def router_cpu_ms_per_request(self, shards: int) -> float:
        """Router CPU per request: `base + per_shard * shards` fitted over the measured shard
        counts; with a single shard count measured, that figure is used as it is."""
        xs = [float(p.shards) for p in self.router_cpu]
        ys = [p.cpu_ms_per_request for p in self.router_cpu]
        if len(set(xs)) < 2:
            return ys[0]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mean_x) ** 2 for x in xs
        )
        slope = max(slope, 0.0)
        return max(mean_y + slope * (shards - mean_x), min(ys))

    def shard_request_bytes(self, dimension: int) -> float:
        return self.wire.shard_request_fixed + FLOAT32_BYTES * dimension

    def shard_response_bytes(self, k: int) -> float:
        return self.wire.shard_response_fixed + self.wire.shard_response_per_result * k

    def client_response_bytes(self, k: int) -> float:
        return self.wire.client_response_fixed + self.wire.client_response_per_item * k


def parse_coefficients(text: str, source: str) -> Coefficients:
    """Validate a coefficients document; errors name `source` and the field."""
    try:
        return Coefficients.model_validate_json(text)
    except ValidationError as exc:
        problems = describe_errors(exc.errors())
        raise CoefficientsError(f"{source}: invalid coefficients: {problems}") from None


def default_coefficients_path() -> Path:
    """./benchmarks/coefficients.json when it exists, else the repository's copy."""
    local = Path.cwd() / COEFFICIENTS_RELATIVE
    return local if local.exists() else _REPO_ROOT / COEFFICIENTS_RELATIVE


def load_coefficients(path: Path) -> Coefficients:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CoefficientsError(f"{path}: cannot read coefficients: {exc}") from exc
    return parse_coefficients(text, str(path))


def dump_coefficients(coefficients: Coefficients) -> str:
    """The canonical text of a coefficients file (stable key order, one trailing newline)."""
    document = coefficients.model_dump(mode="json")
    return json.dumps(document, indent=2) + "\n"
