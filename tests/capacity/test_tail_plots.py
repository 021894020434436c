"""`benchmarks/tail_plots.py` end to end on small inputs: the PNGs and the numbers behind them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("matplotlib", reason="plots need the bench extra (pip install -e '.[bench]')")


def test_plots_and_summary_are_written(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("tail_plots", REPO / "benchmarks" / "tail_plots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path), "--requests", "1000"]) == 0
    for name in ("tail-vs-shards", "tail-vs-hedging", "tail-vs-load", "tail-vs-replicas"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((tmp_path / "tailsim.json").read_text())
    p99_by_shards = [r["p99_ms"] for r in summary["shards"] if not r["hedged"]]
    assert p99_by_shards[-1] > p99_by_shards[0]
    assert summary["recommended_hedge_after_ms"] in [r["hedge_after_ms"] for r in summary["hedging"]]
    assert summary["inputs"]["shard_latency_from"].startswith("python benchmarks/coefficients.py")
