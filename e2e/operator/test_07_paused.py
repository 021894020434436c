"""Scenario 7: `spec.paused` freezes topology changes; status keeps reporting; unpausing releases them."""

from __future__ import annotations

from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def test_paused_changes_wait_and_happen_after_unpause(scenario: Any, harness: Any) -> None:
    frozen: dict[str, Any] = {}

    def pause_and_change_the_version() -> None:
        frozen["layout"] = scenario.wait_ready("v1")["activeLayout"]
        frozen["jobs"] = scenario.names(kinds.JOB)
        frozen["sets"] = scenario.names(kinds.STATEFUL_SET)
        scenario.patch_spec({"paused": True, "index": {"version": "v2"}})
        status = scenario.wait_status("phase Paused", lambda s: s.get("phase") == "Paused")
        assert status["blockedBy"][0]["predicate"] == "paused"
        assert status["targetVersion"] == "v2" and status["activeVersion"] == "v1"

    def nothing_moves_while_paused() -> None:
        generation = scenario.body()["metadata"]["generation"]
        scenario.wait_status(
            "status of the paused generation", lambda s: s.get("observedGeneration") == generation
        )
        metrics = scenario.operator.metrics

        def passes() -> float:
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics().splitlines()
                if line.startswith("shardrec_operator_reconciles_total{") and 'trigger="timer"' in line
            )

        start = passes()
        harness.wait_for("three timer passes while paused", lambda: passes() >= start + 3, timeout=60)
        assert scenario.names(kinds.JOB) == frozen["jobs"], "no build while paused"
        assert scenario.names(kinds.STATEFUL_SET) == frozen["sets"]
        assert scenario.active_layout() == frozen["layout"]
        assert scenario.condition("Progressing")["reason"] == "Paused"
        assert "Paused" in [event["reason"] for event in scenario.events()]

    def unpause_and_roll() -> None:
        scenario.patch_spec({"paused": False})
        status = scenario.wait_ready("v2")
        assert status["activeLayout"] != frozen["layout"]
        assert "Resumed" in [event["reason"] for event in scenario.events()]

    scenario.create()
    scenario.run(
        [
            ("pause, then change the version", pause_and_change_the_version),
            ("no build, no switch while paused", nothing_moves_while_paused),
            ("unpause: the rollout happens", unpause_and_roll),
        ]
    )
