"""Per-API-key token buckets: `rate` requests per second with bursts up to `burst`.

The clock is injected (monotonic seconds), so tests drive time instead of sleeping. The number of
buckets is bounded by the number of distinct keys, which the caller bounds (known API keys only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: float = 0, clock: Callable[[], float] = time.monotonic):
        if rate_per_second < 0 or burst < 0:
            raise ValueError("rate limit: rate and burst must not be negative")
        self.rate = float(rate_per_second)
        # 0 means "one second's worth", and never less than one request or nothing would pass.
        self.burst = float(burst) if burst > 0 else max(self.rate, 1.0)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> float:
        """Take one token for `key`: 0.0 if allowed, else the seconds until one will be there."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=self.burst, updated=now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    """Retry-After is whole seconds (RFC 9110); never 0, which clients read as 'now'."""
    return str(max(1, math.ceil(wait_s)))


class FailedAuthThrottle:
    """Wrong API keys per client address: `rate` per second with bursts of `burst`. An address past
    it gets 429 for every request, valid key or not, until its bucket refills, so keys cannot be
    guessed faster than `rate` per second per address. At most `max_clients` addresses are
    remembered (the oldest forgotten first), so a flood of addresses cannot grow the table."""

    def __init__(
        self,
        rate_per_second: float = 1.0,
        burst: float = 20.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def wait(self, client: str) -> float:
        """0.0 if `client` may try a key now, else the seconds until it may."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + (self._clock() - bucket.updated) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def failed(self, client: str) -> None:
        """Count one wrong key from `client`."""
        now = self._clock()
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(tokens=self.burst, updated=now)
            while len(self._buckets) >= self.max_clients:
                del self._buckets[next(iter(self._buckets))]
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        self._buckets[client] = bucket  # most recent last
