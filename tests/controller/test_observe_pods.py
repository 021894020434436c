"""`observe.observed_pods`: what the planner learns about one shard's pods for template rolls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shardrec_operator.reconcile.observe import observed_pods, ready_since


def _pod(name: str, *, ready: str, since: str | None, revision: str = "r1") -> dict[str, Any]:
    condition: dict[str, Any] = {"type": "Ready", "status": ready}
    if since is not None:
        condition["lastTransitionTime"] = since
    return {
        "metadata": {"name": name, "labels": {"controller-revision-hash": revision}},
        "status": {"conditions": [condition]},
    }


def test_ready_since_is_the_ready_conditions_transition_time() -> None:
    pod = _pod("c-l-0-0", ready="True", since="2026-12-05T03:00:00Z")
    assert ready_since(pod) == datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def test_ready_since_is_unknown_for_unready_or_timeless_or_malformed_pods() -> None:
    assert ready_since(_pod("a-0", ready="False", since="2026-12-05T03:00:00Z")) is None
    assert ready_since(_pod("a-0", ready="True", since=None)) is None
    assert ready_since(_pod("a-0", ready="True", since="yesterday")) is None


def test_observed_pods_carry_ready_since_and_the_template_revision() -> None:
    statefulset = {"status": {"updateRevision": "r2"}}
    pods = [
        _pod("c-l-0-1", ready="True", since="2026-12-05T03:00:05Z", revision="r2"),
        _pod("c-l-0-0", ready="True", since="2026-12-05T02:00:00Z"),
    ]
    first, second = observed_pods(statefulset, pods)
    assert (first.ordinal, first.updated) == (0, False)
    assert (second.ordinal, second.updated) == (1, True)
    assert second.ready_since == datetime(2026, 12, 5, 3, 0, 5, tzinfo=UTC)
