"""Result cache and fallback answers of /v1/recommend, between the gate and `RouterService`.

`Answers` owns the cache of one router (its `ResultCache`, its metrics) and decides, when the
router sheds a request (admission full) or a shard is down under `strict`, whether the request can
be answered from the cache instead of a 503 (`router.fallback`). The JSON surgery on encoded
answers (`mark`) is pure.

Only /v1/recommend is cached: its answers are deterministic per (layout, query). Partial answers
(`consistency: available`) are never stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from shardrec.api.v1alpha1 import RouterSpec
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.parsing import RecommendQuery
from shardrec.serving.router.result_cache import CacheKey, ResultCache, cache_key

CACHED: Final = b',"cached":true}'
FALLBACK_CACHED: Final = b',"cached":true,"fallback":"cached"}'

RECOMMEND_ROUTE: Final = "/v1/recommend"
SHED: Final = "shed"
SHARD_UNAVAILABLE: Final = "shard_unavailable"


class FallbackAnswer(Exception):  # noqa: N818 - an answer, not an error
    """Raised by the gate's shed path to answer (200) with `payload` instead of the 503."""

    def __init__(self, payload: bytes, order_header: bytes) -> None:
        super().__init__("fallback answer")
        self.payload = payload
        self.order_header = order_header


def mark(payload: bytes, suffix: bytes) -> bytes:
    """An encoded answer object with fields appended (`payload` ends with `}`, as orjson writes
    every object)."""
    assert payload.endswith(b"}")
    return payload[:-1] + suffix


def key_of(layout: str, query: RecommendQuery) -> CacheKey:
    return cache_key(
        layout,
        user_id=query.user_id,
        vector=query.vector,
        k=query.k,
        exclude_seen=query.exclude_seen,
        exclude=query.exclude,
    )


class Answers:
    def __init__(
        self,
        spec: RouterSpec,
        metrics: RouterMetrics,
        parse: Callable[[bytes], RecommendQuery],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.parse = parse
        cache = spec.cache
        fallback = spec.fallback
        self.cache: ResultCache | None = None
        if cache.enabled:
            stale = fallback.max_stale_seconds if fallback.cached else 0
            self.cache = ResultCache(cache.max_bytes, cache.ttl_seconds, clock, stale)
        self.fallback_cached = fallback.cached and self.cache is not None
        self._evictions = 0

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    def lookup(self, key: CacheKey) -> bytes | None:
        """A fresh cached answer, flagged `cached: true`, or None (counted as a miss)."""
        assert self.cache is not None
        payload = self.cache.get(key)
        if payload is None:
            self.metrics.cache_misses.inc()
            return None
        self.metrics.cache_hits.inc()
        return mark(payload, CACHED)

    def store(self, key: CacheKey, payload: bytes) -> None:
        cache = self.cache
        assert cache is not None
        cache.put(key, payload)
        self._publish(cache)

    def fallback(self, key: CacheKey, reason: str) -> bytes | None:
        """A cached answer (stale allowed within the bound) for a request the router would refuse
        with 503 for `reason`, flagged `fallback: "cached"`; None if fallback is off or nothing is
        cached."""
        if not self.fallback_cached:
            return None
        assert self.cache is not None
        found = self.cache.get_stale(key)
        if found is None:
            return None
        self.metrics.fallback_answers.labels(reason, "cached").inc()
        return mark(found.payload, FALLBACK_CACHED)

    def fallback_body(self, layout: str, body: bytes, reason: str) -> bytes | None:
        """`fallback` for a raw /v1/recommend body (the shed path: the body is read but was not
        parsed). A body that does not parse gets no fallback (its 503 stands)."""
        if not self.fallback_cached:
            return None
        try:
            query = self.parse(body)
        except ApiError:
            return None
        return self.fallback(key_of(layout, query), reason)

    def _publish(self, cache: ResultCache) -> None:
        metrics = self.metrics
        metrics.cache_bytes.set(cache.bytes)
        metrics.cache_entries.set(len(cache))
        if cache.evictions != self._evictions:
            metrics.cache_evictions.inc(cache.evictions - self._evictions)
            self._evictions = cache.evictions
