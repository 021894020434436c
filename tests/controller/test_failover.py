"""Which pods the failover rule force-deletes (pure decisions)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shardrec_operator.reconcile.failover import nodes_to_check, pods_to_force_delete
from tests.controller.samples import T0


def pod(name: str, node: str, *, ready: bool) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "spec": {"nodeName": node},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def node(status: str, since_seconds_ago: int) -> dict[str, Any]:
    since = (T0 - timedelta(seconds=since_seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": since}]}}


def test_only_unready_pods_on_long_lost_nodes_are_chosen() -> None:
    pods = [pod("a-0", "lost", ready=False), pod("b-0", "fresh", ready=False), pod("c-0", "ok", ready=True)]
    nodes = {"lost": node("Unknown", 301), "fresh": node("False", 299), "ok": node("True", 10_000)}
    chosen = pods_to_force_delete(pods, nodes, T0, grace_seconds=300)
    assert [(c.pod, c.uid, c.node) for c in chosen] == [("a-0", "uid-a-0", "lost")]
    assert "forceDeleteAfterSeconds=300" in chosen[0].message


def test_a_pod_whose_node_was_deleted_is_lost_at_once() -> None:
    chosen = pods_to_force_delete([pod("a-0", "gone", ready=False)], {}, T0, grace_seconds=300)
    assert [c.pod for c in chosen] == ["a-0"] and "no longer exists" in chosen[0].message


def test_ready_pods_are_never_chosen_even_if_their_node_is_unknown() -> None:
    assert pods_to_force_delete([pod("a-0", "x", ready=True)], {}, T0, grace_seconds=30) == []


def test_only_nodes_of_unready_pods_are_looked_up() -> None:
    pods = [
        pod("a-0", "n1", ready=False),
        pod("b-0", "n2", ready=True),
        {"metadata": {"name": "p"}, "spec": {}},
    ]
    assert nodes_to_check(pods) == {"n1"}
