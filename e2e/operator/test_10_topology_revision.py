"""Scenario 10: the topology ConfigMap is deleted mid-life; the operator rewrites it with a revision
that continues past the one routers already hold (recorded in the status), and a new version still
rolls out. Before status.topologyRevision existed the rewrite restarted at 0 and routers, which
ignore older revisions, silently dropped every later switch.
"""

from __future__ import annotations

from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def test_a_deleted_topology_configmap_never_sends_the_revision_backwards(scenario: Any, harness: Any) -> None:
    seen: dict[str, Any] = {}

    def ready_and_recorded() -> None:
        status = scenario.wait_ready("v1")
        topology = scenario.topology()
        assert topology is not None
        seen["before"] = (topology.get("epoch", 0), topology["revision"])
        assert (status["topologyEpoch"], status["topologyRevision"]) == seen["before"]

    def delete_the_configmap() -> None:
        scenario.kube.kubectl("-n", scenario.namespace, "delete", "configmap", f"{scenario.name}-topology")

        def rewritten() -> bool:
            topology = scenario.topology()
            return topology is not None and (topology.get("epoch", 0), topology["revision"]) > seen["before"]

        harness.wait_for("the topology to be rewritten with a higher revision", rewritten, timeout=60)
        topology = scenario.topology()
        assert topology is not None and topology["active"]["layout"] == scenario.status()["activeLayout"]
        seen["rewritten"] = (topology.get("epoch", 0), topology["revision"])

    def roll_a_new_version() -> None:
        scenario.patch_spec({"index": {"version": "v2"}})
        status = scenario.wait_ready("v2")
        topology = scenario.topology()
        assert topology is not None and topology["active"]["layout"] == status["activeLayout"]
        assert (topology.get("epoch", 0), topology["revision"]) > seen["rewritten"]
        assert len([n for n in scenario.names(kinds.STATEFUL_SET) if status["activeLayout"] in n]) == 2

    scenario.create()
    scenario.run(
        [
            ("ready on v1, the revision recorded in the status", ready_and_recorded),
            ("delete the topology ConfigMap: rewritten with a higher revision", delete_the_configmap),
            ("a new version rolls out", roll_a_new_version),
        ]
    )
