"""Scenario 4: shards 2 -> 3 rebalances by the same blue/green motion as a version change."""

from __future__ import annotations

from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def test_shard_count_change_rebalances_into_a_new_layout(scenario: Any, harness: Any) -> None:
    layouts: dict[str, str] = {}

    def ready_with_two_shards() -> None:
        layouts["old"] = scenario.wait_ready("v1")["activeLayout"]
        assert len(scenario.names(kinds.STATEFUL_SET)) == 2

    def switch_to_three_shards() -> None:
        scenario.patch_spec({"shards": 3})
        status = scenario.wait_status(
            "the 3-shard layout to serve",
            lambda s: s.get("phase") == "Ready" and s.get("activeLayout") not in (None, "", layouts["old"]),
        )
        layouts["new"] = status["activeLayout"]
        topology = scenario.topology()
        assert topology is not None and topology["active"]["shards"] == 3
        assert [len(e["replicas"]) for e in topology["active"]["endpoints"]] == [2, 2, 2]
        assert (status["readyReplicas"], status["replicas"]) == (6, 6)
        assert [entry["shard"] for entry in status["shards"]] == [0, 1, 2]

    def old_layout_goes_after_the_window() -> None:
        harness.wait_for(
            "the 2-shard layout to be deleted", lambda: scenario.layouts_running() == {layouts["new"]}
        )
        assert scenario.names(kinds.STATEFUL_SET) == [f"recs-{layouts['new']}-{shard}" for shard in range(3)]
        assert all(
            layouts["old"] not in name for name in scenario.names(kinds.SERVICE) + scenario.names(kinds.JOB)
        )
        harness.wait_for(
            "the old layout's pods to be garbage-collected",
            lambda: not scenario.names(kinds.POD, f"shardrec.io/layout={layouts['old']}"),
        )

    scenario.create()
    scenario.run(
        [
            ("Ready with 2 shards", ready_with_two_shards),
            ("spec.shards: 3 builds, starts and switches a 3-shard layout", switch_to_three_shards),
            ("the 2-shard layout is deleted after the rollback window", old_layout_goes_after_the_window),
        ]
    )
