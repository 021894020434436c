"""Leader election's decisions (`shardrec_operator.leader`), without an API server."""

from __future__ import annotations

from datetime import UTC, datetime

from shardrec_operator.leader import LeaseRecord, Observation, lease_body, may_take, observe

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def record(holder: str, version: str = "1", transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, 15, transitions, "2026-01-01T11:00:00.000000Z", version)


def test_a_free_or_own_lease_may_be_taken_at_once() -> None:
    assert may_take(Observation(None, 100.0), "a", 100.0)
    assert may_take(Observation(record(""), 100.0), "a", 100.0)
    assert may_take(Observation(record("a"), 100.0), "a", 100.0)


def test_another_holders_lease_expires_on_the_candidates_own_clock() -> None:
    seen = observe(None, record("b", "7"), 100.0)
    assert not may_take(seen, "a", 114.9)
    assert may_take(seen, "a", 115.0)
    # a renewal (new resourceVersion) restarts the clock; an unchanged record keeps it
    assert observe(seen, record("b", "7"), 110.0) is seen
    renewed = observe(seen, record("b", "8"), 110.0)
    assert not may_take(renewed, "a", 115.0) and may_take(renewed, "a", 125.0)


def test_taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    taken = lease_body("l", "a", 15, record("b", "7", transitions=2), NOW)
    assert taken["metadata"] == {"name": "l", "resourceVersion": "7"}
    assert taken["spec"]["leaseTransitions"] == 3
    assert taken["spec"]["acquireTime"] == taken["spec"]["renewTime"] == "2026-01-01T12:00:00.000000Z"
    renewed = lease_body("l", "a", 15, record("a", "9", transitions=3), NOW)
    assert renewed["spec"]["leaseTransitions"] == 3
    assert renewed["spec"]["acquireTime"] == "2026-01-01T11:00:00.000000Z"
    first = lease_body("l", "a", 15, None, NOW)
    assert first["metadata"] == {"name": "l"} and first["spec"]["leaseTransitions"] == 0
