"""Scenario 16: the `shardrec.io/plan-preview` annotation is a dry run. A version change under it
builds nothing and switches nothing; `status.planPreview` says what it would do (a blue/green
rebuild, the extra pods and requests); removing the annotation runs the change and the preview goes."""

from __future__ import annotations

from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def test_plan_preview_annotation_previews_then_releases_the_change(scenario: Any, harness: Any) -> None:
    frozen: dict[str, Any] = {}

    def annotate_and_change_the_version() -> None:
        frozen["layout"] = scenario.wait_ready("v1")["activeLayout"]
        frozen["jobs"] = scenario.names(kinds.JOB)
        frozen["sets"] = scenario.names(kinds.STATEFUL_SET)
        scenario.kube.kubectl(
            "-n", scenario.namespace, "annotate", "recc", scenario.name, "shardrec.io/plan-preview=true"
        )
        scenario.patch_spec({"index": {"version": "v2"}})
        generation = scenario.body()["metadata"]["generation"]
        status = scenario.wait_status(
            "a plan preview of the new generation",
            lambda s: (s.get("planPreview") or {}).get("generation") == generation,
        )
        preview = status["planPreview"]
        assert preview["kind"] == "rebuild", preview
        assert preview["disruptive"] is True
        assert f"switch from {frozen['layout']} blue/green" in preview["summary"]
        assert "Pods (+ added, - removed, ~ replaced):" in preview["text"]
        assert 'dry run (shardrec.io/plan-preview: "true")' in preview["text"]

    def nothing_moves_during_the_dry_run() -> None:
        metrics = scenario.operator.metrics

        def passes() -> float:
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics().splitlines()
                if line.startswith("shardrec_operator_reconciles_total{") and 'trigger="timer"' in line
            )

        start = passes()
        harness.wait_for("three timer passes during the dry run", lambda: passes() >= start + 3, timeout=60)
        assert scenario.names(kinds.JOB) == frozen["jobs"], "no build during the dry run"
        assert scenario.names(kinds.STATEFUL_SET) == frozen["sets"]
        assert scenario.active_layout() == frozen["layout"]

    def remove_the_annotation_and_roll() -> None:
        scenario.kube.kubectl(
            "-n", scenario.namespace, "annotate", "recc", scenario.name, "shardrec.io/plan-preview-"
        )
        status = scenario.wait_ready("v2")
        assert status["activeLayout"] != frozen["layout"]
        assert not status.get("planPreview")

    scenario.create()
    scenario.run(
        [
            ("annotate plan-preview, then change the version", annotate_and_change_the_version),
            ("no build, no switch during the dry run", nothing_moves_during_the_dry_run),
            ("remove the annotation: the rollout happens", remove_the_annotation_and_roll),
        ]
    )
