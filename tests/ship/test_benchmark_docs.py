"""Tables in docs/benchmarks.md that a command writes stay in the shape that command writes.

The numbers are not asserted (the machine is shared and noisy); the test fails when the committed
table no longer has the header and rows the current command produces, i.e. the doc drifted from
the command that is said to have made it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> object:
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def test_cutover_window_table_matches_its_command() -> None:
    bench = _load("cutover_window", ROOT / "benchmarks" / "cutover_window.py")
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    begin, end = bench.BEGIN, bench.END  # type: ignore[attr-defined]
    assert begin in doc and end in doc, "run: python benchmarks/cutover_window.py --write-doc"
    block = doc.split(begin, 1)[1].split(end, 1)[0]
    assert "`python benchmarks/cutover_window.py" in block
    modes = {"staged preload, then switch": [1.0], "direct switch (no preload)": [1.0]}
    expected = bench.table(modes, 3, 300_000).splitlines()  # type: ignore[attr-defined]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    assert lines[:2] == expected[:2], "the table's header changed: regenerate it"
    assert [line.split("|")[1].strip() for line in lines[2:]] == list(modes)
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert int(cells[1]) >= 20 and float(cells[2]) <= float(cells[3]), line


def test_result_cache_tables_match_their_command() -> None:
    bench: Any = _load("result_cache", ROOT / "benchmarks" / "result_cache.py")
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert bench.BEGIN in doc and bench.END in doc, "run: python benchmarks/result_cache.py --write-doc"
    block = doc.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    assert "`python benchmarks/result_cache.py" in block
    lines = [line for line in block.splitlines() if line.startswith("|")]
    zipf = bench.zipf_table([], 100_000, 16).splitlines()
    spike = bench.spike_table([], 160, 16).splitlines()
    assert lines[0:2] == zipf, "the Zipf table's header changed: regenerate it"
    assert [line.split("|")[1].strip() for line in lines[2:4]] == ["cache off", "cache on"]
    assert lines[4:6] == spike, "the spike table's header changed: regenerate it"
    names = [line.split("|")[1].strip() for line in lines[6:8]]
    assert names == ["spike: cache and fallback off", "spike: cache + fallback on"]


def test_coldstart_table_matches_its_command() -> None:
    bench = _load("coldstart_bench", ROOT / "benchmarks" / "coldstart_bench.py")
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    begin, end = bench.BEGIN, bench.END  # type: ignore[attr-defined]
    assert begin in doc and end in doc, "run: make bench-coldstart"
    block = doc.split(begin, 1)[1].split(end, 1)[0]
    assert "`python benchmarks/coldstart_bench.py" in block
    lines = [line for line in block.splitlines() if line.startswith("|")]
    assert lines[:2] == [bench.HEADER, bench.ALIGN], "the table's header changed: regenerate it"  # type: ignore[attr-defined]
    labels = [bench.size_label(items) for items in bench.SIZES]  # type: ignore[attr-defined]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert rows, "the table has no rows"
    assert [cells[0] for cells in rows] == labels[: len(rows)], "sizes differ from the script's SIZES"
    # Each cell has the form the script writes ("12.3 (4.5)", "67", ...): digits aside, identical.
    step = bench.Step(1.0, 1.0)  # type: ignore[attr-defined]
    sample = bench.Result(100_000, 1 << 20, step, step, step, step, 1.0, 1.0)  # type: ignore[attr-defined]
    expected = [_form(cell) for cell in bench.row(sample).strip("|").split("|")[1:]]  # type: ignore[attr-defined]
    for cells in rows:
        assert [_form(cell) for cell in cells[1:]] == expected, cells


def _form(cell: str) -> str:
    return re.sub(r"\d+", "9", cell.strip())
