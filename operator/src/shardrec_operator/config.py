"""Operator settings, from environment variables (read once at start-up), with their defaults.

    SHARDREC_OPERATOR_TIMER_SECONDS   how often the per-cluster timer ticks (default 2); a tick
                                      costs no API call unless the cluster is due
    SHARDREC_OPERATOR_RESYNC_SECONDS  longest gap between two passes of a settled cluster (default
                                      15): how soon a deleted pod or a lost node shows in the status
    SHARDREC_OPERATOR_CONFLICT_RETRY_SECONDS  retry delay after an API conflict (HTTP 409; default 2)
    SHARDREC_OPERATOR_ERROR_BACKOFF_SECONDS   retry delay after any other failed pass (default 10)

The names follow `SHARDREC_<PROCESS>_<SETTING>` like every process (`shardrec.api.commands`).
The earlier names without `OPERATOR_` (SHARDREC_TIMER_SECONDS, ...) are still read when the new
one is unset, because Helm values deployed with `operator.extraEnv` set them.

The planner's `requeue_after_seconds` makes a cluster due sooner while a rollout waits on
something (a build, pods, a router switch).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


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


@dataclass(frozen=True)
class OperatorConfig:
    timer_seconds: float = 2.0
    resync_seconds: float = 15.0
    conflict_retry_seconds: float = 2.0
    error_backoff_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        return cls(
            timer_seconds=_seconds(env, "TIMER_SECONDS", cls.timer_seconds),
            resync_seconds=_seconds(env, "RESYNC_SECONDS", cls.resync_seconds),
            conflict_retry_seconds=_seconds(env, "CONFLICT_RETRY_SECONDS", cls.conflict_retry_seconds),
            error_backoff_seconds=_seconds(env, "ERROR_BACKOFF_SECONDS", cls.error_backoff_seconds),
        )
