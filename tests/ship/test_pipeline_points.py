"""The measured figures the pipeline plan uses (shardrec/tools/capacity/pipeline.py) are the ones the
documents hold, next to the command that measured them: the train-rate table of docs/benchmarks.md
row by row, the item write rate of docs/design.md, the fold-in CPU of docs/evaluation.md and the
result cache's hit ratio of docs/benchmarks.md. A re-run that rewrites a table without the
constants (or the other way round) fails here."""

from __future__ import annotations

import re
from pathlib import Path

from shardrec.tools.capacity.pipeline import (
    MEASURED_ALS,
    MEASURED_CACHE_HIT,
    MEASURED_FOLDIN_MS,
    MEASURED_WRITES,
)

ROOT = Path(__file__).resolve().parents[2]


def _section(doc: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:begin.*?-->(.*?)<!-- {name}:end -->", doc, re.S)
    assert match, f"no {name} section"
    return match.group(1)


def test_the_training_points_are_the_train_rate_table() -> None:
    body = _section((ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"), "train-rate")
    command = re.search(r"^`([^`]+)` on (\d{4}-\d{2}-\d{2})", body, re.M)
    assert command and command.group(1) == MEASURED_ALS.command
    assert command.group(2) == MEASURED_ALS.date
    shape = f"{MEASURED_ALS.users:,} users x {MEASURED_ALS.items:,} items, nnz {MEASURED_ALS.nnz:,}"
    assert shape in body
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", body, re.M)
    expected = [
        (str(p.factors), f"{p.cpu_s_median:.4f}", f"{p.cpu_s_min:.4f}", f"{p.cpu_s_max:.4f}")
        for p in MEASURED_ALS.points
    ]
    assert rows == expected
    checks = re.findall(r"^\| ([\d,]+) x ([\d,]+) \| ([\d,]+) \| \d+x \| (\d+) \| ([\d.]+) \|", body, re.M)
    assert checks == [
        (f"{c.users:,}", f"{c.items:,}", f"{c.nnz:,}", str(c.factors), f"{c.cpu_s:.3f}")
        for c in MEASURED_ALS.checks
    ]


def test_the_write_foldin_and_cache_figures_are_the_documents() -> None:
    low, high, shards = MEASURED_WRITES
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert f"{low:.0f}-{high:.0f} acknowledged writes/s" in design
    assert f"{shards} shards x 2 replicas and one router" in design
    ms, factors = MEASURED_FOLDIN_MS
    foldin = _section((ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8"), "evaluation-foldin")
    assert f"als factors={factors} " in foldin
    assert f"took {ms:.2f} ms on average" in foldin
    cache = _section((ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"), "result-cache")
    assert re.search(rf"^\| cache on \|.*\| {MEASURED_CACHE_HIT:.3f} \|", cache, re.M)
    assert "Zipf s=1.1 over 100,000 users" in cache
