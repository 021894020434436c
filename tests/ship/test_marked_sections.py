"""benchmarks/common.py's one writer of marked sections (every bench that writes docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _common() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        if "common" in sys.modules:  # another test (or a bench) loaded it already
            return sys.modules["common"]
        spec = importlib.util.spec_from_file_location("common", ROOT / "benchmarks" / "common.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        # Registered before it runs: its dataclasses look their module up in sys.modules (the
        # tests failed when this file ran alone, passed after another test had imported it).
        sys.modules["common"] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_a_section_replaces_its_namesake_and_keeps_the_rest(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Head\n\n<!-- a:begin (cmd) -->\nold a\n<!-- a:end -->\n\n<!-- b:begin -->\nb\n<!-- b:end -->\n"
    )
    _common().write_marked_section(doc, "<!-- a:begin (cmd) -->\nnew a\n<!-- a:end -->\n")
    assert doc.read_text() == (
        "# Head\n\n<!-- a:begin (cmd) -->\nnew a\n<!-- a:end -->\n\n<!-- b:begin -->\nb\n<!-- b:end -->\n"
    )


def test_a_new_section_is_appended(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Head\n\n")
    _common().write_marked_section(doc, "<!-- c:begin -->\nc\n<!-- c:end -->")
    assert doc.read_text() == "# Head\n\n<!-- c:begin -->\nc\n<!-- c:end -->\n"


def test_rewriting_every_committed_section_with_itself_changes_nothing(tmp_path: Path) -> None:
    common = _common()
    committed = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(committed, encoding="utf-8")
    for match in common.MARKED_SECTION.finditer(committed):
        common.write_marked_section(doc, match.group(0))
    assert doc.read_text(encoding="utf-8") == committed


def test_text_without_markers_is_refused(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("x\n")
    with pytest.raises(ValueError, match="NAME:begin"):
        _common().write_marked_section(doc, "no markers")
