"""The local runtime's garbage collection: DeleteArtifacts removes a layout folder, manifest first,
and reports it done to the planner (the same retention planner as the operator)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from shardrec.api.v1alpha1 import RecommenderClusterStatus, StoredLayoutStatus
from shardrec.planning import (
    DeleteArtifacts,
    Observed,
    ObservedBuild,
    ObservedLayout,
    ObservedRouter,
    format_time,
    layout_spec_of,
    plan,
)
from shardrec.tools.local.builds import LocalBuilds
from shardrec.tools.local.state import StateDir
from tests.planning.world import T0, make_spec


def _builds(tmp_path: Path) -> tuple[StateDir, LocalBuilds]:
    state = StateDir(tmp_path / "state")
    state.ensure()
    return state, LocalBuilds(state)


def test_delete_artifacts_removes_the_folder_and_reports_it_done(tmp_path: Path) -> None:
    state, builds = _builds(tmp_path)
    folder = state.layout_dir("0123456789")
    (folder / "shard-0000").mkdir(parents=True)
    (folder / "layout.json").write_text("{}")
    (folder / "shard-0000" / "index.bin").write_bytes(b"x" * 10)
    builds.delete_artifacts("0123456789")
    assert not folder.exists()
    assert builds.deletions() == {"0123456789": "Succeeded"}
    builds.delete_artifacts("0123456789")  # repeating it (a restarted supervisor) is harmless
    assert builds.deletions() == {"0123456789": "Succeeded"}


def test_the_planner_collects_a_local_layout_beyond_retention(tmp_path: Path) -> None:
    """Four built layouts on disk, keepLayouts 3, nothing running: the oldest one goes."""
    spec = make_spec()
    target = layout_spec_of(spec)
    stored = [
        StoredLayoutStatus(name=f"{i:010d}", version=f"v0{i}", built_at=format_time(T0 - timedelta(hours=i)))
        for i in range(1, 5)
    ]
    observed = Observed(
        generation=1,
        now=T0,
        layouts=(ObservedLayout(spec=target, build=ObservedBuild("Running")),),
        router=ObservedRouter(),
        previous_status=RecommenderClusterStatus(stored_layouts=stored),
    )
    decision = plan("recs", spec, observed)
    assert [a.layout_id for a in decision.of_type(DeleteArtifacts)] == ["0000000004"]
    _, builds = _builds(tmp_path)
    builds.delete_artifacts("0000000004")
    after = Observed(
        generation=1,
        now=T0 + timedelta(seconds=5),
        layouts=observed.layouts,
        previous_status=decision.status,
        artifact_deletions=builds.deletions(),
    )
    names = [entry.name for entry in plan("recs", spec, after).status.stored_layouts]
    assert names == ["0000000001", "0000000002", "0000000003"]
