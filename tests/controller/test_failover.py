"""Which pods failover force-deletes and which brake holds them (pure decisions, one rule per test)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shardrec.api.v1alpha1 import RecommenderClusterStatus
from shardrec_operator.reconcile.failover import (
    OUT_OF_SERVICE_TAINT,
    FailoverDecision,
    FailoverLimits,
    FailoverReport,
    decide_failover,
    needs_nodes,
    report_of,
    with_failover_condition,
)
from tests.controller.samples import T0

LIMITS = FailoverLimits(max_per_minute=6, unhealthy_node_share=0.55)


def pod(name: str, node: str, *, ready: bool) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "spec": {"nodeName": node},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def node(
    name: str,
    status: str = "True",
    since_seconds_ago: int = 10_000,
    *,
    zone: str | None = "a",
    taint: bool = False,
) -> dict[str, Any]:
    since = (T0 - timedelta(seconds=since_seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {"topology.kubernetes.io/zone": zone} if zone is not None else {}
    spec = (
        {"taints": [{"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}]}
        if taint
        else {}
    )
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": since}]},
    }


def decide(pods: list[dict[str, Any]], nodes: list[dict[str, Any]], **kwargs: Any) -> FailoverDecision:
    return decide_failover(pods, nodes, T0, grace_seconds=300, limits=kwargs.pop("limits", LIMITS), **kwargs)


def healthy(count: int, zone: str | None = "a") -> list[dict[str, Any]]:
    return [node(f"ok-{zone}-{i}", zone=zone) for i in range(count)]


def test_not_ready_past_grace_chooses_only_unready_pods_on_long_lost_nodes() -> None:
    pods = [pod("a-0", "lost", ready=False), pod("b-0", "fresh", ready=False), pod("c-0", "ok", ready=True)]
    nodes = [node("lost", "Unknown", 301), node("fresh", "False", 299), node("ok"), *healthy(3)]
    decision = decide(pods, nodes)
    assert [(c.pod, c.uid, c.node, c.rule) for c in decision.delete] == [
        ("a-0", "uid-a-0", "lost", "not_ready_past_grace")
    ]
    assert "forceDeleteAfterSeconds=300" in decision.delete[0].message
    assert "rule not_ready_past_grace" in decision.delete[0].message
    assert decision.blocked == ()


def test_node_deleted_loses_its_pods_at_once() -> None:
    decision = decide([pod("a-0", "gone", ready=False)], healthy(1))
    assert [(c.pod, c.rule) for c in decision.delete] == [("a-0", "node_deleted")]
    assert "no longer exists" in decision.delete[0].message


def test_ready_pods_are_never_chosen_even_if_their_node_is_unknown() -> None:
    assert decide([pod("a-0", "x", ready=True)], healthy(1)) == FailoverDecision()


def test_an_empty_node_list_is_no_information_not_every_node_deleted() -> None:
    assert decide([pod("a-0", "x", ready=False)], []) == FailoverDecision()


def test_out_of_service_taint_fails_over_at_once_without_grace() -> None:
    nodes = [node("down", "False", since_seconds_ago=5, taint=True), *healthy(2)]
    decision = decide([pod("a-0", "down", ready=False)], nodes)
    assert [(c.pod, c.rule) for c in decision.delete] == [("a-0", "out_of_service")]
    assert OUT_OF_SERVICE_TAINT in decision.delete[0].message


def test_out_of_service_taint_overrides_the_all_nodes_not_ready_brake() -> None:
    nodes = [node("down", "Unknown", 600, taint=True), node("other", "Unknown", 600)]
    pods = [pod("a-0", "down", ready=False), pod("b-0", "other", ready=False)]
    decision = decide(pods, nodes)
    assert [(c.pod, c.rule) for c in decision.delete] == [("a-0", "out_of_service")]
    assert [(b.pod, b.rule) for b in decision.blocked] == [("b-0", "all_nodes_not_ready")]


def test_all_nodes_not_ready_blocks_every_grace_based_force_delete() -> None:
    nodes = [node(f"n{i}", "Unknown", 600, zone=zone) for i, zone in enumerate("aabb")]
    pods = [pod(f"p{i}", f"n{i}", ready=False) for i in range(4)]
    decision = decide(pods, nodes)
    assert decision.delete == ()
    assert {b.rule for b in decision.blocked} == {"all_nodes_not_ready"} and len(decision.blocked) == 4
    assert "all 4 nodes are NotReady" in decision.blocked[0].message


def test_unhealthy_zone_blocks_a_partially_disrupted_zone_only() -> None:
    zone_a = [node(f"a{i}", "Unknown", 600, zone="a") for i in range(3)] + [node("a-ok", zone="a")]
    zone_b = [node("b-lost", "Unknown", 600, zone="b"), *healthy(2, zone="b")]
    pods = [pod("p-a", "a0", ready=False), pod("p-b", "b-lost", ready=False)]
    decision = decide(pods, zone_a + zone_b)
    assert [(c.pod, c.rule) for c in decision.delete] == [("p-b", "not_ready_past_grace")]
    assert [(b.pod, b.rule) for b in decision.blocked] == [("p-a", "unhealthy_zone")]
    assert "3 of 4 nodes in zone a are NotReady (more than 55%)" in decision.blocked[0].message


def test_unhealthy_zone_threshold_is_configurable_and_strict() -> None:
    nodes = [node(f"n{i}", "Unknown", 600, zone=None) for i in range(3)] + healthy(2, zone=None)
    pods = [pod("p", "n0", ready=False)]
    blocked = decide(pods, nodes).blocked
    assert [b.rule for b in blocked] == ["unhealthy_zone"], "3 of 5 = 60% is more than 55%"
    assert "the cluster (no zone labels)" in blocked[0].message
    looser = FailoverLimits(max_per_minute=6, unhealthy_node_share=0.6)
    assert [c.rule for c in decide(pods, nodes, limits=looser).delete] == ["not_ready_past_grace"], (
        "60% is not more"
    )


def test_a_zone_that_is_down_entirely_is_a_zone_outage_and_fails_over() -> None:
    zone_a = [node(f"a{i}", "Unknown", 600, zone="a") for i in range(3)]
    decision = decide([pod("p", "a0", ready=False)], zone_a + healthy(3, zone="b"))
    assert [c.rule for c in decision.delete] == ["not_ready_past_grace"]


def test_small_zones_never_count_as_partially_disrupted() -> None:
    nodes = [node("a0", "Unknown", 600), node("a1", "Unknown", 600), node("a2")]
    decision = decide([pod("p", "a0", ready=False)], nodes)
    assert [c.rule for c in decision.delete] == ["not_ready_past_grace"], "2 of 3 NotReady: not > 2"


def test_rate_limit_counts_the_last_minute_whatever_the_rule() -> None:
    nodes = [node(f"lost{i}", "Unknown", 600, zone=f"z{i}") for i in range(4)] + healthy(4)
    pods = [pod(f"p{i}", f"lost{i}", ready=False) for i in range(4)] + [pod("gone", "deleted", ready=False)]
    limits = FailoverLimits(max_per_minute=3, unhealthy_node_share=0.55)
    recent = [T0 - timedelta(seconds=30), T0 - timedelta(seconds=61)]  # only the first counts
    decision = decide(pods, nodes, limits=limits, recent_deletes=recent)
    assert [c.pod for c in decision.delete] == ["p0", "p1"]
    assert [(b.pod, b.rule) for b in decision.blocked] == [
        ("p2", "rate_limit"),
        ("p3", "rate_limit"),
        ("gone", "rate_limit"),
    ]
    assert "SHARDREC_OPERATOR_FORCE_DELETES_PER_MINUTE" in decision.blocked[0].message


def test_nodes_are_needed_only_for_unready_bound_pods() -> None:
    assert needs_nodes([pod("a-0", "n1", ready=False), pod("b-0", "n2", ready=True)])
    assert not needs_nodes([pod("b-0", "n2", ready=True), {"metadata": {"name": "p"}, "spec": {}}])


def test_report_names_the_first_brake_that_held() -> None:
    nodes = [node(f"n{i}", "Unknown", 600) for i in range(2)]
    assert report_of(decide([pod("p", "n0", ready=False)], nodes)).state == "AllNodesNotReady"
    assert report_of(FailoverDecision()).state == "ok"


def _condition(status: RecommenderClusterStatus) -> dict[str, Any]:
    (found,) = [c for c in status.model_dump(by_alias=True)["conditions"] if c["type"] == "FailoverDegraded"]
    return dict(found)


def test_failover_condition_is_true_while_something_holds_failover_and_keeps_its_transition_time() -> None:
    empty = RecommenderClusterStatus(observed_generation=3)
    denied = with_failover_condition(empty, FailoverReport("NodeAccessDenied", "403"), empty, T0)
    condition = _condition(denied)
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "True",
        "NodeAccessDenied",
        "403",
    )
    assert condition["observedGeneration"] == 3
    later = T0 + timedelta(minutes=5)
    again = with_failover_condition(empty, FailoverReport("NodeAccessDenied", "403"), denied, later)
    assert _condition(again)["lastTransitionTime"] == condition["lastTransitionTime"]
    cleared = with_failover_condition(empty, FailoverReport("idle"), again, later)
    assert (_condition(cleared)["status"], _condition(cleared)["reason"]) == ("False", "FailoverAvailable")
    assert _condition(cleared)["lastTransitionTime"] != condition["lastTransitionTime"]
    assert [c.type for c in cleared.conditions] == ["FailoverDegraded"], "replaced, not appended"


def test_recheck_comes_when_the_first_grace_period_ends_or_a_brake_may_lift() -> None:
    nodes = [node("fresh", "False", 200), node("fresher", "False", 290), *healthy(3)]
    pods = [pod("a", "fresh", ready=False), pod("b", "fresher", ready=False)]
    assert decide(pods, nodes).recheck_after_seconds == 10.0, "300 s grace, 290 s gone"
    everything_down = [node(f"n{i}", "Unknown", 600) for i in range(2)]
    assert decide([pod("p", "n0", ready=False)], everything_down).recheck_after_seconds == 30.0
    assert decide([pod("c", "ok-a-0", ready=False)], healthy(1)).recheck_after_seconds is None


def test_rate_limited_pods_are_rechecked_when_the_minute_frees_a_slot() -> None:
    nodes = [node("lost", "Unknown", 600, zone="z"), *healthy(3)]
    limits = FailoverLimits(max_per_minute=1, unhealthy_node_share=0.55)
    decision = decide(
        [pod("p", "lost", ready=False)], nodes, limits=limits, recent_deletes=[T0 - timedelta(seconds=45)]
    )
    assert [b.rule for b in decision.blocked] == ["rate_limit"]
    assert decision.recheck_after_seconds == 15.0
