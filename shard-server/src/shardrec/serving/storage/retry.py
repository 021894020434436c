"""Retries with exponential backoff and full jitter for faults that a later attempt may not see.

Only errors marked `retryable` (connection failures, throttling, 5xx) are retried; a missing object,
a denied request or a checksum mismatch fails at once, since repeating it cannot help.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shardrec.serving.storage.errors import StoreError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; before try n+1 sleep uniform(0, min(cap, base * 2**n)) seconds."""

    attempts: int = 6
    base_seconds: float = 0.25
    cap_seconds: float = 8.0

    def delay(self, retry: int, draw: Callable[[float, float], float]) -> float:
        """The pause before retry number `retry` (0-based); `draw(a, b)` picks uniformly in [a, b]."""
        return draw(0.0, min(self.cap_seconds, self.base_seconds * (2**retry)))


DEFAULT_POLICY = RetryPolicy()


def with_retries(
    operation: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    draw: Callable[[float, float], float] = random.uniform,
) -> T:
    """Run `operation`, retrying retryable StoreErrors per `policy`; the last error propagates."""
    for retry in range(policy.attempts):
        try:
            return operation()
        except StoreError as exc:
            if not exc.retryable or retry + 1 >= policy.attempts:
                raise
            pause = policy.delay(retry, draw)
            # The error names the object already; `what` only when it does not.
            subject = str(exc) if what in str(exc) else f"{what}: {exc}"
            log.warning("%s; retry %d/%d in %.2fs", subject, retry + 1, policy.attempts - 1, pause)
            sleep(pause)
    raise AssertionError("unreachable: the loop returns or raises")
