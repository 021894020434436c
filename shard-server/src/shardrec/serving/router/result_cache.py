"""The router's result cache: encoded answers of /v1/recommend, bounded by bytes, with a TTL.

Pure (no I/O, no event loop; the clock is injected). Answers are deterministic per (layout, query),
so the key holds the layout: after a layout switch no new request can reach an old entry, and old
entries age out by TTL or are evicted by newer ones (LRU by bytes).

An entry past its TTL is not a hit, but it stays until evicted or until it is older than
`ttl + max_stale`: a fallback answer (`fallback.py`) may serve it while the router sheds load or a
shard is down.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CacheKey = tuple[str, str, int, bool, tuple[str, ...]]
"""(layout, subject, k, exclude_seen, sorted explicit exclusions); subject is `u:<user id>` or
`v:<hash of the query vector>`, followed by `|r:<hash of the recent items>` for a fold-in query
(`recent_items`, with or without a user id: `r:<hash>` alone for an anonymous one)."""

ENTRY_OVERHEAD_BYTES = 160
"""What an entry costs besides its key strings and payload (tuple, OrderedDict node, floats)."""


def cache_key(
    layout: str,
    *,
    user_id: str | None,
    vector: npt.NDArray[np.float32] | None,
    k: int,
    exclude_seen: bool,
    exclude: Sequence[str],
    recent: Sequence[tuple[str, float | None]] | None = None,
) -> CacheKey:
    """The key of one query. A vector query is keyed by a hash of its float32 bytes (the parsed
    vector, so `1` and `1.0` are the same query); the exclusions are order-free. The recent items
    of a fold-in query are keyed as a multiset of (id, weight): their order does not change the
    fold-in, a repeated click does."""
    if user_id is not None:
        subject = "u:" + user_id
    elif vector is not None:
        data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        subject = "v:" + hashlib.blake2b(data, digest_size=16).hexdigest()
    else:
        assert recent is not None
        subject = ""
    if recent is not None:
        pairs = sorted((item, -1.0 if weight is None else float(weight)) for item, weight in recent)
        digest = hashlib.blake2b(repr(pairs).encode(), digest_size=16).hexdigest()
        subject = f"{subject}|r:{digest}" if subject else f"r:{digest}"
    return (layout, subject, k, exclude_seen, tuple(sorted(set(exclude))))


def key_bytes(key: CacheKey) -> int:
    return len(key[0]) + len(key[1]) + sum(len(item) for item in key[4])


@dataclass(slots=True)
class _Entry:
    payload: bytes
    stored_at: float
    size: int


@dataclass(frozen=True, slots=True)
class Lookup:
    """A cached payload and its age in seconds."""

    payload: bytes
    age_s: float


class ResultCache:
    """LRU by bytes with a TTL. `get` returns fresh entries only; `get_stale` also entries past
    their TTL by at most `max_stale_s`."""

    def __init__(
        self, max_bytes: int, ttl_s: float, clock: Callable[[], float], max_stale_s: float = 0.0
    ) -> None:
        if max_bytes < 1 or ttl_s <= 0 or max_stale_s < 0:
            raise ValueError("max_bytes and ttl_s must be positive, max_stale_s not negative")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self._clock = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self._clock() - entry.stored_at
        if age > self.ttl_s:
            if age > self.ttl_s + self.max_stale_s:
                self._drop(key, entry)
            return None
        self._entries.move_to_end(key)
        return entry.payload

    def get_stale(self, key: CacheKey) -> Lookup | None:
        """Fresh or stale (within `max_stale_s` past the TTL): for fallback answers."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self._clock() - entry.stored_at
        if age > self.ttl_s + self.max_stale_s:
            self._drop(key, entry)
            return None
        return Lookup(entry.payload, age)

    def put(self, key: CacheKey, payload: bytes) -> bool:
        """Store `payload`; False when it alone is larger than the whole cache."""
        size = len(payload) + key_bytes(key) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._entries[key] = _Entry(payload, self._clock(), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size
            self.evictions += 1
        return True

    def _drop(self, key: CacheKey, entry: _Entry) -> None:
        del self._entries[key]
        self.bytes -= entry.size
