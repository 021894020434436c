"""Scenario 5: a deleted shard pod is recreated (Degraded while missing); a lost node's pods move.

Deleted pod: with every node cordoned the replacement cannot schedule, so the shard has no
ready replica and the cluster reports Degraded (naming the shard); uncordoned, it recovers.

Lost node: the node is taken away from kwok, so its heartbeats stop and the node lifecycle
controller marks it NotReady (Unknown) after its grace period, as for a real lost node. The
StatefulSet cannot replace a pod it cannot confirm dead; after
`failover.forceDeleteAfterSeconds` the operator force-deletes it (with an Event) and the
replacement starts on a healthy node.
"""

from __future__ import annotations

from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def _nodes(scenario: Any) -> list[str]:
    return sorted(n["metadata"]["name"] for n in scenario.kube.list(kinds.NODE, None, "type=kwok"))


def test_deleted_pod_makes_the_cluster_degraded_until_it_is_back(scenario: Any, harness: Any) -> None:
    nodes: list[str] = []

    def cordon_and_delete_a_shard_pod() -> None:
        layout = scenario.wait_ready("v1")["activeLayout"]
        nodes.extend(_nodes(scenario))
        for node in nodes:
            scenario.kube.kubectl("cordon", node)
        scenario.kube.kubectl("-n", scenario.namespace, "delete", "pod", f"recs-{layout}-0-0", "--wait=false")

    def degraded_naming_the_shard() -> None:
        scenario.wait_status("Degraded", lambda s: s.get("phase") == "Degraded")
        degraded = scenario.condition("Degraded")
        assert degraded["status"] == "True" and "[0]" in degraded["message"], degraded
        assert scenario.condition("Ready")["status"] == "False"

    def recovers_when_schedulable() -> None:
        for node in nodes:
            scenario.kube.kubectl("uncordon", node)
        scenario.wait_ready("v1")
        assert scenario.condition("Degraded")["status"] == "False"
        reasons = [event["reason"] for event in scenario.events()]
        assert {"ShardsUnavailable", "ShardsRecovered"} <= set(reasons), reasons

    scenario.create(replicasPerShard=1)
    try:
        scenario.run(
            [
                ("cordon every node, delete shard 0's only pod", cordon_and_delete_a_shard_pod),
                ("the cluster is Degraded, naming shard 0", degraded_naming_the_shard),
                ("uncordon: the pod is back and the cluster Ready", recovers_when_schedulable),
            ]
        )
    finally:
        for node in nodes:
            scenario.kube.kubectl("uncordon", node, check=False)


def test_pods_on_a_lost_node_are_force_deleted_and_rescheduled(scenario: Any, harness: Any) -> None:
    plane = scenario.kube.cp
    assert plane.kwok_selects_nodes, "kwok must manage annotated nodes only (see conftest.py)"
    lost: dict[str, Any] = {}

    def lose_the_node_of_a_shard_pod() -> None:
        layout = scenario.wait_ready("v1")["activeLayout"]
        pod = scenario.kube.get(kinds.POD.path(scenario.namespace, f"recs-{layout}-1-0"))
        lost.update(node=pod["spec"]["nodeName"], pod=pod["metadata"]["name"], uid=pod["metadata"]["uid"])
        scenario.kube.kubectl("annotate", "node", lost["node"], f"{KWOK_ANNOTATION}-")
        plane.restart_kwok()

    def node_goes_not_ready() -> None:
        def not_ready() -> bool:
            node = scenario.kube.get(f"/api/v1/nodes/{lost['node']}")
            return any(c["type"] == "Ready" and c["status"] != "True" for c in node["status"]["conditions"])

        harness.wait_for("the node lifecycle controller to mark the node NotReady", not_ready, timeout=120)

    def pod_is_force_deleted_with_an_event_and_comes_back_elsewhere() -> None:
        def replaced() -> dict[str, Any] | None:
            pod = scenario.kube.get(kinds.POD.path(scenario.namespace, lost["pod"]))
            return pod if pod and pod["metadata"]["uid"] != lost["uid"] and _ready(pod) else None

        pod = harness.wait_for("the pod to be replaced on a healthy node", replaced, timeout=150)
        assert pod["spec"]["nodeName"] != lost["node"]
        messages = [event["message"] for event in scenario.events("ForceDeletedPod")]
        assert any(lost["pod"] in message for message in messages), messages
        assert all(lost["node"] in message for message in messages), "only pods of the lost node"
        scenario.wait_ready("v1")

    scenario.create(replicasPerShard=2)
    try:
        scenario.run(
            [
                ("take a shard pod's node away from kwok", lose_the_node_of_a_shard_pod),
                ("the node goes NotReady", node_goes_not_ready),
                (
                    "the stuck pod is force-deleted (Event) and recreated elsewhere",
                    pod_is_force_deleted_with_an_event_and_comes_back_elsewhere,
                ),
            ]
        )
    finally:
        if lost:
            scenario.kube.kubectl(
                "annotate", "node", lost["node"], f"{KWOK_ANNOTATION}=fake", "--overwrite", check=False
            )
