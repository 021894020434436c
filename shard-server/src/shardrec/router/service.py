"""What the router does for one request, between the HTTP edge and the shard channels: resolve the
query against the bound snapshot, scatter it, apply the consistency policy, merge, and encode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from shardrec.index.partitioning import shard_of
from shardrec.router.config import RouterSettings
from shardrec.router.dispatch import Block, ShardFailedError, Vector
from shardrec.router.errors import ApiError
from shardrec.router.gather import Gather
from shardrec.router.merge import Scores, merge_block
from shardrec.router.metrics import RouterMetrics
from shardrec.router.parsing import (
    RecommendQuery,
    check_dimension,
    parse_batch,
    parse_recommend,
    parse_similar,
)
from shardrec.router.snapshot import Snapshot

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class _Query:
    vector: Vector
    k: int
    exclusions: list[list[str]]  # per shard
    exclude: Sequence[str]  # explicit ids, filtered again at the merge


@dataclass(slots=True)
class _Block:
    """The queries of a request that share one k (one block per shard)."""

    k: int
    members: list[int]  # query positions in the request


class RouterService:
    def __init__(self, settings: RouterSettings, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        spec = settings.config.router
        self.strict = spec.consistency == "strict"
        self.timeout_s = spec.timeout_ms / 1000.0
        self.max_batch_size = spec.max_batch_size
        self.limits = settings.limits

    # --- routes ----------------------------------------------------------------------------------

    async def recommend(self, body: bytes, snapshot: Snapshot) -> bytes:
        query = self._resolve(parse_recommend(body, self.limits), snapshot, "")
        results, partial, answered = await self._answer(snapshot, [query])
        return self._encode_one(results[0], snapshot, partial, answered)

    async def recommend_batch(self, body: bytes, snapshot: Snapshot) -> bytes:
        parsed = parse_batch(body, self.limits, self.max_batch_size)
        queries = [self._resolve(q, snapshot, f"queries[{i}].") for i, q in enumerate(parsed)]
        results, partial, answered = await self._answer(snapshot, queries)
        self.metrics.queries.labels("/v1/recommend/batch").inc(len(queries))
        return orjson.dumps(
            {
                "results": [
                    {"items": _items(ids, scores)}
                    for (ids, _), scores in zip(results, _short_floats([r[1] for r in results]), strict=True)
                ],
                "index_version": snapshot.version,
                "partial": partial,
                "shards": {"answered": answered, "total": snapshot.shards},
            }
        )

    async def similar(self, body: bytes, snapshot: Snapshot) -> bytes:
        request = parse_similar(body, self.limits)
        owner = shard_of(request.item_id, snapshot.shards)
        loop = asyncio.get_running_loop()
        try:
            vector = await snapshot.channels[owner].fetch_vector(
                request.item_id, loop.time() + self.timeout_s
            )
        except ShardFailedError as failure:
            raise self._unavailable(snapshot, {owner: failure.reason}) from None
        if vector is None:
            raise ApiError(
                404,
                "unknown_item",
                f"item_id: {request.item_id!r} is not in index version {snapshot.version}",
            )
        exclude = [*request.exclude, request.item_id]
        query = _Query(vector, request.k, snapshot.exclusions(None, False, exclude), exclude)
        results, partial, answered = await self._answer(snapshot, [query])
        return self._encode_one(results[0], snapshot, partial, answered)

    # --- steps -------------------------------------------------------------------------------------

    def _resolve(self, query: RecommendQuery, snapshot: Snapshot, where: str) -> _Query:
        if query.user_id is not None:
            vector = snapshot.users.vector(query.user_id)
            if vector is None:
                raise ApiError(
                    404,
                    "unknown_user",
                    f"{where}user_id: {query.user_id!r} has no embedding in index version {snapshot.version}",
                )
        else:
            assert query.vector is not None  # the parser guarantees exactly one of them
            vector = query.vector
            check_dimension(vector, snapshot.dimension, f"{where}vector")
        exclusions = snapshot.exclusions(query.user_id, query.exclude_seen, query.exclude)
        return _Query(vector, query.k, exclusions, query.exclude)

    async def _answer(
        self, snapshot: Snapshot, queries: Sequence[_Query]
    ) -> tuple[list[tuple[list[str], Scores]], bool, int]:
        """Scatter the queries to every shard, apply the consistency policy, merge.
        Returns (per query: ids and scores; partial; shards answered)."""
        blocks = _blocks(queries)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        channels = snapshot.channels
        gather = Gather(len(blocks), len(channels), future)
        deadline = loop.time() + self.timeout_s
        for index, block in enumerate(blocks):
            members = [queries[m] for m in block.members]
            if len(members) == 1:
                vectors = members[0].vector[None, :]
            else:
                vectors = np.stack([query.vector for query in members])
            for shard, channel in enumerate(channels):
                exclude: list[list[str]] | None = [query.exclusions[shard] for query in members]
                if not any(exclude):  # type: ignore[arg-type]
                    exclude = None
                channel.submit(Block(gather, index, vectors, block.k, exclude, deadline))
        await future
        partial, answered = self._coverage(gather, snapshot)
        results: list[tuple[list[str], Scores]] = [([], _NO_SCORES)] * len(queries)
        for index, block in enumerate(blocks):
            parts = [part for part in gather.parts[index] if part is not None]
            explicit = [queries[m].exclude for m in block.members]
            merged = merge_block(parts, block.k, explicit if any(explicit) else None)
            for member, result in zip(block.members, merged, strict=True):
                results[member] = result
        return results, partial, answered

    def _coverage(self, gather: Gather, snapshot: Snapshot) -> tuple[bool, int]:
        """(partial, shards answered); raises 503 when the policy does not allow a partial answer."""
        if not gather.failures:
            return False, snapshot.shards
        answered = gather.answered_shards()
        if self.strict or answered == 0:
            raise self._unavailable(snapshot, gather.failures)
        self.metrics.partial_answers.inc()
        return True, answered

    def _unavailable(self, snapshot: Snapshot, failures: dict[int, str]) -> ApiError:
        failed = sorted(failures)
        names = ", ".join(f"shard {s} ({failures[s]})" for s in failed)
        return ApiError(
            503,
            "shard_unavailable",
            f"{names} of layout {snapshot.layout} (version {snapshot.version}) did not answer: no live "
            f"replica within the deadline; {snapshot.shards - len(failed)} of {snapshot.shards} shards "
            "answered",
            headers={"Retry-After": "1", "X-Shardrec-Unavailable-Shards": ",".join(map(str, failed))},
        )

    @staticmethod
    def _encode_one(
        result: tuple[list[str], Scores], snapshot: Snapshot, partial: bool, answered: int
    ) -> bytes:
        return orjson.dumps(
            {
                "items": _items(result[0], _short_floats([result[1]])[0]),
                "index_version": snapshot.version,
                "partial": partial,
                "shards": {"answered": answered, "total": snapshot.shards},
            }
        )


def _short_floats(rows: list[Scores]) -> list[list[float]]:
    """float32 scores as Python floats that print as their shortest float32 form (0.3, not
    0.30000001192092896): orjson writes float32 arrays that way, and reading it back keeps it.
    Two C calls for all rows instead of a numpy scalar per score."""
    result: list[list[float]] = orjson.loads(orjson.dumps(rows, option=_NUMPY))
    return result


def _items(ids: list[str], scores: list[float]) -> list[dict[str, object]]:
    return [{"item_id": item, "score": score} for item, score in zip(ids, scores, strict=True)]


def _blocks(queries: Sequence[_Query]) -> list[_Block]:
    if len(queries) == 1:
        return [_Block(queries[0].k, [0])]
    by_k: dict[int, _Block] = {}
    for position, query in enumerate(queries):
        block = by_k.get(query.k)
        if block is None:
            block = by_k[query.k] = _Block(query.k, [])
        block.members.append(position)
    return list(by_k.values())


_NO_SCORES: Scores = np.zeros(0, dtype=np.float32)
