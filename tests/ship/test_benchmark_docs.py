"""Tables in docs/benchmarks.md that a command writes stay in the shape that command writes.

The numbers are not asserted (the machine is shared and noisy); the test fails when the committed
table no longer has the header and rows the current command produces, i.e. the doc drifted from
the command that is said to have made it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> object:
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
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
