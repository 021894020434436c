"""benchmarks/coefficient_harness.py (`coefficients.py measure`): the capacity plan's router
coefficients are the router pod's, whatever number of worker processes it starts (one per usable
CPU by default: a supervisor and its workers)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from shardrec.serving.cpus import usable_cpus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _load(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.skipif(usable_cpus() < 2, reason="a router with one usable CPU runs one process")
def test_router_cpu_per_request_counts_every_worker(tmp_path: Path) -> None:
    harness, measure = _load("coefficient_harness"), _load("coefficient_measure")
    measure.make_embeddings(tmp_path / "emb", 2_000, 16, 50, 10)
    measure.build(tmp_path / "emb", tmp_path / "layout", 2, 8, 40)
    with harness.processes(tmp_path) as running:
        router, shards, _, url = harness.start_cluster(running, tmp_path, tmp_path / "layout", 16, "t")
        assert len(router) == 1 + usable_cpus(), "the supervisor and one worker per usable CPU"
        router_ms, shard_ms = harness.cpu_per_request(url, router, shards, 600, 50)
    # Every request goes through a worker: parsing, fan-out, merging and encoding cost tens of
    # microseconds at the least. The supervisor alone does no per-request work (~0.00x ms).
    assert router_ms > 0.02, router_ms
    assert shard_ms > 0.0


def test_resident_memory_counts_every_user_vector(tmp_path: Path) -> None:
    """The user table is memory-mapped (serving/index/users.py): its pages are resident once
    users are served, so the per-user memory the planner uses must include the vectors, which
    loading alone does not touch."""
    measure = _load("coefficient_measure")
    dimension, users = 64, 20_000
    measure.make_embeddings(tmp_path / "emb", 2_000, dimension, users, 10)
    measure.build(tmp_path / "emb", tmp_path / "layout", 1, 8, 40)
    memory = measure.resident_memory(tmp_path / "layout")
    assert memory["users"] == users
    assert memory["users_bytes"] / users >= 4 * dimension, memory
