"""Operator settings from the environment, and the schedule that uses them."""

from __future__ import annotations

import pytest

from shardrec_operator.config import ConfigError, OperatorConfig
from shardrec_operator.reconcile.failover import FailoverLimits
from shardrec_operator.runtime import Runtime, Schedule


def test_defaults_and_overrides() -> None:
    assert OperatorConfig.from_env({}) == OperatorConfig()
    config = OperatorConfig.from_env({"SHARDREC_RESYNC_SECONDS": "3", "SHARDREC_TIMER_SECONDS": "0.5"})
    assert (config.resync_seconds, config.timer_seconds) == (3.0, 0.5)


@pytest.mark.parametrize("value", ["soon", "0", "-1"])
def test_bad_values_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="SHARDREC_RESYNC_SECONDS"):
        OperatorConfig.from_env({"SHARDREC_RESYNC_SECONDS": value})


def test_the_operator_prefix_names_each_setting_and_wins_over_the_older_name() -> None:
    config = OperatorConfig.from_env(
        {"SHARDREC_OPERATOR_RESYNC_SECONDS": "4", "SHARDREC_RESYNC_SECONDS": "3",
         "SHARDREC_OPERATOR_CONFLICT_RETRY_SECONDS": "1", "SHARDREC_OPERATOR_ERROR_BACKOFF_SECONDS": "7"}
    )  # fmt: skip
    assert (config.resync_seconds, config.conflict_retry_seconds, config.error_backoff_seconds) == (4, 1, 7)
    with pytest.raises(ConfigError, match="SHARDREC_OPERATOR_TIMER_SECONDS='soon'"):
        OperatorConfig.from_env({"SHARDREC_OPERATOR_TIMER_SECONDS": "soon"})


def test_failover_brakes_come_from_the_environment_with_defaults() -> None:
    assert OperatorConfig.from_env({}).failover == FailoverLimits(max_per_minute=6, unhealthy_node_share=0.55)
    config = OperatorConfig.from_env(
        {"SHARDREC_OPERATOR_FORCE_DELETES_PER_MINUTE": "2", "SHARDREC_OPERATOR_UNHEALTHY_NODE_SHARE": "0.3"}
    )
    assert config.failover == FailoverLimits(max_per_minute=2, unhealthy_node_share=0.3)
    with pytest.raises(ConfigError, match="FORCE_DELETES_PER_MINUTE='0'"):
        OperatorConfig.from_env({"SHARDREC_OPERATOR_FORCE_DELETES_PER_MINUTE": "0"})
    with pytest.raises(ConfigError, match="whole number"):
        OperatorConfig.from_env({"SHARDREC_OPERATOR_FORCE_DELETES_PER_MINUTE": "1.5"})
    with pytest.raises(ConfigError, match=r"UNHEALTHY_NODE_SHARE='1\.2'"):
        OperatorConfig.from_env({"SHARDREC_OPERATOR_UNHEALTHY_NODE_SHARE": "1.2"})


def test_schedule_honours_the_planner_requeue_capped_by_the_resync() -> None:
    clock = [100.0]
    schedule = Schedule(resync_seconds=15, clock=lambda: clock[0])
    assert schedule.is_due("c")
    schedule.passed("c", 1.0)
    assert not schedule.is_due("c")
    clock[0] += 1.0
    assert schedule.is_due("c")
    schedule.passed("c", None)
    clock[0] += 14.9
    assert not schedule.is_due("c")
    clock[0] += 0.1
    assert schedule.is_due("c")
    schedule.passed("c", 3600)
    clock[0] += 15
    assert schedule.is_due("c"), "never longer than the resync period"


def test_a_child_event_makes_its_known_cluster_due_at_once() -> None:
    clock = [100.0]
    runtime = Runtime(api=None)  # type: ignore[arg-type]  # waking needs no API
    runtime.schedule = Schedule(resync_seconds=300, clock=lambda: clock[0])
    assert not runtime.wake("ns", "recs"), "unknown until its first pass"
    runtime.clusters.remember("ns", "recs", "uid-1")
    runtime.schedule.passed("uid-1", None)
    assert not runtime.schedule.is_due("uid-1")
    assert runtime.wake("ns", "recs")
    assert runtime.schedule.is_due("uid-1")
    assert not runtime.wake("ns", "other")
