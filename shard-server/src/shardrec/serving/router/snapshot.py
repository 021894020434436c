"""A serving snapshot: everything one layout needs to answer requests, computed once per topology.

A request binds to the snapshot that is active when it is admitted and uses only it (its shard
channels, its user table, its version), so one answer never mixes index versions even while the
router switches layouts underneath.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from shardrec.api.topology import LayoutTopology
from shardrec.serving.index.partitioning import assign_shards
from shardrec.serving.index.users import UserTable
from shardrec.serving.router.dispatch import ShardChannel
from shardrec.serving.router.shard_protocol import ShardClientLike

_SEEN_CACHE_USERS = 65_536


@dataclass(eq=False)
class Snapshot:
    topology: LayoutTopology
    users: UserTable
    channels: list[ShardChannel]
    # (epoch, revision) of the topology document that made this layout active in this router.
    # With the staged switch every router activates it on the same document, so a client that
    # echoes it back (X-Shardrec-Min-Layout-Order) never gets an older layout from another router.
    order: tuple[int, int] = (0, -1)
    order_header: bytes = b"0.-1"
    in_flight: int = 0
    _idle: asyncio.Event | None = None
    _seen_by_shard: OrderedDict[str, list[list[str]]] = field(default_factory=OrderedDict)

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> None:
        """Until no admitted request uses this snapshot (bounded by `timeout_s`)."""
        if self.in_flight == 0:
            return
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    @property
    def layout(self) -> str:
        return self.topology.layout

    @property
    def answer_scope(self) -> str:
        """What answers depend on besides the query: the layout and the efSearch the shards are
        sent (it changes live, without a new layout). The result cache keys on it, so a cached
        answer is always one these shards would give now."""
        ef = self.channels[0].ef_search if self.channels else 0
        return f"{self.layout}#ef{ef}#w{self.write_epoch}"

    @property
    def write_epoch(self) -> int:
        """The sum over shards of the newest write-log sequence known applied (probes and this
        router's own writes): it grows with every write this router learns of, so a cached answer
        never outlives an upsert or a delete by more than a probe interval (none through this
        router)."""
        return sum(
            max((replica.applied_sequence for replica in channel.replicas), default=0)
            for channel in self.channels
        )

    @property
    def version(self) -> str:
        return self.topology.version

    @property
    def shards(self) -> int:
        return self.topology.shards

    @property
    def dimension(self) -> int:
        return self.topology.dimension

    def split_by_shard(self, item_ids: Sequence[str]) -> list[list[str]]:
        """`item_ids` grouped by the shard that holds them (the one partition function)."""
        groups: list[list[str]] = [[] for _ in range(self.shards)]
        if not item_ids:
            return groups
        if self.shards == 1:
            groups[0] = list(item_ids)
            return groups
        for item, shard in zip(item_ids, assign_shards(item_ids, self.shards).tolist(), strict=True):
            groups[shard].append(item)
        return groups

    def seen_by_shard(self, user_id: str) -> list[list[str]]:
        """The user's seen items per shard; cached for recently active users (bounded)."""
        cached = self._seen_by_shard.get(user_id)
        if cached is not None:
            self._seen_by_shard.move_to_end(user_id)
            return cached
        groups = self.split_by_shard(self.users.seen(user_id))
        self._seen_by_shard[user_id] = groups
        if len(self._seen_by_shard) > _SEEN_CACHE_USERS:
            self._seen_by_shard.popitem(last=False)
        return groups

    def exclusions(self, user_id: str | None, exclude_seen: bool, exclude: Sequence[str]) -> list[list[str]]:
        """Per shard: what to exclude for one query (seen items if asked, plus explicit ids)."""
        seen = self.seen_by_shard(user_id) if user_id is not None and exclude_seen else None
        if not exclude:
            return seen if seen is not None else _no_exclusions(self.shards)
        extra = self.split_by_shard(exclude)
        if seen is None:
            return extra
        return [a + b if b else a for a, b in zip(seen, extra, strict=True)]

    def clients(self) -> list[ShardClientLike]:
        return [replica.client for channel in self.channels for replica in channel.replicas]


_EMPTY_CACHE: dict[int, list[list[str]]] = {}


def _no_exclusions(shards: int) -> list[list[str]]:
    """Shared, never mutated: most queries exclude nothing and need not allocate for it."""
    cached = _EMPTY_CACHE.get(shards)
    if cached is None:
        cached = _EMPTY_CACHE[shards] = [[] for _ in range(shards)]
    return cached


def replica_key(name: str, url: str) -> tuple[str, str]:
    return (name, url)
