"""The planner's scale points (shardrec/tools/capacity/scale.py MEASURED) are the rows of the
`bench-scale-*` tables of docs/benchmarks.md, with the command that measured them: a new or re-run
table without its point (or a point without its table) fails here."""

from __future__ import annotations

import re
from pathlib import Path

from shardrec.tools.capacity.scale import MEASURED, ScalePoint

ROOT = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"<!-- (bench-scale-[a-z0-9-]+):begin.*?-->(.*?)<!-- \1:end -->", re.S)
ROW = re.compile(r"^\| (\d+)(k|M) x (\d+) \|(.*)\|$", re.M)


def _rows(doc: str) -> list[tuple[str, str, str]]:
    """(section command, merged shard count, table row) for every row of every scale section."""
    found = []
    for match in SECTION.finditer(doc):
        body = match.group(2)
        command = re.search(r"^`([^`]+)` on ", body, re.M)
        shards = re.search(r"'S merged': (\d+) shards", body)
        assert command and shards, match.group(1)
        found.extend((command.group(1), shards.group(1), row.group(0)) for row in ROW.finditer(body))
    return found


def _as_row(point: ScalePoint) -> list[str]:
    size = f"{point.items // 1_000_000}M" if point.items % 1_000_000 == 0 else f"{point.items // 1000}k"
    return [
        f"{size} x {point.dimension}",
        f"{point.build_items_per_second:.0f}",
        *(f"{ef:.0f}" for ef in point.ef_single),
        *(f"{ef:.0f}" for ef in point.ef_merged),
        f"{point.cpu_us_planner_ef:.0f}",
        f"{point.cpu_us:.0f}",
        f"{point.cpu_us_excluded:.0f}",
    ]


def _table_cells(row: str) -> list[str]:
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # items x dim | PR | build | bytes | ef x3 | merged ef x3 | recall x2 | CPU at 24 | at ef@0.95 | excluded
    # The build cell of a --resume run is "wall (CPU-based)": the planner takes the wall rate.
    return [cells[0], cells[2].split(" (")[0], *cells[4:10], *cells[12:15]]


def test_every_scale_table_row_is_a_planner_point_and_back() -> None:
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    rows = _rows(doc)
    assert rows, "docs/benchmarks.md has no bench-scale tables"
    points = {f"{p.items}x{p.dimension}": p for p in MEASURED}
    assert len(points) == len(MEASURED), "two points for one size"
    assert len(rows) == len(MEASURED), "a bench-scale row without its point in scale.MEASURED, or back"
    for command, shards, row in rows:
        cells = _table_cells(row)
        size, dimension = cells[0].split(" x ")
        items = int(size[:-1]) * (1_000_000 if size.endswith("M") else 1000)
        point = points.get(f"{items}x{dimension}")
        assert point is not None, f"no scale point for {cells[0]}: add it to scale.MEASURED"
        assert _as_row(point) == cells, f"scale.MEASURED differs from docs/benchmarks.md at {cells[0]}"
        assert point.command.startswith(command), (point.command, command)
        assert point.shards_merged == int(shards)
