"""The fault suite's table in docs/reliability.md has the shape its writer produces: the columns,
one row per scenario in order, and the command that generates it in its marker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chaos.table import ROOT, chaos_table

DOC = ROOT / "docs" / "reliability.md"


def _rows() -> list[dict[str, Any]]:
    return [
        {"scenario": name, "sent": 10, "failed": 0, "p99_ms": 12.5, "outcome": "ok"}
        for name in chaos_table().SCENARIOS
    ]


def test_the_committed_table_has_the_shape_of_its_command() -> None:
    module = chaos_table()
    marker, header, titles = module.table_shape(DOC.read_text(encoding="utf-8"))
    assert f"`{module.COMMAND}`" in marker
    assert header == module.COLUMNS
    assert titles == [title for title, _ in module.SCENARIOS.values()]


def test_render_round_trips_through_the_shape_reader(tmp_path: Path) -> None:
    module = chaos_table()
    section = module.render(list(reversed(_rows())), "short")
    _, header, titles = module.table_shape(section)
    assert header == module.COLUMNS
    assert titles == [title for title, _ in module.SCENARIOS.values()]
    doc = tmp_path / "doc.md"
    doc.write_text("# Reliability\n")
    module.write_marked_section(doc, section)
    module.write_marked_section(doc, section)
    assert doc.read_text().count(f"<!-- {module.SECTION}:begin") == 1


def test_a_missing_scenario_or_a_bad_row_is_refused() -> None:
    module = chaos_table()
    with pytest.raises(ValueError, match="no row for scenarios slow-bodies"):
        module.render(_rows()[1:], "short")
    with pytest.raises(ValueError, match="unknown scenario"):
        module.render(
            [*_rows(), {"scenario": "meteor", "sent": 1, "failed": 0, "p99_ms": 1.0, "outcome": ""}], "x"
        )
    with pytest.raises(ValueError, match="failed must be int"):
        module.check_row({"scenario": "slow-bodies", "sent": 1, "failed": "0", "p99_ms": 1.0, "outcome": ""})
