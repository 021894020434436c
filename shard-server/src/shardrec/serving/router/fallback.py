"""Result cache and fallback answers of /v1/recommend, between the gate and `RouterService`.

`Answers` owns the cache of one router (its `ResultCache`, its metrics) and decides, when the
router sheds a request (admission full) or a shard is down under `strict`, whether the request can
be answered from the cache instead of a 503 (`router.fallback.cached`), or else from the layout's
popular list (`router.fallback.popular`: the most-seen items stored in the layout at build time,
minus what the query excludes). The JSON surgery on encoded answers (`mark`) and the popular
answer (`popular_answer`) are pure.

Only /v1/recommend is cached: its answers are deterministic per (layout, query). Partial answers
(`consistency: available`) are never stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import orjson

from shardrec.api.v1alpha1 import RouterSpec
from shardrec.serving.index.users import UserTable
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


def popular_answer(users: UserTable, query: RecommendQuery, version: str, shards: int) -> bytes | None:
    """The layout's most-seen items not excluded for `query` (its explicit ids, and the user's seen
    items when asked), at most k, scored by how many users saw each; flagged `fallback: "popular"`.
    None when the layout has no popular list or the user is unknown to it (the 503 stands). Pure."""
    if not users.popular:
        return None
    if query.vector is not None and len(query.vector) != users.dimension:
        return None  # the 422 it would get is for the answered path to say
    skip = set(query.exclude)
    if query.user_id is not None:
        if query.user_id not in users:
            return None
        if query.exclude_seen:
            skip.update(users.seen(query.user_id))
    chosen = []
    for item, count in users.popular:
        if item not in skip:
            chosen.append({"item_id": item, "score": float(count)})
            if len(chosen) == query.k:
                break
    return orjson.dumps(
        {
            "items": chosen,
            "index_version": version,
            "partial": False,
            "shards": {"answered": 0, "total": shards},
            "fallback": "popular",
        }
    )


def key_of(layout: str, query: RecommendQuery) -> CacheKey:
    return cache_key(
        layout,
        user_id=query.user_id,
        vector=query.vector,
        k=query.k,
        exclude_seen=query.exclude_seen,
        exclude=query.exclude,
        recent=query.recent,
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
        self.fallback_popular = fallback.popular
        self._evictions = 0

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    @property
    def any_fallback(self) -> bool:
        return self.fallback_cached or self.fallback_popular

    def popular(
        self, users: UserTable, query: RecommendQuery, version: str, shards: int, reason: str
    ) -> bytes | None:
        """`popular_answer` when router.fallback.popular allows it (counted by reason), else None."""
        if not self.fallback_popular:
            return None
        payload = popular_answer(users, query, version, shards)
        if payload is not None:
            self.metrics.fallback_answers.labels(reason, "popular").inc()
        return payload

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

    def fallback_body(
        self, layout: str, body: bytes, reason: str, *, users: UserTable, version: str, shards: int
    ) -> bytes | None:
        """`fallback`, then `popular`, for a raw /v1/recommend body (the shed path: the body is
        read but was not parsed). A body that does not parse gets no fallback (its 503 stands)."""
        if not self.any_fallback:
            return None
        try:
            query = self.parse(body)
        except ApiError:
            return None
        cached = self.fallback(key_of(layout, query), reason)
        return cached if cached is not None else self.popular(users, query, version, shards, reason)

    def _publish(self, cache: ResultCache) -> None:
        metrics = self.metrics
        metrics.cache_bytes.set(cache.bytes)
        metrics.cache_entries.set(len(cache))
        if cache.evictions != self._evictions:
            metrics.cache_evictions.inc(cache.evictions - self._evictions)
            self._evictions = cache.evictions
