"""The pure status function: phase precedence, conditions and their transition times."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from shardrec.api.v1alpha1 import BlockedBy, Condition, LayoutStatus, RecommenderClusterStatus, ShardStatus
from shardrec.planning import format_time, parse_time
from shardrec.planning.status import Progress, StatusFacts, compute_phase, compute_status, merge_condition
from tests.planning.world import T0

STAMP = format_time(T0)


def layout(name: str, state: str, version: str = "v1") -> LayoutStatus:
    return LayoutStatus(
        name=name, version=version, shards=2, state=state, created_at=STAMP, state_since=STAMP
    )  # type: ignore[arg-type]


def facts(**changes: object) -> StatusFacts:
    base = StatusFacts(
        generation=3,
        paused=False,
        target_layout="aaaa",
        target_version="v1",
        serving_layout="aaaa",
        layouts=(layout("aaaa", "Serving"),),
        serving_shards=(
            ShardStatus(shard=0, ready_replicas=2, replicas=2),
            ShardStatus(shard=1, ready_replicas=1, replicas=2),
        ),
        router_endpoint="http://127.0.0.1:8080",
        blocked_by=(),
        progress=Progress(False, "RolloutComplete", "done"),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_settled_cluster_status() -> None:
    status = compute_status(facts(), RecommenderClusterStatus(), T0)
    assert status.phase == "Ready"
    assert status.observed_generation == 3
    assert (status.active_layout, status.active_version, status.target_version) == ("aaaa", "v1", "v1")
    assert (status.ready_replicas, status.replicas) == (3, 4)
    assert status.router_endpoint == "http://127.0.0.1:8080"
    by_type = {c.type: c for c in status.conditions}
    assert by_type["Ready"].status == "True" and by_type["Ready"].reason == "Serving"
    assert by_type["Progressing"].status == "False" and by_type["Progressing"].reason == "RolloutComplete"
    assert by_type["Degraded"].status == "False"
    assert all(c.last_transition_time == STAMP and c.observed_generation == 3 for c in status.conditions)


@pytest.mark.parametrize(
    ("changes", "phase"),
    [
        ({}, "Ready"),
        ({"serving_shards": (ShardStatus(shard=0, ready_replicas=0, replicas=2),)}, "Degraded"),
        ({"paused": True}, "Paused"),
        (
            {"paused": True, "serving_shards": (ShardStatus(shard=0, ready_replicas=0, replicas=2),)},
            "Degraded",  # an outage outranks a freeze
        ),
        (
            {"target_layout": "bbbb", "layouts": (layout("aaaa", "Serving"), layout("bbbb", "Failed"))},
            "Failed",
        ),
        (
            {"target_layout": "bbbb", "layouts": (layout("aaaa", "Serving"), layout("bbbb", "Building"))},
            "Building",
        ),
        (
            {"target_layout": "bbbb", "layouts": (layout("aaaa", "Serving"), layout("bbbb", "Starting"))},
            "Rolling",
        ),
        (
            {"target_layout": "bbbb", "layouts": (layout("aaaa", "Serving"), layout("bbbb", "Ready"))},
            "Rolling",
        ),
        (
            {"serving_layout": None, "serving_shards": (), "layouts": (layout("aaaa", "Building"),)},
            "Building",
        ),
        ({"serving_layout": None, "serving_shards": (), "layouts": ()}, "Pending"),
    ],
)
def test_phase_precedence(changes: dict[str, object], phase: str) -> None:
    assert compute_phase(facts(**changes)) == phase


def test_degraded_names_the_unavailable_shards() -> None:
    lost = (
        ShardStatus(shard=0, ready_replicas=2, replicas=2),
        ShardStatus(shard=1, ready_replicas=0, replicas=2),
    )
    status = compute_status(facts(serving_shards=lost), RecommenderClusterStatus(), T0)
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert degraded.status == "True" and "shards [1]" in degraded.message
    assert ready.status == "False" and ready.reason == "ShardsUnavailable"


def test_transition_time_is_kept_while_the_status_value_is_unchanged() -> None:
    first = compute_status(facts(), RecommenderClusterStatus(), T0)
    later = T0 + timedelta(minutes=5)
    # Same status values, different reason and message: times are kept.
    second = compute_status(facts(progress=Progress(False, "Paused", "frozen"), paused=True), first, later)
    progressing = next(c for c in second.conditions if c.type == "Progressing")
    assert progressing.reason == "Paused" and progressing.last_transition_time == STAMP
    # A value change moves the time.
    third = compute_status(facts(progress=Progress(True, "WaitingForBuild", "building")), second, later)
    progressing = next(c for c in third.conditions if c.type == "Progressing")
    assert progressing.status == "True" and parse_time(progressing.last_transition_time) == later


def test_merge_condition_starts_a_new_condition_now() -> None:
    previous = [
        Condition(
            type="Ready", status="True", reason="Serving", last_transition_time=STAMP, observed_generation=1
        )
    ]
    later = T0 + timedelta(seconds=42)
    made = merge_condition(
        previous,
        type_="Degraded",
        status="False",
        reason="AllShardsAvailable",
        message="",
        now=later,
        generation=2,
    )
    assert made.last_transition_time == format_time(later) and made.observed_generation == 2
    kept = merge_condition(
        previous, type_="Ready", status="True", reason="Other", message="m", now=later, generation=2
    )
    assert kept.last_transition_time == STAMP and kept.reason == "Other"


def test_blocked_by_and_layouts_are_reported_as_given() -> None:
    blocked = (BlockedBy(predicate="paused", reason="spec.paused is true"),)
    status = compute_status(facts(blocked_by=blocked), RecommenderClusterStatus(), T0)
    assert status.blocked_by == list(blocked)
    assert [entry.name for entry in status.layouts] == ["aaaa"]


def test_times_round_trip_and_reject_naive_values() -> None:
    assert parse_time(format_time(T0)) == T0
    assert format_time(T0) == "2026-01-01T12:00:00Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("yesterday")
    with pytest.raises(ValueError, match="without an offset"):
        parse_time("2026-01-01T12:00:00")
