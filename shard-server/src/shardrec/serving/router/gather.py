"""Collects the shard answers of one client request until every shard has answered or failed for
every block of its queries, then wakes the request with a single future.

A request sends its queries as blocks: one block per distinct k, each block a matrix of queries,
to every shard. A shard answers a block with arrays (ids, scores, counts), sliced out of its
batched answer without per-query work. One future per request keeps the event-loop work per
request constant whatever its number of queries.
"""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float32]
Ids = npt.NDArray[np.str_]
Counts = npt.NDArray[np.uint32]
BlockAnswer = tuple[Ids, Scores, Counts]  # (rows, k) ids and scores, (rows,) real entries


class Gather:
    __slots__ = ("failures", "future", "parts", "remaining", "shards")

    def __init__(self, blocks: int, shards: int, future: asyncio.Future[None]) -> None:
        self.shards = shards
        self.parts: list[list[BlockAnswer | None]] = [[None] * shards for _ in range(blocks)]
        # shard -> reason, for shards that failed for at least one block.
        self.failures: dict[int, str] = {}
        self.remaining = blocks * shards
        self.future = future

    def deliver(self, block: int, shard: int, answer: BlockAnswer) -> None:
        if self.future.done():
            return  # expired: the request has been answered without it
        self.parts[block][shard] = answer
        self._one_done()

    def fail(self, block: int, shard: int, reason: str) -> None:
        self.failures.setdefault(shard, reason)
        self._one_done()

    def _one_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)

    def expire(self) -> None:
        """The request's deadline passed: every shard still owing a block has failed it
        ("deadline"), and the request stops waiting. Answers arriving later are ignored."""
        if self.future.done():
            return
        for shard in range(self.shards):
            if shard not in self.failures and any(parts[shard] is None for parts in self.parts):
                self.failures[shard] = "deadline"
        self.future.set_result(None)

    def answered_shards(self) -> int:
        """Shards that answered every block of the request."""
        return self.shards - len(self.failures)
