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
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


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


def _every_node_not_ready(scenario: Any, nodes: list[str]) -> bool:
    for node in nodes:
        found = scenario.kube.get(f"/api/v1/nodes/{node}") or {}
        ready = [c for c in found.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
        if not ready or ready[0]["status"] == "True":
            return False
    return True


def _shard_pod_uids(scenario: Any) -> dict[str, str]:
    pods = scenario.children(kinds.POD, "app.kubernetes.io/component=shard")
    return {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in pods}


def _failover_condition(reason: str) -> Any:
    return lambda s: any(
        c["type"] == "FailoverDegraded" and c["reason"] == reason for c in s.get("conditions", [])
    )


def _give_nodes_back(scenario: Any, nodes: list[str], tainted: dict[str, str], *, check: bool) -> None:
    if tainted.pop("node", None) is not None:
        scenario.kube.kubectl("taint", "node", tainted["was"], f"{OUT_OF_SERVICE}-", check=check)
    for node in nodes:
        scenario.kube.kubectl("annotate", "node", node, f"{KWOK_ANNOTATION}=fake", "--overwrite", check=check)
    nodes.clear()
    scenario.kube.cp.restart_kwok()


def test_with_every_node_not_ready_nothing_is_force_deleted_but_an_out_of_service_node_is(
    scenario: Any, harness: Any
) -> None:
    """The brake: when every node stops heartbeating at once (what a control-plane-side outage
    looks like), nothing is force-deleted past the grace period; FailoverBlocked names the rule and
    the FailoverDegraded condition says why. A node an administrator taints out-of-service is
    failed over at once all the same (rule out_of_service)."""
    plane = scenario.kube.cp
    assert plane.kwok_selects_nodes, "kwok must manage annotated nodes only (see conftest.py)"
    taken: list[str] = []
    pods: dict[str, str] = {}
    tainted: dict[str, str] = {}

    def take_every_node_away_from_kwok() -> None:
        scenario.wait_ready("v1")
        pods.update(_shard_pod_uids(scenario))
        taken.extend(_nodes(scenario))
        for node in taken:
            scenario.kube.kubectl("annotate", "node", node, f"{KWOK_ANNOTATION}-")
        plane.restart_kwok()

    def blocked_past_the_grace_period() -> None:
        harness.wait_for(
            "every node to go NotReady", lambda: _every_node_not_ready(scenario, taken), timeout=120
        )
        status = scenario.wait_status(
            "FailoverDegraded=True, reason AllNodesNotReady",
            _failover_condition("AllNodesNotReady"),
            timeout=120,
        )
        assert status["phase"] == "Degraded", status["phase"]
        messages = [event["message"] for event in scenario.events("FailoverBlocked")]
        assert messages and all("all_nodes_not_ready" in m for m in messages), messages
        assert scenario.events("ForceDeletedPod") == []
        assert _shard_pod_uids(scenario) == pods, "no shard pod was force-deleted"

    def an_out_of_service_node_is_failed_over_at_once() -> None:
        victim = sorted(pods)[0]
        pod = scenario.kube.get(kinds.POD.path(scenario.namespace, victim))
        assert pod is not None
        tainted["node"] = tainted["was"] = pod["spec"]["nodeName"]
        scenario.kube.kubectl("taint", "node", tainted["node"], f"{OUT_OF_SERVICE}=nodeshutdown:NoExecute")

        def force_deleted() -> list[str]:
            return [e["message"] for e in scenario.events("ForceDeletedPod") if victim in e["message"]]

        messages = harness.wait_for("the tainted node's pod to be force-deleted", force_deleted, timeout=60)
        assert all("rule out_of_service" in m for m in messages), messages
        deleted = [e["message"] for e in scenario.events("ForceDeletedPod")]
        assert all(tainted["was"] in m for m in deleted), "only pods of the tainted node"

    def nodes_back_the_replacement_runs_and_failover_is_available() -> None:
        # kwok does not turn the pods that stayed back to Ready (a kubelet would), so the cluster
        # stays Degraded here; the replacement of the force-deleted pod starts on a returned node.
        _give_nodes_back(scenario, taken, tainted, check=True)
        victim = sorted(pods)[0]

        def replaced() -> bool:
            pod = scenario.kube.get(kinds.POD.path(scenario.namespace, victim))
            return bool(pod and pod["metadata"]["uid"] != pods[victim] and _ready(pod))

        harness.wait_for("the force-deleted pod's replacement to be Ready", replaced, timeout=150)
        scenario.wait_status("FailoverDegraded=False", _failover_condition("FailoverAvailable"))

    scenario.create(replicasPerShard=2)
    try:
        scenario.run(
            [
                ("take every node away from kwok", take_every_node_away_from_kwok),
                (
                    "all NotReady past the grace period: blocked, nothing deleted",
                    blocked_past_the_grace_period,
                ),
                (
                    "an out-of-service node's pods are force-deleted at once",
                    an_out_of_service_node_is_failed_over_at_once,
                ),
                (
                    "nodes back: the replacement runs, failover is available",
                    nodes_back_the_replacement_runs_and_failover_is_available,
                ),
            ]
        )
    finally:
        if taken:
            _give_nodes_back(scenario, taken, tainted, check=False)
