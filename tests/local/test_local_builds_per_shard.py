"""The local runtime builds a layout of several shards per shard, as the operator's Indexed Job does
(docs/operator.md, "A build per shard"): one `recctl index build --only-shard N
--publish-when-complete` process per shard, one after another (each with every CPU and one copy of
the embeddings in memory, as the one-shot build had), the last one publishing layout.json. A part
that already verifies is reused, so a build interrupted by a supervisor restart resumes at the first
missing shard instead of starting over. One shard keeps one plain build."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shardrec.api.commands import IndexBuildFlags
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import ObservedBuild
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.layout import verify_layout
from shardrec.serving.index.synthetic import clustered
from shardrec.tools.cli.main import main as recctl
from shardrec.tools.local.builds import LocalBuilds, build_commands
from shardrec.tools.local.state import StateDir

DIM = 8


def _spec(source: Path | str, shards: int) -> LayoutSpec:
    return LayoutSpec(
        version="v1", source=str(source), shards=shards, partitioning="hash", dimension=DIM, metric="ip",
        hnsw_m=8, hnsw_ef_construction=40,
    )  # fmt: skip


@pytest.fixture
def embeddings(tmp_path: Path) -> Path:
    return write_embeddings_dir(
        tmp_path / "emb",
        clustered(300, DIM, clusters=4, seed=5),
        [f"item-{i}" for i in range(300)],
        users=clustered(3, DIM, clusters=1, seed=6),
        user_ids=["alice", "bob", "carol"],
    )


def _finish(state: StateDir, builds: LocalBuilds, layout_id: str, limit_s: float = 120.0) -> ObservedBuild:
    """Reap until the last process ended and its outcome is recorded on disk (bounded; nothing is
    timed). `observe` alone says Succeeded as soon as layout.json exists, while the publishing part
    may still be printing its summary."""
    deadline = time.monotonic() + limit_s
    record = state.layouts_dir / f"{layout_id}.build.json"
    while time.monotonic() < deadline:
        builds.reap()
        observed = builds.observe(layout_id)
        if observed.state != "Running" and json.loads(record.read_text())["state"] != "Running":
            return observed
        time.sleep(0.1)
    builds.stop_all()
    raise AssertionError(f"build of {layout_id} still running after {limit_s:.0f}s")


def test_a_layout_of_several_shards_is_one_part_per_shard_the_last_publishing() -> None:
    commands = build_commands(_spec("/data/emb", 3), "/state/layouts/x")
    assert len(commands) == 3
    for shard, argv in enumerate(commands):
        at = argv.index(IndexBuildFlags.ONLY_SHARD)
        assert argv[at + 1] == str(shard) and IndexBuildFlags.PUBLISH_WHEN_COMPLETE in argv
    (one,) = build_commands(_spec("/data/emb", 1), "/state/layouts/y")
    assert IndexBuildFlags.ONLY_SHARD not in one and IndexBuildFlags.PUBLISH_WHEN_COMPLETE not in one


def test_the_parts_run_in_turn_and_the_layout_is_published(embeddings: Path, tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    builds = LocalBuilds(state)
    spec = _spec(embeddings, 3)
    builds.ensure(spec, "attempt-1")
    assert builds.observe(spec.id).state == "Running"
    assert _finish(state, builds, spec.id).state == "Succeeded"
    assert verify_layout(state.layout_dir(spec.id)).shards == 3
    log = (state.logs_dir / f"build-{spec.id}.log").read_text()
    assert [f"built shard {n} of layout {spec.id}" in log for n in range(3)] == [True] * 3
    assert log.count("not built yet: the last part to finish publishes") == 2
    assert f"published layout {spec.id}" in log


def test_a_restarted_build_reuses_the_parts_already_built(embeddings: Path, tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    spec = _spec(embeddings, 2)
    # What an interrupted build left: shard 0's part, complete and verifying; no layout.json.
    assert recctl(build_commands(spec, str(state.layout_dir(spec.id)))[0][3:]) == 0
    assert not (state.layout_dir(spec.id) / "layout.json").exists()
    builds = LocalBuilds(state)
    builds.ensure(spec, "attempt-2")
    assert _finish(state, builds, spec.id).state == "Succeeded"
    log = (state.logs_dir / f"build-{spec.id}.log").read_text()
    assert f"reused existing shard 0 of layout {spec.id}" in log
    assert f"built shard 1 of layout {spec.id}" in log and f"published layout {spec.id}" in log


def test_a_failing_part_fails_the_build_naming_it_and_starts_no_later_part(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    builds = LocalBuilds(state)
    spec = _spec(tmp_path / "no-such-embeddings", 2)
    builds.ensure(spec, "attempt-3")
    observed = _finish(state, builds, spec.id)
    assert observed.state == "Failed"
    assert observed.message.startswith("index build of shard 0 (part 1 of 2) exited 1: "), observed.message
    log = (state.logs_dir / f"build-{spec.id}.log").read_text()
    assert "== index build of shard 0 (part 1 of 2)" in log
    assert "part 2 of 2" not in log, "no later part after a failed one"
