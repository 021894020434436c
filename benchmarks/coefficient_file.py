"""Writing the capacity coefficients file (`benchmarks/coefficients.json`).

The format itself (the model, its validation and the canonical text) belongs to the capacity
planner: `shardrec.tools.capacity.coefficients`. This module is the benchmarks' side of it: merge
newly measured fields into the file with their provenance, and fold a `benchmarks/run.py` results
document into it.

    write_coefficients(path, measured)         what the measurement scripts call
    update_from_run(results.json[, path])      what `benchmarks/run.py` calls after a full run
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coefficient_derivation import coefficients_from_bench
from common import cpu_model

from shardrec.tools.capacity.coefficients import (
    MEASURED_FIELDS,
    Coefficients,
    dump_coefficients,
    load_coefficients,
    parse_coefficients,
)

DEFAULT_PATH = Path(__file__).resolve().parent / "coefficients.json"


def host_description() -> str:
    model = cpu_model()
    try:
        mem_kib = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
        memory = f"{mem_kib / 1024**2:.0f} GiB"
    except (OSError, IndexError, ValueError):
        memory = "unknown memory"
    return f"{os.cpu_count()} cores ({model}), {memory}, {platform.system()} {platform.release()}"


def write_coefficients(path: Path | str, measured: dict[str, Any]) -> Coefficients:
    """Merge `measured` into the coefficients file at `path` (created if absent) and write it.

    `measured` holds any of the fields of `shardrec.tools.capacity.coefficients.Coefficients` (see
    MEASURED_FIELDS) plus `"provenance": {"command": ..., "note": ...}` naming the command that
    measured them; `date`, `host` and `fields` are filled in when absent. Fields not in
    `measured` keep their previous values and provenance. The result must validate as a whole
    (every field measured by some command), else CoefficientsError names the problem and the
    file is left as it was."""
    path = Path(path)
    measured = dict(measured)
    provenance = dict(measured.pop("provenance", {}) or {})
    unknown = sorted(set(measured) - set(MEASURED_FIELDS))
    if unknown:
        raise ValueError(f"measured: unknown fields {unknown}; known: {', '.join(MEASURED_FIELDS)}")
    if not measured:
        raise ValueError("measured: no coefficient fields given")
    if not provenance.get("command"):
        raise ValueError("measured: provenance.command must name the command that measured the fields")
    provenance.setdefault("date", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    provenance.setdefault("host", host_description())
    provenance["fields"] = sorted(measured, key=MEASURED_FIELDS.index)
    document: dict[str, Any] = {}
    if path.exists():
        document = load_coefficients(path).model_dump(mode="json")
    kept = []
    for entry in document.get("provenance", []):
        remaining = [name for name in entry["fields"] if name not in measured]
        if remaining:
            kept.append({**entry, "fields": remaining})
    document.update(measured)
    document["provenance"] = [*kept, provenance]
    document["schema_version"] = 1
    coefficients = parse_coefficients(json.dumps(document), str(path))
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(dump_coefficients(coefficients), encoding="utf-8")
    staging.replace(path)
    return coefficients


def update_from_run(results_path: Path | str, path: Path | str = DEFAULT_PATH) -> Coefficients | None:
    """What `benchmarks/run.py` calls after a full (not --quick) run: fold its results into the
    coefficients file. Returns None (and says why on stderr) when the run holds nothing to fold."""
    path = Path(path)
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    existing = load_coefficients(path) if path.exists() else None
    try:
        measured = coefficients_from_bench(results, existing)
    except ValueError as exc:
        print(f"coefficients: {path} not updated: {exc}", file=sys.stderr)
        return None
    return write_coefficients(path, measured)
