"""Scenario 3: an index version change rolls blue/green in order; a failing build changes nothing.

The order is observed through the API while it happens: the new layout's build completes, its
shard StatefulSets exist, the topology switches (old StatefulSets still there), and only then
the old layout goes. A version whose embeddings claim does not exist never builds: its Job's
pod stays Pending until the Job's deadline (the rollout timeout) fails it, and the old layout
keeps serving with a Failed condition and a Warning Event.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def _job_complete(scenario: Any, layout: str) -> bool:
    job = scenario.kube.get(kinds.JOB.path(scenario.namespace, f"recs-{layout}-build"))
    conditions = (job or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)


def test_version_change_rolls_in_order_and_a_failed_build_keeps_the_old_layout(
    scenario: Any, harness: Any
) -> None:
    layouts: dict[str, str] = {}
    first_seen: dict[str, float] = {}

    def ready_on_v1() -> None:
        layouts["v1"] = scenario.wait_ready("v1")["activeLayout"]

    def change_version() -> None:
        scenario.patch_spec({"index": {"version": "v2"}})
        status = scenario.wait_status("the v2 target layout", lambda s: s.get("targetVersion") == "v2")
        layouts["v2"] = status["targetLayout"]
        assert layouts["v2"] != layouts["v1"]

    def observe_the_rollout_in_order() -> None:
        old, new = layouts["v1"], layouts["v2"]

        def look() -> bool:
            now = time.monotonic()
            running = scenario.layouts_running()
            facts: dict[str, bool] = {
                "new build complete": _job_complete(scenario, new),
                "new shards exist": len([n for n in scenario.names(kinds.STATEFUL_SET) if new in n]) == 2,
                "router switched": scenario.active_layout() == new,
                "old layout deleted": old not in running,
            }
            if facts["router switched"] and "router switched" not in first_seen:
                assert old in running, "the old layout was deleted before (or as) the router switched"
            for fact, holds in facts.items():
                if holds:
                    first_seen.setdefault(fact, now)
            return facts["old layout deleted"]

        harness.wait_for("the old layout to be deleted", look, timeout=120)
        order = sorted(first_seen, key=first_seen.__getitem__)
        assert order == ["new build complete", "new shards exist", "router switched", "old layout deleted"], (
            order
        )
        assert first_seen["old layout deleted"] - first_seen["router switched"] >= 5, (
            "kept for the rollback window"
        )

    def ready_on_v2_with_events() -> None:
        scenario.wait_ready("v2")
        reasons = [event["reason"] for event in scenario.events()]
        assert {"BuildingLayout", "Switched", "DeletingLayout"} <= set(reasons), reasons

    def a_build_that_cannot_run_fails_and_v2_keeps_serving() -> None:
        scenario.patch_spec(
            {
                "index": {"version": "v3", "source": "pvc://no-such-claim/embeddings"},
                "rollout": {"timeoutSeconds": 15},
            }
        )
        status = scenario.wait_status(
            "the v3 rollout to fail", lambda s: s.get("phase") == "Failed", timeout=90
        )
        assert (status["activeVersion"], status["targetVersion"]) == ("v2", "v3")
        progressing = scenario.condition("Progressing")
        assert (progressing["status"], progressing["reason"]) == ("False", "RolloutFailed")
        assert progressing["message"], "the condition says why"
        assert scenario.condition("Ready")["status"] == "True", "v2 still serves"
        assert scenario.active_layout() == layouts["v2"]
        assert layouts["v2"] in scenario.layouts_running()
        warnings = [
            e
            for e in scenario.events()
            if e["type"] == "Warning" and e["reason"] in ("LayoutFailed", "RolloutTimedOut")
        ]
        assert warnings, [e["reason"] for e in scenario.events()]

    scenario.create()
    scenario.run(
        [
            ("Ready on v1", ready_on_v1),
            ("spec.index.version: v2", change_version),
            ("build -> start -> switch -> keep -> delete, in order", observe_the_rollout_in_order),
            ("Ready on v2, with Events", ready_on_v2_with_events),
            (
                "a version that cannot build fails; v2 keeps serving",
                a_build_that_cannot_run_fails_and_v2_keeps_serving,
            ),
        ]
    )
