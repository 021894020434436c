"""The scale benchmark's data generator and its pure helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from shardrec.serving.index.synthetic import clustered, low_rank_clustered, participation_ratio

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> object:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("scale_bench", ROOT / "benchmarks" / "scale_bench.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["scale_bench"] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_low_rank_vectors_are_seeded_and_use_about_the_axes_asked_for() -> None:
    first = low_rank_clustered(4000, 64, intrinsic=8, seed=3)
    assert first.shape == (4000, 64) and first.dtype == np.float32
    assert np.array_equal(first, low_rank_clustered(4000, 64, intrinsic=8, seed=3))
    assert not np.array_equal(first, low_rank_clustered(4000, 64, intrinsic=8, seed=4))
    narrow = participation_ratio(first)
    wide = participation_ratio(low_rank_clustered(4000, 64, intrinsic=48, seed=3))
    isotropic = participation_ratio(clustered(4000, 64, seed=3))
    assert narrow < 10 < wide < isotropic, (narrow, wide, isotropic)
    with pytest.raises(ValueError, match="intrinsic"):
        low_rank_clustered(10, 8, intrinsic=9)


def test_participation_ratio_of_a_line_is_one_and_of_noise_is_the_dimension() -> None:
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=2000), rng.normal(size=16)).astype(np.float32)
    line[: len(line) // 2] *= -1  # both directions, so normalising does not collapse it to a point
    assert participation_ratio(line + rng.normal(size=(2000, 16)).astype(np.float32) * 1e-4) < 1.1
    noise = rng.normal(size=(20000, 16)).astype(np.float32)
    assert 15 < participation_ratio(noise) <= 16


def test_ef_needed_is_the_smallest_measured_ef_reaching_the_target() -> None:
    bench: object = _bench()
    recalls = {10: 0.8, 24: 0.93, 64: 0.96, 128: 0.99}
    assert bench.ef_needed(recalls, 0.90) == 24  # type: ignore[attr-defined]
    assert bench.ef_needed(recalls, 0.95) == 64  # type: ignore[attr-defined]
    assert bench.ef_needed({10: 0.5}, 0.95) is None  # type: ignore[attr-defined]
    assert [bench.parse_size(text) for text in ("100k", "1m", "10M", "2500")] == [  # type: ignore[attr-defined]
        100_000,
        1_000_000,
        10_000_000,
        2500,
    ]
