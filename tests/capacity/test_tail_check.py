"""The pure parts of `benchmarks/tail_check.py`: percentiles in ms and stall episodes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tail_check() -> ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports its sibling bench modules
    spec = importlib.util.spec_from_file_location("tail_check", REPO / "benchmarks" / "tail_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slow_requests_are_grouped_into_episodes() -> None:
    module = _tail_check()
    due = [0.0, 0.1, 0.2, 0.3, 5.0, 5.5, 9.0]
    latency = [0.2, 0.3, 0.001, 0.1, 0.4, 0.002, 0.06]
    # Slow (> 50 ms): due 0.0, 0.1, 0.3 (one episode), 5.0 (another), 9.0 (a third).
    assert module.stalls(due, latency) == {"slow_requests": 5, "slow_over_ms": 50.0, "episodes": 3}
    assert module.stalls(due, [0.001] * len(due))["episodes"] == 0


def test_percentiles_are_in_milliseconds() -> None:
    module = _tail_check()
    assert module.ms([0.001, 0.002, 0.003], 50) == pytest.approx(2.0)


def test_the_committed_measurement_has_what_the_check_needs() -> None:
    measured = json.loads((REPO / "benchmarks" / "tail_check.json").read_text())
    loops = {(r["loop"], r.get("clients"), r.get("offered_qps")) for r in measured["runs"]}
    assert ("closed", 1, None) in loops and any(loop == "open" for loop, _, _ in loops)
    for run in measured["runs"]:
        assert run["requests"] >= 1000 and run["shard_cpu_ms"] > 0 and run["router_cpu_ms"] > 0
    assert measured["unloaded_shard_ms"]["quantiles"][0] == 0.0
