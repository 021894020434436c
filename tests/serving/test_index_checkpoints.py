"""Checkpointed builds: a build killed part-way continues from its shards' checkpoints and yields a
layout that verifies, holds every item once, and searches as well as an uninterrupted build."""

from __future__ import annotations

import json
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from shardrec.serving.index import build as build_module
from shardrec.serving.index.build import BuildError, Checkpoints, build_layout, read_progress
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.layout import verify_layout
from shardrec.serving.index.scoring import exact_top_k
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.synthetic import low_rank_clustered

ITEMS, DIM, CHUNK = 3000, 16, 250


class Killed(BaseException):
    """Stands for the process dying (a session's end): raised from inside the build."""


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return low_rank_clustered(ITEMS + 100, DIM, intrinsic=8, clusters=20, seed=5)


@pytest.fixture()
def embeddings(vectors: np.ndarray, tmp_path: Path) -> Path:
    return write_embeddings_dir(tmp_path / "emb", vectors[:ITEMS], [f"i{i}" for i in range(ITEMS)])


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_module, "_ADD_CHUNK", CHUNK)


def _build(embeddings: Path, out: Path, shards: int, checkpoints: Checkpoints | None) -> None:
    build_layout(embeddings, out, version="v1", shards=shards, progress=False, checkpoints=checkpoints)


def _kill_after_saves(monkeypatch: pytest.MonkeyPatch, saves: int) -> list[int]:
    """Make the build die right after its `saves`-th checkpoint save; returns the items each
    save held."""
    saved: list[int] = []
    original = build_module._ShardCheckpoint.added

    def added(self: build_module._ShardCheckpoint, index: hnswlib.Index, done: int) -> None:
        before = self.progress.added
        original(self, index, done)
        if self.progress.added != before:
            saved.append(self.progress.added)
            if len(saved) == saves:
                raise Killed

    monkeypatch.setattr(build_module._ShardCheckpoint, "added", added)
    return saved


def _recall(layout: Path, shards: int, queries: np.ndarray, items: np.ndarray) -> float:
    exact = exact_top_k("cosine", queries, items, 10)
    found: list[list[tuple[float, int]]] = [[] for _ in queries]
    for shard in range(shards):
        index = ShardIndex.load(layout, shard, ef_search=32)
        result = index.search(queries, 10)
        for row in range(len(queries)):
            found[row] += [
                (-float(score), int(index.ids[label].removeprefix("i")))
                for label, score in zip(result.labels[row], result.scores[row], strict=True)
            ]
    hits = sum(
        len({item for _, item in sorted(row)[:10]} & set(truth))
        for row, truth in zip(found, exact.tolist(), strict=True)
    )
    return hits / (10 * len(queries))


@pytest.mark.parametrize("shards", [1, 2])
def test_a_killed_build_resumes_from_its_checkpoints(
    embeddings: Path, vectors: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shards: int
) -> None:
    checkpoints = Checkpoints(tmp_path / "checkpoints", every_seconds=0.0)
    saved = _kill_after_saves(monkeypatch, 3)
    with pytest.raises(Killed):
        _build(embeddings, tmp_path / "resumed", shards, checkpoints)
    assert not (tmp_path / "resumed").exists()
    assert 0 < min(saved) < ITEMS // shards
    monkeypatch.undo()
    monkeypatch.setattr(build_module, "_ADD_CHUNK", CHUNK)
    added: list[int] = []
    add_items = hnswlib.Index.add_items

    def counting(index: hnswlib.Index, data: np.ndarray, *args: object, **kwargs: object) -> None:
        added.append(len(data))
        add_items(index, data, *args, **kwargs)

    monkeypatch.setattr(hnswlib.Index, "add_items", counting)
    _build(embeddings, tmp_path / "resumed", shards, checkpoints)
    assert sum(added) <= ITEMS - min(saved), "the second run rebuilt from nothing"

    manifest = verify_layout(tmp_path / "resumed")
    held = [
        line
        for shard in range(shards)
        for line in (tmp_path / "resumed" / f"shard-{shard:04d}" / "ids.txt").read_text().split()
    ]
    assert sorted(held) == sorted(f"i{i}" for i in range(ITEMS)) and manifest.item_count == ITEMS
    progress = [read_progress(checkpoints.folder, shard) for shard in range(shards)]
    assert all(p is not None and p.added == p.count for p in progress)
    assert max(p.runs for p in progress if p is not None) == 2
    assert all(p is not None and p.wall_seconds > 0 and p.cpu_seconds > 0 for p in progress)
    files = sorted(path.name for path in checkpoints.folder.rglob("index-*.bin"))
    assert len(files) == shards, files  # each shard keeps its newest save only

    monkeypatch.undo()
    _build(embeddings, tmp_path / "whole", shards, None)
    queries = vectors[ITEMS:]
    resumed = _recall(tmp_path / "resumed", shards, queries, vectors[:ITEMS])
    whole = _recall(tmp_path / "whole", shards, queries, vectors[:ITEMS])
    assert resumed > 0.9 and abs(resumed - whole) < 0.03, (resumed, whole)


def test_a_checkpoint_of_other_items_is_refused(
    embeddings: Path, vectors: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = Checkpoints(tmp_path / "checkpoints", every_seconds=0.0)
    _kill_after_saves(monkeypatch, 2)
    with pytest.raises(Killed):
        _build(embeddings, tmp_path / "out", 1, checkpoints)
    other = write_embeddings_dir(tmp_path / "other", vectors[:ITEMS] * 2 + 1, [f"i{i}" for i in range(ITEMS)])
    with pytest.raises(BuildError, match="checkpoint of other items or parameters"):
        _build(other, tmp_path / "out", 1, checkpoints)


def test_a_save_cut_off_before_its_progress_leaves_the_previous_checkpoint(
    embeddings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between writing a new index file and publishing progress.json: the next run loads
    the save progress.json names and drops the orphan file."""
    checkpoints = Checkpoints(tmp_path / "checkpoints", every_seconds=0.0)
    _kill_after_saves(monkeypatch, 2)
    with pytest.raises(Killed):
        _build(embeddings, tmp_path / "out", 1, checkpoints)
    progress = read_progress(checkpoints.folder, 0)
    assert progress is not None and progress.added == 2 * CHUNK and progress.runs == 1
    folder = checkpoints.folder / "shard-0000"
    orphan = folder / f"index-{3 * CHUNK:012d}.bin"
    orphan.write_bytes(b"half a save")
    monkeypatch.undo()
    monkeypatch.setattr(build_module, "_ADD_CHUNK", CHUNK)
    _build(embeddings, tmp_path / "out", 1, checkpoints)
    verify_layout(tmp_path / "out")
    assert not orphan.exists()
    final = json.loads((folder / "progress.json").read_text())
    assert final["added"] == ITEMS and final["runs"] == 2 and final["checkpoint_seconds"] > 0


def test_checkpoints_are_due_by_time_and_at_the_end(embeddings: Path, tmp_path: Path) -> None:
    """With an hour between checkpoints a short build saves once, when the shard is complete."""
    checkpoints = Checkpoints(tmp_path / "checkpoints", every_seconds=3600.0)
    _build(embeddings, tmp_path / "out", 1, checkpoints)
    progress = read_progress(checkpoints.folder, 0)
    assert progress is not None and (progress.added, progress.runs) == (ITEMS, 1)
    assert [path.name for path in (checkpoints.folder / "shard-0000").glob("index-*.bin")] == [
        f"index-{ITEMS:012d}.bin"
    ]
    # Built again into a fresh folder, the complete checkpoint is loaded and nothing is added.
    _build(embeddings, tmp_path / "again", 1, checkpoints)
    verify_layout(tmp_path / "again")
    again = read_progress(checkpoints.folder, 0)
    assert again is not None and again.runs == 1 and again.wall_seconds == progress.wall_seconds
