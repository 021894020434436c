"""The result cache alone (pure): LRU by bytes, TTL and stale bound on an injected clock, keys."""

from __future__ import annotations

import numpy as np
import pytest

from shardrec.api.v1alpha1 import RouterSpec
from shardrec.serving.router.fallback import CACHED, FALLBACK_CACHED, mark
from shardrec.serving.router.result_cache import ENTRY_OVERHEAD_BYTES, ResultCache, cache_key, key_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(user: str, layout: str = "L1", k: int = 10) -> tuple[str, str, int, bool, tuple[str, ...]]:
    return cache_key(layout, user_id=user, vector=None, k=k, exclude_seen=True, exclude=[])


def size_of(user: str, payload: bytes) -> int:
    return len(payload) + key_bytes(key(user)) + ENTRY_OVERHEAD_BYTES


def test_bytes_bound_evicts_least_recently_used_first() -> None:
    payload = b"x" * 100
    budget = size_of("u1", payload) * 3
    cache = ResultCache(budget, ttl_s=60, clock=Clock())
    for user in ("u1", "u2", "u3"):
        assert cache.put(key(user), payload)
    assert cache.bytes == budget and len(cache) == 3
    assert cache.get(key("u1")) == payload  # u1 is now the most recent
    cache.put(key("u4"), payload)
    assert cache.get(key("u2")) is None  # the least recent went
    assert cache.get(key("u1")) == payload and cache.get(key("u4")) == payload
    assert cache.evictions == 1 and cache.bytes <= budget


def test_a_big_answer_evicts_as_many_as_it_needs_and_one_too_big_is_not_stored() -> None:
    small = b"s" * 10
    cache = ResultCache(size_of("u1", small) * 4, ttl_s=60, clock=Clock())
    for user in ("u1", "u2", "u3", "u4"):
        cache.put(key(user), small)
    big = b"b" * (size_of("u1", small) * 2)
    assert cache.put(key("u5"), big)
    # big costs 2 small payloads + one entry: about 3 small entries, so 3 of the 4 go
    assert cache.evictions == 3 and len(cache) == 2 and cache.get(key("u4")) == small
    assert not cache.put(key("u6"), b"y" * (cache.max_bytes + 1))
    assert cache.get(key("u6")) is None and cache.get(key("u5")) == big


def test_replacing_an_entry_keeps_the_byte_count_exact() -> None:
    cache = ResultCache(10_000, ttl_s=60, clock=Clock())
    cache.put(key("u1"), b"a" * 50)
    cache.put(key("u1"), b"a" * 70)
    assert len(cache) == 1 and cache.bytes == size_of("u1", b"a" * 70)


def test_ttl_ends_hits_and_the_stale_bound_ends_fallbacks() -> None:
    clock = Clock()
    cache = ResultCache(10_000, ttl_s=30, clock=clock, max_stale_s=60)
    cache.put(key("u1"), b"answer")
    clock.now += 30
    assert cache.get(key("u1")) == b"answer"  # exactly at the TTL: still fresh
    clock.now += 1
    assert cache.get(key("u1")) is None  # past it: a miss ...
    stale = cache.get_stale(key("u1"))
    assert stale is not None and stale.payload == b"answer" and stale.age_s == 31  # ... kept for fallback
    clock.now += 60
    assert cache.get_stale(key("u1")) is None  # past ttl + max_stale: gone
    assert len(cache) == 0 and cache.bytes == 0


def test_without_a_stale_bound_expired_entries_are_dropped_on_lookup() -> None:
    clock = Clock()
    cache = ResultCache(10_000, ttl_s=5, clock=clock)
    cache.put(key("u1"), b"answer")
    clock.now += 6
    assert cache.get(key("u1")) is None
    assert len(cache) == 0 and cache.bytes == 0


def test_the_key_holds_layout_subject_k_and_order_free_exclusions() -> None:
    assert key("u1", layout="L1") != key("u1", layout="L2")  # a layout switch cannot reach old answers
    assert key("u1", k=10) != key("u1", k=11)
    assert key("u1") != key("u2")
    plain = cache_key("L", user_id="u", vector=None, k=5, exclude_seen=True, exclude=["b", "a"])
    assert plain == cache_key("L", user_id="u", vector=None, k=5, exclude_seen=True, exclude=["a", "b", "a"])
    assert plain != cache_key("L", user_id="u", vector=None, k=5, exclude_seen=False, exclude=["a", "b"])
    assert plain != cache_key("L", user_id="u", vector=None, k=5, exclude_seen=True, exclude=["a"])


def test_vector_queries_are_keyed_by_their_float32_values() -> None:
    one = np.array([1, 2, 3], dtype=np.float32)
    same = np.array([1.0, 2.0, 3.0], dtype=np.float64)
    other = np.array([1, 2, 3.0001], dtype=np.float32)

    def of(vector: np.ndarray) -> tuple[str, str, int, bool, tuple[str, ...]]:
        return cache_key("L", user_id=None, vector=vector, k=5, exclude_seen=True, exclude=[])

    assert of(one) == of(same)
    assert of(one) != of(other)
    assert of(one)[1].startswith("v:") and key("v:x")[1] == "u:v:x"  # a user id cannot pose as a vector


def test_marking_appends_fields_to_an_encoded_answer() -> None:
    assert mark(b'{"items":[],"partial":false}', CACHED) == b'{"items":[],"partial":false,"cached":true}'
    assert mark(b'{"a":1}', FALLBACK_CACHED) == b'{"a":1,"cached":true,"fallback":"cached"}'


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        ResultCache(0, ttl_s=1, clock=Clock())
    with pytest.raises(ValueError, match="positive"):
        ResultCache(10, ttl_s=0, clock=Clock())


def test_the_spec_defaults_keep_todays_semantics_and_fallback_needs_the_cache() -> None:
    spec = RouterSpec()
    assert spec.cache.enabled is False and spec.fallback.cached is False
    with pytest.raises(ValueError, match=r"router.fallback.cached needs router.cache.enabled"):
        RouterSpec.model_validate({"fallback": {"cached": True}})
    wire = RouterSpec.model_validate(
        {"cache": {"enabled": True, "maxBytes": 4096, "ttlSeconds": 5}, "fallback": {"cached": True}}
    )
    assert wire.cache.max_bytes == 4096 and wire.fallback.max_stale_seconds == 3600


def test_recent_items_are_part_of_the_key() -> None:
    """A fold-in query's answer depends on its recent items (and their weights): two users sending
    different clicks, or one user before and after a click, never share an entry."""

    def of(user: str | None, recent: list[tuple[str, float | None]] | None) -> object:
        return cache_key("L", user_id=user, vector=None, k=5, exclude_seen=True, exclude=[], recent=recent)

    assert of("u", None) == key("u", layout="L", k=5)
    assert of("u", [("a", None)]) != of("u", None)
    assert of("u", [("a", None)]) != of("u", [("b", None)])
    assert of("u", [("a", None)]) != of("u", [("a", 2.0)])
    assert of("u", [("a", None)]) != of("u", [("a", None), ("b", None)])
    assert of("u", [("a", None), ("a", None)]) != of("u", [("a", None)])  # each click counts
    assert of("u", [("a", 1.0), ("b", None)]) == of("u", [("b", None), ("a", 1.0)])  # order-free
    assert of(None, [("a", None)]) != of("u", [("a", None)])
    assert of(None, [("a", None)]) != of("r:a", None)  # a user id cannot pose as clicks
