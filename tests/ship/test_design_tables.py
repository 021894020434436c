"""docs/design.md's capacity tables are what `recctl capacity` prints on the committed coefficients.

The planner is deterministic, so this compares text: a change to the planner, its report or
benchmarks/coefficients.json without `python benchmarks/design_tables.py` fails here."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _design_tables() -> ModuleType:
    path = ROOT / "benchmarks" / "design_tables.py"
    spec = importlib.util.spec_from_file_location("design_tables", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["design_tables"] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_design_tables_match_the_tool() -> None:
    tables = _design_tables()
    doc = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert tables.drifted(doc) == [], "run: python benchmarks/design_tables.py"


def test_a_changed_number_is_reported_as_drift() -> None:
    tables = _design_tables()
    doc = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    plan = tables.plan_table()
    row = next(line for line in plan.splitlines() if "| pods |" in line)
    tampered = doc.replace(row, row.replace("| pods | ", "| pods | 1", 1), 1)
    assert tampered != doc
    assert tables.drifted(tampered) == ["capacity-plan"]


def test_every_variant_row_is_a_real_plan_and_differs_from_the_sizing() -> None:
    tables = _design_tables()
    rows = [line for line in tables.variants_table().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(tables.VARIANTS)
    shards = [int(row.split("|")[3]) for row in rows]
    assert shards[0] == 1 and shards[1] > 1  # 4 GiB pods cannot hold 10M x 64-d items


def test_missing_markers_are_an_error_not_a_silent_pass() -> None:
    tables = _design_tables()
    with pytest.raises(SystemExit, match="capacity-plan"):
        tables.rendered("no markers here")


def test_the_pipeline_table_is_the_tool_and_a_changed_number_is_drift() -> None:
    tables = _design_tables()
    doc = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    pipeline = tables.pipeline_table()
    assert "--pipeline --markdown" in pipeline
    for section in ("events", "training", "freshness", "caching", "ranking", "a/b test", "regions", "cost"):
        assert f"| {section} |" in pipeline
    row = next(line for line in pipeline.splitlines() if "| log partitions |" in line)
    tampered = doc.replace(row, row.replace("| log partitions | ", "| log partitions | 9", 1), 1)
    assert tampered != doc
    assert tables.drifted(tampered) == ["capacity-pipeline"]


def test_a_missing_pipeline_section_is_an_error() -> None:
    tables = _design_tables()
    doc = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    without = re.sub(r"<!-- capacity-pipeline:begin.*?<!-- capacity-pipeline:end -->", "", doc, flags=re.S)
    with pytest.raises(SystemExit, match="capacity-pipeline"):
        tables.rendered(without)
