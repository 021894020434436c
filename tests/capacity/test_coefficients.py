"""The coefficients model and the benchmarks' side of it: `benchmarks/coefficient_file.py` (write,
merge, fold a run in) and `benchmarks/coefficients.py derive`."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shardrec.tools.capacity.coefficients import (
    Coefficients,
    CoefficientsError,
    load_coefficients,
    parse_coefficients,
)
from tests.capacity.fixtures import coefficients, document

REPO = Path(__file__).resolve().parents[2]


def _bench_modules() -> tuple[ModuleType, ModuleType]:
    """The `coefficients.py` command line and `coefficient_file`, imported as the benchmark scripts
    import each other: as top-level modules with benchmarks/ on the path."""
    folder = str(REPO / "benchmarks")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_coefficients", REPO / "benchmarks" / "coefficients.py"
        )
        assert spec is not None and spec.loader is not None
        cli = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cli)
        return cli, importlib.import_module("coefficient_file")
    finally:
        while folder in sys.path:
            sys.path.remove(folder)


cli, coefficient_file = _bench_modules()


def _measured_without_provenance() -> dict[str, Any]:
    doc = document()
    del doc["provenance"], doc["schema_version"]
    return doc


def test_index_file_model_is_fitted_from_the_points() -> None:
    c = coefficients()
    assert c.index_file_model() == pytest.approx((8.0, 16.0))
    assert c.index_file_bytes_per_item(128, 16) == pytest.approx(4 * 128 + 8 * 16 + 16)
    # With one M measured, the slope is hnswlib's level-0 links (2*M x 4 bytes) and b is fitted.
    single = coefficients(index_file=[{"dimension": 64, "m": 16, "items": 10, "file_bytes_per_item": 420.0}])
    assert single.index_file_model() == pytest.approx((8.0, 420.0 - 256 - 128))


def test_router_cost_is_linear_in_shards_and_never_below_a_measurement() -> None:
    c = coefficients()
    assert c.router_cpu_ms_per_request(1) == pytest.approx(0.4)
    assert c.router_cpu_ms_per_request(10) == pytest.approx(2.2)
    one = coefficients(router_cpu=[{"shards": 4, "cpu_ms_per_request": 0.9}])
    assert one.router_cpu_ms_per_request(64) == pytest.approx(0.9)


def test_every_field_must_name_its_command() -> None:
    doc = document()
    doc["provenance"][0]["fields"].remove("wire")
    with pytest.raises(CoefficientsError, match=r"x\.json: .*no provenance entry .*\['wire'\]"):
        parse_coefficients(json.dumps(doc), "x.json")
    doc = document()
    doc["provenance"][0]["fields"].append("speed_of_light")
    with pytest.raises(CoefficientsError, match="unknown fields"):
        parse_coefficients(json.dumps(doc), "x.json")


def test_latency_quantiles_must_be_a_distribution() -> None:
    doc = document(shard_latency_ms={"quantiles": [0.0, 0.5, 1.0], "ms": [1.0, 0.5, 2.0], "requests": 3})
    with pytest.raises(CoefficientsError, match="non-decreasing"):
        parse_coefficients(json.dumps(doc), "x.json")


def test_write_creates_then_merges_and_supersedes_provenance(tmp_path: Path) -> None:
    path = tmp_path / "coefficients.json"
    measured = _measured_without_provenance()
    measured["provenance"] = {"command": "first"}
    first = coefficient_file.write_coefficients(path, measured)
    assert [entry.command for entry in first.provenance] == ["first"]
    # A later run measures two fields again: they move to its entry, the rest stays with "first".
    update = {"shard_overhead_cpu_ms": 0.25, "build_items_per_core_second": 12_345.0}
    second = coefficient_file.write_coefficients(path, {**update, "provenance": {"command": "make bench"}})
    assert second.shard_overhead_cpu_ms == 0.25
    assert second.source_of("shard_overhead_cpu_ms").command == "make bench"
    assert second.source_of("search").command == "first"
    assert "shard_overhead_cpu_ms" not in second.provenance[0].fields
    assert load_coefficients(path) == second
    # Measuring everything again retires the first entry.
    again = _measured_without_provenance()
    again["provenance"] = {"command": "make bench"}
    third = coefficient_file.write_coefficients(path, again)
    assert [entry.command for entry in third.provenance] == ["make bench"]


def test_write_refuses_bad_input_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "coefficients.json"
    measured = _measured_without_provenance()
    with pytest.raises(ValueError, match=r"provenance\.command"):
        coefficient_file.write_coefficients(path, measured)
    with pytest.raises(ValueError, match="unknown fields"):
        coefficient_file.write_coefficients(path, {"qps": 1, "provenance": {"command": "x"}})
    # A partial first write cannot validate: fields nobody measured.
    with pytest.raises(CoefficientsError, match=r"invalid coefficients: .*workload: Field required"):
        coefficient_file.write_coefficients(
            path, {"shard_overhead_cpu_ms": 1.0, "provenance": {"command": "x"}}
        )
    assert not path.exists()
    measured["provenance"] = {"command": "ok"}
    coefficient_file.write_coefficients(path, measured)
    before = path.read_text()
    with pytest.raises(CoefficientsError):
        coefficient_file.write_coefficients(path, {"search": [], "provenance": {"command": "bad"}})
    assert path.read_text() == before


def test_derive_reads_the_bench_results(tmp_path: Path) -> None:
    results = {"command": "make bench", "coefficients": _measured_without_provenance()}
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    out = tmp_path / "coefficients.json"
    assert cli.main(["derive", "--results", str(source), "--out", str(out)]) == 0
    written = Coefficients.model_validate_json(out.read_text())
    assert written.source_of("wire").command == "make bench"
    (tmp_path / "empty.json").write_text("{}")
    assert cli.main(["derive", "--results", str(tmp_path / "empty.json"), "--out", str(out)]) == 1


def test_the_committed_file_is_canonical_and_names_its_commands() -> None:
    path = REPO / "benchmarks" / "coefficients.json"
    text = path.read_text()
    c = load_coefficients(path)
    assert all(entry.command.startswith(("python benchmarks/", "make ")) for entry in c.provenance)
    from shardrec.tools.capacity.coefficients import dump_coefficients

    assert dump_coefficients(c) == text


def _run_results(router_cpu: float, shards_cpu: float, inprocess_cpu: float) -> dict[str, Any]:
    """What benchmarks/run.py writes to results.json (the fields read here)."""

    def stats(name: str, cpu: float) -> dict[str, Any]:
        return {"name": name, "cpu_ms_per_request": cpu, "cpu_utilisation": 1.0, "rss_mb": 1.0}

    return {
        "command": "python benchmarks/run.py --size 200k",
        "rows": [
            {
                "scenario": "in-process hnswlib, single query, 1 thread",
                "processes": [stats("in-process", inprocess_cpu)],
            },
            {
                "scenario": "router, single query, wrk -c16 (saturating)",
                "processes": [
                    stats("router", router_cpu),
                    stats("shards x4", shards_cpu),
                    stats("wrk", 0.02),
                ],
            },
            {"scenario": "router, single query, wrk -c2 (~half load)", "processes": [stats("router", 9.0)]},
        ],
    }


def test_a_benchmark_run_updates_router_and_shard_costs(tmp_path: Path) -> None:
    path = tmp_path / "coefficients.json"
    measured = _measured_without_provenance()
    measured["provenance"] = {"command": "python benchmarks/coefficients.py measure"}
    coefficient_file.write_coefficients(path, measured)
    results = tmp_path / "results.json"
    # Router 0.5 ms at 4 shards; shards 1.2 ms in all, in-process search 0.4 ms for 4 shards:
    # overhead (1.2 - 0.4) / 4 = 0.2 ms per shard request.
    results.write_text(json.dumps(_run_results(0.5, 1.2, 0.4)))
    updated = coefficient_file.update_from_run(results, path)
    assert updated is not None
    assert [(p.shards, p.cpu_ms_per_request) for p in updated.router_cpu] == [(1, 0.4), (4, 0.5)]
    assert updated.shard_overhead_cpu_ms == pytest.approx(0.2)
    assert updated.source_of("router_cpu").command == "python benchmarks/run.py --size 200k"
    assert updated.source_of("search").command == "python benchmarks/coefficients.py measure"
    # A run without router rows (e.g. --skip-router) leaves the file alone.
    no_router = _run_results(0.5, 1.2, 0.4)
    no_router["rows"] = no_router["rows"][:1]
    results.write_text(json.dumps(no_router))
    before = path.read_text()
    assert coefficient_file.update_from_run(results, path) is None
    assert path.read_text() == before


def test_a_benchmark_run_gives_the_costs_at_the_concurrency_coefficients_measure_uses(tmp_path: Path) -> None:
    """CPU per request falls as concurrency grows (coalescing), so a point at 64 connections next
    to points measured with 16 clients would make the plan's fit over shard count optimistic: the
    row at wrk -c16 is taken, not the saturating one (nor the half-load row, whatever its -c)."""
    path = tmp_path / "coefficients.json"
    measured = _measured_without_provenance()
    measured["provenance"] = {"command": "python benchmarks/coefficients.py measure"}
    coefficient_file.write_coefficients(path, measured)
    document = _run_results(0.5, 1.2, 0.4)
    rows = document["rows"]
    rows[1]["scenario"] = "router, single query, wrk -c16"
    saturating = json.loads(json.dumps(rows[1]))
    saturating["scenario"] = "router, single query, wrk -c64 (saturating)"
    saturating["processes"][0]["cpu_ms_per_request"] = 0.3
    rows[2]["scenario"] = "router, single query, wrk -c16 (~half load)"
    document["rows"] = [rows[0], rows[2], rows[1], saturating]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(document))
    updated = coefficient_file.update_from_run(results, path)
    assert updated is not None
    assert [(p.shards, p.cpu_ms_per_request) for p in updated.router_cpu] == [(1, 0.4), (4, 0.5)]
    assert "wrk -c16" in updated.source_of("router_cpu").note
