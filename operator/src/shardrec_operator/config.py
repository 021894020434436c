"""Operator settings, from environment variables (read once at start-up), with their defaults.

    SHARDREC_OPERATOR_TIMER_SECONDS   how often the per-cluster timer ticks (default 2); a tick
                                      costs no API call unless the cluster is due
    SHARDREC_OPERATOR_RESYNC_SECONDS  longest gap between two passes of a settled cluster (default
                                      300): only a safety net, since watch events on the children
                                      wake a cluster at once and failover asks for its own rechecks
    SHARDREC_OPERATOR_CONFLICT_RETRY_SECONDS  retry delay after an API conflict (HTTP 409; default 2)
    SHARDREC_OPERATOR_ERROR_BACKOFF_SECONDS   retry delay after any other failed pass (default 10)
    SHARDREC_OPERATOR_FORCE_DELETES_PER_MINUTE  failover's rate limit: at most this many pods
                                      force-deleted per cluster in any minute (default 6)
    SHARDREC_OPERATOR_UNHEALTHY_NODE_SHARE      failover's brake: no force delete in a zone (the
                                      cluster without zone labels) where more than this share of
                                      nodes is NotReady (default 0.55, as the node lifecycle
                                      controller's --unhealthy-zone-threshold)

The names follow `SHARDREC_<PROCESS>_<SETTING>` like every process (`shardrec.api.commands`).
The earlier names without `OPERATOR_` (SHARDREC_TIMER_SECONDS, ...) are still read when the new
one is unset, because Helm values deployed with `operator.extraEnv` set them.

The planner's `requeue_after_seconds` makes a cluster due sooner while a rollout waits on
something (a build, pods, a router switch).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from shardrec_operator.reconcile.failover import FailoverLimits


class ConfigError(ValueError):
    """An environment variable has a value the operator cannot use; the message names it."""


def _seconds(env: Mapping[str, str], setting: str, default: float) -> float:
    name = f"SHARDREC_OPERATOR_{setting}"
    raw = env.get(name)
    if raw is None or raw == "":
        name = f"SHARDREC_{setting}"  # the name before the convention; deployed values use it
        raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be positive")
    return value


def _number(env: Mapping[str, str], setting: str, default: float, *, low: float, high: float) -> float:
    name = f"SHARDREC_OPERATOR_{setting}"
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r}: must be from {low:g} to {high:g}")
    return value


def _failover_limits(env: Mapping[str, str]) -> FailoverLimits:
    per_minute = _number(env, "FORCE_DELETES_PER_MINUTE", FailoverLimits.max_per_minute, low=1, high=1000)
    if per_minute != int(per_minute):
        raise ConfigError(
            f"SHARDREC_OPERATOR_FORCE_DELETES_PER_MINUTE={per_minute!r}: must be a whole number"
        )
    share = _number(env, "UNHEALTHY_NODE_SHARE", FailoverLimits.unhealthy_node_share, low=0, high=1)
    return FailoverLimits(max_per_minute=int(per_minute), unhealthy_node_share=share)


@dataclass(frozen=True)
class OperatorConfig:
    timer_seconds: float = 2.0
    resync_seconds: float = 300.0
    conflict_retry_seconds: float = 2.0
    error_backoff_seconds: float = 10.0
    failover: FailoverLimits = field(default_factory=FailoverLimits)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        return cls(
            timer_seconds=_seconds(env, "TIMER_SECONDS", cls.timer_seconds),
            resync_seconds=_seconds(env, "RESYNC_SECONDS", cls.resync_seconds),
            conflict_retry_seconds=_seconds(env, "CONFLICT_RETRY_SECONDS", cls.conflict_retry_seconds),
            error_backoff_seconds=_seconds(env, "ERROR_BACKOFF_SECONDS", cls.error_backoff_seconds),
            failover=_failover_limits(env),
        )
