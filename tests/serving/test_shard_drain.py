"""The shard's pre-stop drain state (pure: time is passed in). The endpoint is tested on a real
process in test_shard_server.py."""

from __future__ import annotations

from shardrec.serving.shard.app import Drain


def test_drain_waits_its_seconds_joins_a_running_drain_and_expires() -> None:
    drain = Drain(seconds=5.0, expires_after_s=60.0)
    assert not drain.active(0.0)
    assert drain.start(10.0) == 5.0 and drain.active(10.0)
    assert drain.start(12.0) == 3.0, "a second call waits for the same drain"
    assert drain.active(74.9) and not drain.active(75.0), "no SIGTERM came: ready again"
    assert drain.start(80.0) == 5.0, "a new drain after one expired waits in full"


def test_a_zero_second_drain_returns_at_once_but_still_fails_readiness() -> None:
    drain = Drain(seconds=0.0)
    assert drain.start(1.0) == 0.0 and drain.active(1.0)
