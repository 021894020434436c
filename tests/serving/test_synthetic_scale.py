"""The scale benchmark's data generator and its pure helpers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardrec.serving.index import build as build_module
from shardrec.serving.index.scoring import exact_top_k
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


def test_exact_neighbours_by_blocks_are_those_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """10M items are scored a block at a time; the merged top k is the one-pass top k."""
    bench: Any = _bench()
    vectors = low_rank_clustered(5040, 16, intrinsic=8, seed=2)
    items, queries = vectors[:5000], bench._unit(vectors[5000:])
    whole = exact_top_k("cosine", queries, bench._unit(items), 110)
    monkeypatch.setattr(bench, "_EXACT_BLOCK", 700)
    assert np.array_equal(bench._exact(items, queries, 110), whole)


class Killed(BaseException):
    """Stands for the bench's process dying (a session's end)."""


def test_a_killed_resumable_run_continues_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed inside the one-shard build after two checkpoints, then run again: the data stage is
    not redone, the build continues from its checkpoint, and the table says so."""
    bench: Any = _bench()
    monkeypatch.setattr(bench, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(build_module, "_ADD_CHUNK", 250)
    argv = ["--sizes", "3000", "--dims", "16", "--shards", "2", "--queries", "40", "--work", str(tmp_path)]
    saves: list[int] = []
    original = build_module._ShardCheckpoint.added

    def dying(self: Any, index: Any, done: int) -> None:
        original(self, index, done)
        if self.progress.added == done:
            saves.append(done)
            if len(saves) == 2:
                raise Killed

    monkeypatch.setattr(build_module._ShardCheckpoint, "added", dying)
    with pytest.raises(Killed):
        bench.main([*argv, "--resume"])
    point = tmp_path / "scale-3000x16-s7"
    assert (point / "data.json").exists() and not (point / "build-S1.json").exists()
    monkeypatch.setattr(build_module._ShardCheckpoint, "added", original)

    def no_second_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data stage ran again")

    monkeypatch.setattr(bench, "low_rank_clustered", no_second_data)
    assert bench.main([*argv, "--resume"]) == 0
    section = capsys.readouterr().out
    assert bench.HEADER_RESUMED in section and "2 runs, 1 resumes" in section
    assert "(runs that built: 3k x 16: 2)" in section
    [result] = json.loads((tmp_path / "results.json").read_text())
    assert (result["build_runs"], result["runs"]) == (2, 2)
    assert result["build_cpu_items_per_second"] > 0 and result["recall_single"]["1024"] > 0.95
    built = json.loads((point / "build-S1.json").read_text())
    assert built["checkpoints"][0]["added"] == 3000 and built["wall_seconds"] > 0
    # Only the stage results are kept: embeddings, layouts and checkpoints are gone.
    assert sorted(path.name for path in point.iterdir() if path.is_dir()) == []
    # Run once more: every stage is read back, nothing is measured again, nor counted as a run.
    monkeypatch.setattr(bench, "build_layout", no_second_data)
    assert bench.main([*argv, "--resume"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())[0]
    assert again["recall_merged"] == result["recall_merged"] and again["runs"] == 2
