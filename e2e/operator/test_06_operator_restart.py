"""Scenario 6: the operator is killed (SIGKILL) at several steps of rollouts and restarted.

The rollout state lives in `.status` and in the children themselves, so a fresh process picks
up where the dead one stopped: every rollout finishes, and no object is duplicated or orphaned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def _no_duplicates_or_orphans(scenario: Any, layout: str) -> None:
    assert scenario.names(kinds.STATEFUL_SET) == [f"recs-{layout}-{shard}" for shard in (0, 1)]
    assert scenario.names(kinds.JOB, "app.kubernetes.io/component=index-build") == [f"recs-{layout}-build"]
    # Past keepLayouts (3), the oldest layouts' artifacts are garbage-collected: one Job each, only
    # for layouts that run nowhere any more.
    live = {entry["name"] for entry in scenario.status().get("layouts", [])}
    for name in scenario.names(kinds.JOB, "app.kubernetes.io/component=artifact-gc"):
        assert name.removeprefix("recs-").removesuffix("-gc") not in live, name
    assert scenario.names(kinds.DEPLOYMENT) == ["recs-router"]
    uid = scenario.body()["metadata"]["uid"]
    for resource in (
        kinds.STATEFUL_SET,
        kinds.SERVICE,
        kinds.PDB,
        kinds.JOB,
        kinds.CONFIG_MAP,
        kinds.DEPLOYMENT,
    ):
        for obj in scenario.children(resource):
            owners = [
                ref["uid"] for ref in obj["metadata"].get("ownerReferences", []) if ref.get("controller")
            ]
            assert owners == [uid], f"{resource.kind} {obj['metadata']['name']} is not owned by the cluster"


def test_operator_killed_at_each_step_resumes_and_finishes(scenario: Any, harness: Any) -> None:
    def target(status: dict[str, Any]) -> str:
        return str(status.get("targetLayout", ""))

    stages: list[tuple[str, str, Callable[[dict[str, Any]], bool]]] = [
        ("right after the spec change", "v2", lambda s: True),
        (
            "while the new layout builds",
            "v3",
            lambda s: bool(scenario.names(kinds.JOB, f"shardrec.io/layout={target(s)}")),
        ),
        (
            "once the new shards exist",
            "v4",
            lambda s: len(scenario.names(kinds.STATEFUL_SET, f"shardrec.io/layout={target(s)}")) == 2,
        ),
        ("right after the router switch", "v5", lambda s: scenario.active_layout() == target(s)),
    ]

    def kill_and_restart(version: str, reached: Callable[[dict[str, Any]], bool]) -> Callable[[], None]:
        def step() -> None:
            scenario.patch_spec({"index": {"version": version}})
            status = scenario.wait_status(f"target {version}", lambda s: s.get("targetVersion") == version)
            harness.wait_for("the stage to kill at", lambda: reached(scenario.status()))
            scenario.operator.kill()
            scenario.operator.start()
            final = scenario.wait_ready(version)
            assert final["activeLayout"] == status["targetLayout"]
            harness.wait_for(
                "the previous layout to be deleted",
                lambda: scenario.layouts_running() == {final["activeLayout"]},
                timeout=90,
            )
            _no_duplicates_or_orphans(scenario, final["activeLayout"])

        return step

    scenario.create()
    scenario.run(
        [("Ready on v1", lambda: scenario.wait_ready("v1"))]
        + [
            (f"kill {when} (-> {version})", kill_and_restart(version, reached))
            for when, version, reached in stages
        ]
    )
    assert scenario.operator.starts == 1 + len(stages)
