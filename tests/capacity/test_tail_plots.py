"""`benchmarks/tail_plots.py` end to end on small inputs, and the drift check of the tables it writes
into docs/design.md: the committed tables are what the committed tailsim.json renders, and the
simulated-vs-measured rows of tailsim.json are what the simulation gives on benchmarks/tail_check.json."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("matplotlib", reason="plots need the bench extra (pip install -e '.[bench]')")


def _tail_plots() -> ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))  # tail_plots imports its sibling `common`
    spec = importlib.util.spec_from_file_location("tail_plots", REPO / "benchmarks" / "tail_plots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed() -> dict[str, object]:
    return dict(json.loads((REPO / "docs" / "img" / "tailsim.json").read_text()))


def test_plots_summary_and_tables_are_written(tmp_path: Path) -> None:
    module = _tail_plots()
    doc = tmp_path / "design.md"
    doc.write_text("# A design\n\n<!-- tail-summary:begin -->\n<!-- tail-summary:end -->\n\nprose\n")
    argv = ["--out", str(tmp_path), "--requests", "1000", "--seeds", "2", "--write-doc", str(doc)]
    argv += ["--contention-requests", "300", "--contention-seeds", "2"]
    assert module.main(argv) == 0
    for name in (
        "tail-vs-shards",
        "tail-vs-hedging",
        "tail-vs-load",
        "tail-vs-replicas",
        "tail-slow-replica",
    ):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((tmp_path / "tailsim.json").read_text())
    p99_by_shards = [r["p99_ms"] for r in summary["shards"] if not r["hedged"]]
    assert p99_by_shards[-1] > p99_by_shards[0]
    assert summary["recommended_hedge_after_ms"] in [r["hedge_after_ms"] for r in summary["hedging"]]
    assert summary["inputs"]["shard_latency_from"].startswith("python benchmarks/coefficients.py")
    first = summary["shards"][0]
    assert first["seeds"] == 2 and first["counted_per_seed"] == 950
    assert first["p99_ci"][0] <= first["p99_ms"] <= first["p99_ci"][1]
    assert {r["factor"] for r in summary["slow_replica"]} == set(module.SLOW_FACTORS)
    text = doc.read_text()
    assert text.startswith("# A design\n") and "prose" in text
    assert module.drifted(text, summary) == []
    assert "2 seeds x 1,000 requests" in text
    contention = summary["contention"]
    assert contention["cores"] == 2 and contention["seeds"] == 2 and contention["requests"] == 300
    assert [r["loop"] for r in contention["rows"]] == [r["loop"] for r in summary["check"]["rows"]]
    assert "<!-- tail-contention:begin" in text and "2 seeds x 300 requests" in text
    # Without simulating: the tables again from the tailsim.json just written.
    again = tmp_path / "again.md"
    again.write_text("<!-- tail-summary:begin -->\n<!-- tail-summary:end -->\n")
    assert module.main(["--out", str(tmp_path), "--tables-only", "--write-doc", str(again)]) == 0
    assert module.drifted(again.read_text(), summary) == []


def test_the_committed_design_tables_match_the_committed_simulation() -> None:
    module = _tail_plots()
    doc = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    assert module.drifted(doc, _committed()) == [], "run: make plots"


def test_a_changed_number_is_reported_as_drift() -> None:
    module = _tail_plots()
    results = _committed()
    doc = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    table = module.check_table(results)
    row = next(line for line in table.splitlines() if line.startswith("| open"))
    tampered = doc.replace(row, row.replace("| open", "| opened", 1), 1)
    assert tampered != doc
    assert module.drifted(tampered, results) == ["tail-check"]
    shared = module.contention_table(results)
    row = next(line for line in shared.splitlines() if line.startswith("| closed"))
    tampered = doc.replace(row, row.replace("| closed", "| closing", 1), 1)
    assert tampered != doc
    assert module.drifted(tampered, results) == ["tail-contention"]
    assert module.drifted("no markers", results) == ["tail-summary", "tail-check", "tail-contention"]


def test_the_committed_check_is_what_the_simulation_gives_on_the_committed_measurement() -> None:
    module = _tail_plots()
    results = _committed()
    inputs = results["inputs"]
    assert isinstance(inputs, dict)
    measured = json.loads((REPO / "benchmarks" / "tail_check.json").read_text())
    again = module.check_against_measurement(
        measured, inputs["check_requests"], inputs["check_seeds"], inputs["seed"]
    )
    assert json.loads(json.dumps(again)) == results["check"], "run: make plots"


def test_the_committed_shared_core_check_is_what_the_simulation_gives() -> None:
    # One row, one variant (the event simulation takes about a second a seed): the closed loop of
    # one client with nothing else on the cores.
    module = _tail_plots()
    committed = _committed()["contention"]
    assert isinstance(committed, dict)
    measured = json.loads((REPO / "benchmarks" / "tail_check.json").read_text())
    again = module.contention_check(
        measured,
        committed["requests"],
        committed["seeds"],
        committed["seed"],
        runs=slice(0, 1),
        with_background=False,
    )
    first = committed["rows"][0]
    assert json.loads(json.dumps(again["rows"][0]["alone"])) == first["alone"], "run: make plots"
    assert again["background"] == committed["background"]


def test_one_committed_sweep_point_is_what_the_simulation_gives() -> None:
    module = _tail_plots()
    results = _committed()
    inputs = results["inputs"]
    assert isinstance(inputs, dict)
    c = module.load_coefficients(REPO / inputs["coefficients"])
    run = module.Runner(c, inputs["requests"], inputs["seeds"], inputs["seed"])
    again = module.row(run(run.base()))
    assert json.loads(json.dumps(again)) == results["no_hedging"], "run: make plots"
