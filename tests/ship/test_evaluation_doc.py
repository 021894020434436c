"""docs/evaluation.md's marked blocks keep the shape `make evaluation-doc` writes.

The numbers are not asserted (the search is bounded by seconds on a shared machine); the test fails
when a block is missing, names another command, or its table no longer has the header and rows
the current `recctl evaluate` produces, i.e. the doc drifted from the command said to make it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    path = ROOT / "benchmarks" / "evaluation_doc.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("evaluation_doc", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def test_make_target_runs_the_generator() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(
        r"^evaluation-doc: .*\n\tnice -n 10 \$\(BIN\)/python benchmarks/evaluation_doc\.py", makefile, re.M
    )


def test_evaluation_tables_match_the_command() -> None:
    gen = _load()
    doc = (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")
    for name in ("evaluation-table", "evaluation-baseline"):
        block = gen.block_of(doc, name)
        assert "`recctl evaluate --embeddings build/evaluation/" in block, f"{name}: run make evaluation-doc"
        lines = [line for line in block.splitlines() if line.startswith("|")]
        assert lines[:2] == gen.table_header(), f"{name}: the table's header changed: run make evaluation-doc"
        assert [row[0] for row in gen.table_rows(block)] == gen.row_names(), f"{name}: rows changed"
        assert "Exact model / popularity, hit-rate@10: " in block and "95% CI" in block


def test_tuning_block_matches_the_command() -> None:
    gen = _load()
    block = gen.block_of((ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8"), "evaluation-tuning")
    assert f"`recctl train --holdout 1 {gen.TUNE_FLAGS} --quiet --out build/evaluation/" in block
    assert re.search(
        r"^tuned: \d+ trials \(\d+ fits\) in [\d.]+ s \(stopped by (trials|seconds)\); best trial \d+",
        block,
        re.M,
    )
    assert re.search(r"^parameters: (als|bpr) factors=\d+", block, re.M)
    assert re.search(r"^quality \(test split\): hit-rate@10 [\d.]+, NDCG@10 [\d.]+$", block, re.M)
    assert "| trial | fit | parameters | validation NDCG@10 | validation hit-rate@10 | seconds |" in block
    assert "| trial | user vectors | validation NDCG@10 | validation hit-rate@10 |" in block


def test_fold_in_block_matches_its_command() -> None:
    """docs/evaluation.md's fold-in section is what `make evaluation-foldin` writes: its command,
    its table header and its rows in the order the evaluation makes them."""
    from shardrec.tools.pipeline.foldin_eval import _variants

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(
        r"^evaluation-foldin: .*\n\tnice -n 10 \$\(BIN\)/python benchmarks/foldin_eval\.py", makefile, re.M
    )
    doc = (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- evaluation-foldin:begin.*?-->(.*?)<!-- evaluation-foldin:end -->", doc, re.S)
    assert found, "run make evaluation-foldin"
    block = found.group(1)
    assert "`python benchmarks/foldin_eval.py --folds 5 --recent 5 10`" in block
    rows = [line.split(" | ")[0].lstrip("| ") for line in block.splitlines() if line.startswith("| ")]
    assert rows[0] == "user vector"
    names = [variant.name for variant in _variants((5, 10))]
    assert rows[1:] == [
        "the user's own vector (trained with the user: full model)",
        *names,
        "popularity baseline",
    ]
