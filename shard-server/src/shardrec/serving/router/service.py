"""What the router does for one request, between the HTTP edge and the shard channels: resolve the
query against the bound snapshot, scatter it, apply the consistency policy, merge, and encode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from shardrec.serving.index.foldin import fold_in
from shardrec.serving.router.config import RouterSettings
from shardrec.serving.router.dispatch import Block, ShardFailedError, Vector
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.fallback import SHARD_UNAVAILABLE, Answers, key_of
from shardrec.serving.router.gather import Gather
from shardrec.serving.router.merge import Scores, merge_block
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.parsing import (
    RecommendQuery,
    RequestParser,
    VectorBatch,
    check_dimension,
)
from shardrec.serving.router.response import encode_batch, encode_one
from shardrec.serving.router.snapshot import Snapshot
from shardrec.serving.router.writes import (
    ItemWriter,
    ReadFloor,
    check_item_id,
    min_sequence_header,
    parse_min_sequence,
    parse_upsert,
)


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


@dataclass(slots=True)
class _Prepared:
    """A block ready to scatter: its rows, what each shard must exclude, and the explicit ids the
    merge filters again."""

    k: int
    members: list[int]
    vectors: Vector  # (rows, d)
    exclude_by_shard: list[list[list[str]] | None]  # per shard: per row, or None (nothing)
    explicit: list[Sequence[str]] | None  # per row, or None (nothing)


class RouterService:
    def __init__(self, settings: RouterSettings, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        spec = settings.config.router
        self.strict = spec.consistency == "strict"
        self.timeout_s = spec.timeout_ms / 1000.0
        self.max_batch_size = spec.max_batch_size
        self.limits = settings.limits
        self.parser = RequestParser(settings.limits, spec.max_batch_size)
        self.answers = Answers(spec, metrics, self.parser.recommend)
        self.writer: ItemWriter | None = None  # set by the router state

    # --- routes ----------------------------------------------------------------------------------

    async def recommend(self, body: bytes, snapshot: Snapshot) -> bytes:
        request = self.parser.recommend(body)
        answers = self.answers
        if not answers.enabled or min_sequence_header.get() is not None:
            query = await self._resolve_folding(request, snapshot, "")
            try:
                results, partial, answered = await self._answer(snapshot, [query])
            except ApiError as error:
                popular = (
                    answers.popular(
                        snapshot.users, request, snapshot.version, snapshot.shards, SHARD_UNAVAILABLE
                    )
                    if error.code == SHARD_UNAVAILABLE
                    else None
                )
                if popular is None:
                    raise
                return popular
            return self._encode_one(results[0], snapshot, partial, answered)
        key = key_of(snapshot.answer_scope, request)
        hit = answers.lookup(key)
        if hit is not None:
            return hit
        query = await self._resolve_folding(request, snapshot, "")
        try:
            results, partial, answered = await self._answer(snapshot, [query])
        except ApiError as error:
            if error.code != SHARD_UNAVAILABLE:
                raise
            fallback = answers.fallback(key, SHARD_UNAVAILABLE)
            if fallback is None:
                fallback = answers.popular(
                    snapshot.users, request, snapshot.version, snapshot.shards, SHARD_UNAVAILABLE
                )
            if fallback is None:
                raise
            return fallback
        payload = self._encode_one(results[0], snapshot, partial, answered)
        if not partial:
            self.answers.store(key, payload)
        return payload

    async def recommend_batch(self, body: bytes, snapshot: Snapshot) -> bytes:
        parsed = self.parser.batch(body)
        if isinstance(parsed, VectorBatch):
            # Plain vector queries: no per-query objects, nothing to exclude.
            check_dimension(parsed.vectors[0], snapshot.dimension, f"queries[0].{parsed.vector_field}")
            count = len(parsed.ks)
            blocks = _plain_blocks(parsed, snapshot.shards)
        elif any(q.recent is not None for q in parsed):
            queries = await self._resolve_all(parsed, snapshot)
            count = len(queries)
            blocks = _prepare(queries, snapshot.shards)
        else:
            queries = [self._resolve(q, snapshot, f"queries[{i}].") for i, q in enumerate(parsed)]
            count = len(queries)
            blocks = _prepare(queries, snapshot.shards)
        results, partial, answered = await self._scatter_merge(snapshot, blocks, count)
        self.metrics.queries.labels("/v1/recommend/batch").inc(count)
        return encode_batch(results, snapshot.version, partial, answered, snapshot.shards)

    async def similar(self, body: bytes, snapshot: Snapshot) -> bytes:
        request = self.parser.similar(body)
        # The item's vector and the search both honour the request's read-your-writes token, as
        # every read here does: the item just upserted is found, one just deleted is not.
        vector = (await self._item_vectors(snapshot, [request.item_id])).get(request.item_id)
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

    async def put_item(self, item_id: str, body: bytes, snapshot: Snapshot) -> bytes:
        """`PUT /v1/items/{id}`: upsert the item's vector (and metadata) in its shard."""
        check_item_id(item_id, self.limits.max_id_length)
        op = parse_upsert(body, snapshot.dimension)
        return await self._writer().write(snapshot, item_id, op)

    async def delete_item(self, item_id: str, body: bytes, snapshot: Snapshot) -> bytes:
        """`DELETE /v1/items/{id}`: never returned again once acknowledged (a no-op if unknown)."""
        check_item_id(item_id, self.limits.max_id_length)
        if body.strip():
            raise ApiError(400, "unexpected_body", "DELETE /v1/items/{id} takes no body")
        return await self._writer().write(snapshot, item_id, {"op": "delete"})

    def _writer(self) -> ItemWriter:
        if self.writer is None:
            raise ApiError(501, "writes_unsupported", "this router does not take item writes")
        return self.writer

    # --- steps -------------------------------------------------------------------------------------

    async def _resolve_all(self, queries: list[RecommendQuery], snapshot: Snapshot) -> list[_Query]:
        """A batch with fold-in queries: their vectors are fetched concurrently; the first failing
        query in request order decides the error."""
        resolved = await asyncio.gather(
            *(self._resolve_folding(q, snapshot, f"queries[{i}].") for i, q in enumerate(queries)),
            return_exceptions=True,
        )
        for outcome in resolved:
            if isinstance(outcome, BaseException):
                raise outcome
        return resolved  # type: ignore[return-value]

    async def _resolve_folding(self, query: RecommendQuery, snapshot: Snapshot, where: str) -> _Query:
        """`_resolve`, after folding in `query.recent` (recent_items) when it has some: the user's
        vector from those items' vectors (fetched from their owning shards), which are then
        excluded from the answer. With a known user_id it replaces the stored vector, unless none
        of the items is in the layout (then the stored vector stands); seen items are excluded as
        for any user_id query."""
        if query.recent is None:
            return self._resolve(query, snapshot, where)
        recent_ids = list(dict.fromkeys(item for item, _ in query.recent))
        vector = await self._fold_in(query, recent_ids, snapshot, where)
        exclude = list(dict.fromkeys([*query.exclude, *recent_ids]))
        if vector is None:
            return self._resolve(replace(query, exclude=exclude), snapshot, where)
        exclusions = snapshot.exclusions(query.user_id, query.exclude_seen, exclude)
        return _Query(vector, query.k, exclusions, exclude)

    async def _fold_in(
        self, query: RecommendQuery, recent_ids: list[str], snapshot: Snapshot, where: str
    ) -> Vector | None:
        assert query.recent is not None
        model = snapshot.users.fold_in
        if model is None:
            raise ApiError(
                409,
                "fold_in_unavailable",
                f"{where}recent_items: layout {snapshot.layout} (version {snapshot.version}) was built "
                "without fold-in (rebuild it from embeddings with users to fold in recent items)",
            )
        found = await self._item_vectors(snapshot, recent_ids)
        rows = [(found[item], weight) for item, weight in query.recent if item in found]
        if not rows:
            if query.user_id is not None and query.user_id in snapshot.users:
                return None
            raise ApiError(
                404,
                "unknown_items",
                f"{where}recent_items: none of the {len(recent_ids)} items is in index version "
                f"{snapshot.version}",
            )
        default = model.spec.default_weight
        vectors = np.stack([vector for vector, _ in rows])
        weights = np.array([default if weight is None else weight for _, weight in rows], dtype=np.float64)
        return fold_in(model, vectors, weights)

    async def _item_vectors(self, snapshot: Snapshot, item_ids: list[str]) -> dict[str, Vector]:
        """The stored vectors of `item_ids` held by the layout (`/v1/similar`'s item, a fold-in's
        recent items), each from its owning shard (all shards at once), from a replica that has
        the writes the request must see (`_read_floor`); 503 `replicas_behind` when no replica
        of an owning shard has them yet, as for a search, else 503 when an owning shard has no
        live replica, whatever the consistency policy (a fold-in from some of the items would
        silently be another user)."""
        wanted = self._read_floor(snapshot)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        groups = [(shard, ids) for shard, ids in enumerate(snapshot.split_by_shard(item_ids)) if ids]
        outcomes = await asyncio.gather(
            *(
                snapshot.channels[shard].fetch_vectors(
                    ids, deadline, wanted.sequences.get(shard, 0), wanted.leaders_only
                )
                for shard, ids in groups
            ),
            return_exceptions=True,
        )
        found: dict[str, Vector] = {}
        failures: dict[int, str] = {}
        for (shard, _), outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, ShardFailedError):
                failures[shard] = outcome.reason
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                found.update(outcome)
        if failures:
            raise self._behind(failures) or self._unavailable(snapshot, failures)
        return found

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
            check_dimension(vector, snapshot.dimension, f"{where}{query.vector_field}")
        exclusions = snapshot.exclusions(query.user_id, query.exclude_seen, query.exclude)
        return _Query(vector, query.k, exclusions, query.exclude)

    async def _answer(
        self, snapshot: Snapshot, queries: Sequence[_Query]
    ) -> tuple[list[tuple[list[str], Scores]], bool, int]:
        return await self._scatter_merge(snapshot, _prepare(queries, snapshot.shards), len(queries))

    async def _scatter_merge(
        self, snapshot: Snapshot, blocks: list[_Prepared], count: int
    ) -> tuple[list[tuple[list[str], Scores]], bool, int]:
        """Scatter the blocks to every shard, apply the consistency policy, merge.
        Returns (per query: ids and scores; partial; shards answered)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        channels = snapshot.channels
        gather = Gather(len(blocks), len(channels), future)
        deadline = loop.time() + self.timeout_s
        wanted = self._read_floor(snapshot)
        for index, block in enumerate(blocks):
            for shard, channel in enumerate(channels):
                exclude = block.exclude_by_shard[shard]
                channel.submit(
                    Block(
                        gather,
                        index,
                        block.vectors,
                        block.k,
                        exclude,
                        deadline,
                        wanted.sequences.get(shard, 0),
                        wanted.leaders_only,
                    )
                )
        # This request's own deadline, whatever batches its blocks joined.
        timer = loop.call_at(deadline, gather.expire)
        try:
            await future
        finally:
            timer.cancel()
        partial, answered = self._coverage(gather, snapshot)
        if len(blocks) == 1 and blocks[0].members == list(range(count)):
            block = blocks[0]
            parts = [part for part in gather.parts[0] if part is not None]
            return merge_block(parts, block.k, block.explicit), partial, answered
        results: list[tuple[list[str], Scores]] = [([], _NO_SCORES)] * count
        for index, block in enumerate(blocks):
            parts = [part for part in gather.parts[index] if part is not None]
            merged = merge_block(parts, block.k, block.explicit)
            for member, result in zip(block.members, merged, strict=True):
                results[member] = result
        return results, partial, answered

    def _coverage(self, gather: Gather, snapshot: Snapshot) -> tuple[bool, int]:
        """(partial, shards answered); raises 503 when the policy does not allow a partial answer."""
        if not gather.failures:
            return False, snapshot.shards
        refused = sorted(shard for shard, reason in gather.failures.items() if reason == "rejected")
        if refused:
            # Only this request's own queries were refused (dispatch retries refused batches
            # block by block): a problem with the request, whatever the consistency policy.
            raise ApiError(
                400,
                "query_rejected",
                f"shard {refused[0]} of layout {snapshot.layout} refused this request's queries; "
                "see the router's documented limits",
            )
        answered = gather.answered_shards()
        behind = self._behind(gather.failures)
        if behind is not None:
            # Read-your-writes asked for: a partial answer would silently drop the client's write.
            raise behind
        if self.strict or answered == 0:
            raise self._unavailable(snapshot, gather.failures)
        self.metrics.partial_answers.inc()
        return True, answered

    @staticmethod
    def _read_floor(snapshot: Snapshot) -> ReadFloor:
        """The writes this request must see (its X-Shardrec-Min-Sequence) on `snapshot`'s layout,
        for every read of it: the item lookups and the search. Parsed where a read is about to
        leave (cheap, and nothing without the header), so a malformed token is a 400 before any
        shard is asked."""
        return parse_min_sequence(min_sequence_header.get(), snapshot.shards, snapshot.layout)

    @staticmethod
    def _behind(failures: dict[int, str]) -> ApiError | None:
        """503 `replicas_behind` when some shard failed because no replica has applied the
        writes the request must see yet (`ShardChannel._unreadable`): retrying shortly helps,
        unlike a dead shard."""
        behind = sorted(shard for shard, reason in failures.items() if reason == "behind")
        if not behind:
            return None
        return ApiError(
            503,
            "replicas_behind",
            f"no live replica of shard {behind[0]} has applied the writes this request must see "
            "(its X-Shardrec-Min-Sequence, or the newest write acknowledged here) yet; retry shortly",
            {"Retry-After": "1"},
        )

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
        return encode_one(result, snapshot.version, partial, answered, snapshot.shards)


def _prepare(queries: Sequence[_Query], shards: int) -> list[_Prepared]:
    """The blocks of resolved queries, with their vectors and exclusions laid out for scatter."""
    prepared = []
    for block in _blocks(queries):
        members = [queries[m] for m in block.members]
        if len(members) == 1:
            vectors = members[0].vector[None, :]
        else:
            vectors = np.stack([query.vector for query in members])
        exclude_by_shard: list[list[list[str]] | None] = []
        for shard in range(shards):
            exclude: list[list[str]] | None = [query.exclusions[shard] for query in members]
            exclude_by_shard.append(exclude if any(exclude) else None)  # type: ignore[arg-type]
        explicit = [query.exclude for query in members]
        prepared.append(
            _Prepared(block.k, block.members, vectors, exclude_by_shard, explicit if any(explicit) else None)
        )
    return prepared


def _plain_blocks(batch: VectorBatch, shards: int) -> list[_Prepared]:
    """The blocks of a `VectorBatch`: rows grouped by k in order of first appearance, as `_blocks`
    groups them; nothing to exclude."""
    ks = batch.ks
    nothing: list[list[list[str]] | None] = [None] * shards
    first = ks[0]
    if all(k == first for k in ks):
        return [_Prepared(first, list(range(len(ks))), batch.vectors, nothing, None)]
    by_k: dict[int, list[int]] = {}
    for position, k in enumerate(ks):
        by_k.setdefault(k, []).append(position)
    return [_Prepared(k, members, batch.vectors[members], nothing, None) for k, members in by_k.items()]


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
