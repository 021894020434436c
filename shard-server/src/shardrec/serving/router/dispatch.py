"""One shard of the serving snapshot: coalesces queries into batched shard requests and sends each
batch to one replica, with power-of-two-choices, hedging, retries and ejection.

Coalescing: a query joins its shard's pending batch; the batch leaves when the event loop has run
everything that is ready (`call_soon`), so a lone request waits for nothing. While
`max_batches_in_flight` batches of the shard are on the wire, queries keep joining the next batch:
under load batches grow by themselves and the per-query cost (HTTP, framing, the shard's own
per-request work) is amortised, which is where a Python router and shard spend their time.

Every batch finishes (answered or failed) by the latest deadline among its queries; each request
stops waiting at its own deadline (`Gather.expire`). A batch the shard refuses (4xx) is retried
block by block, so only the blocks the shard refuses on their own fail ("rejected").
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shardrec.serving.router.gather import Gather
from shardrec.serving.router.hedging import HedgeBudget
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.replicas import Replica, choose_replica, leader
from shardrec.serving.router.shard_protocol import ErrorKinds, ShardAnswerLike, ShardClientLike

Vector = npt.NDArray[np.float32]
log = logging.getLogger("shardrec.router")


@dataclass(frozen=True)
class DispatchPolicy:
    max_retries: int
    hedging_enabled: bool
    hedge_after_s: float
    max_batches_in_flight: int
    max_queries_per_batch: int


@dataclass(slots=True)
class Block:
    """Queries of one client request with the same k, bound for one shard. Never split: its rows
    leave in one shard request and come back as one slice of the answer."""

    gather: Gather
    index: int  # block number within the request
    vectors: Vector  # (rows, d)
    k: int
    exclude: Sequence[Sequence[str]] | None  # per row, ids held by this shard; None: nothing
    deadline: float
    min_sequence: int = 0  # read-your-writes: only replicas that applied this write-log sequence
    leader_only: bool = False  # read-your-writes of a write carried from an older layout


@dataclass(slots=True)
class _Batch:
    queries: Vector
    k: int
    exclude: Sequence[Sequence[str]] | None
    min_sequence: int = 0
    leader_only: bool = False


class ShardFailedError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ShardChannel:
    def __init__(
        self,
        *,
        shard: int,
        layout: str,
        version: str,
        replicas: list[Replica[ShardClientLike]],
        policy: DispatchPolicy,
        budget: HedgeBudget,
        errors: ErrorKinds,
        metrics: RouterMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self.shard = shard
        self.layout = layout
        self.version = version
        self.replicas = replicas
        self.policy = policy
        self.budget = budget
        self.errors = errors
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.acked_sequence = 0
        """The newest write to this shard that this router acknowledged: no read goes to a replica
        behind it (a deleted item stays deleted for every later read through this router)."""
        self.zone: str | None = None  # the router's zone: replicas there are preferred
        self.ef_search = 0
        """HNSW ef sent with every shard request (the topology's efSearch; 0: the shard's default).
        The manager assigns it when a topology changes it: later batches use the new value."""
        self._pending: dict[int, list[Block]] = {}
        self._flush_scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        label = str(shard)
        self._m_ok = metrics.shard_request_seconds.labels(label, "ok")
        self._m_failed = metrics.shard_request_seconds.labels(label, "failed")
        self._m_retries = metrics.retries.labels(label)
        self._m_hedges = metrics.hedges.labels(label)
        self._m_hedges_won = metrics.hedges_won.labels(label)
        self._m_batch = metrics.shard_batch_queries
        self._m_zone = {
            locality: metrics.shard_requests_by_zone.labels(label, locality)
            for locality in ("same", "other", "unknown")
        }

    def _choose(self, tried: list[Replica[ShardClientLike]]) -> Replica[ShardClientLike] | None:
        """The replica for the next attempt (`choose_replica`, preferring the router's zone),
        counted by zone locality: same, other, or unknown (either zone not known)."""
        replica = choose_replica(self.replicas, time.monotonic(), self.rng, tried, self.zone)
        if replica is not None:
            if self.zone is None or replica.zone is None:
                self._m_zone["unknown"].inc()
            else:
                self._m_zone["same" if replica.zone == self.zone else "other"].inc()
        return replica

    # --- coalescing ----------------------------------------------------------------------------

    def submit(self, item: Block) -> None:
        """Queue a block for this shard; it leaves with the next batch (see the module doc)."""
        pending = self._pending.get(item.k)
        if pending is None:
            pending = self._pending[item.k] = []
        pending.append(item)
        if not self._flush_scheduled and self._in_flight < self._batch_limit():
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _batch_limit(self) -> int:
        return self.policy.max_batches_in_flight * max(1, len(self.replicas))

    def _flush(self) -> None:
        self._flush_scheduled = False
        limit = self._batch_limit()
        largest = self.policy.max_queries_per_batch
        for k in list(self._pending):
            items = self._pending[k]
            while items and self._in_flight < limit:
                rows = len(items[0].vectors)
                taken = 1
                while taken < len(items) and rows + len(items[taken].vectors) <= largest:
                    rows += len(items[taken].vectors)
                    taken += 1
                batch, items = items[:taken], items[taken:]
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._run_batch(batch, k))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if items:
                self._pending[k] = items
            else:
                del self._pending[k]

    def _batch_done(self) -> None:
        self._in_flight -= 1
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run_batch(self, items: list[Block], k: int) -> None:
        try:
            if len(items) == 1:
                queries = items[0].vectors
                exclude = items[0].exclude
            else:
                queries = np.concatenate([item.vectors for item in items])
                exclude = None
                if any(item.exclude is not None for item in items):
                    exclude = []
                    for item in items:
                        exclude.extend(item.exclude if item.exclude is not None else [()] * len(item.vectors))
            self._m_batch.observe(len(queries))
            # The batch may run until its latest member's deadline; each request gives up at its
            # own deadline anyway (`Gather.expire`, armed by the service).
            deadline = max(item.deadline for item in items)
            min_sequence = max(item.min_sequence for item in items)
            leader_only = any(item.leader_only for item in items)
            try:
                answer = await self._search(_Batch(queries, k, exclude, min_sequence, leader_only), deadline)
            except Exception as exc:
                if isinstance(exc, ShardFailedError) and exc.reason == "rejected" and len(items) > 1:
                    # The shard refused the batch for something in it: find whose, so one client's
                    # bad query never fails the others coalesced with it.
                    await asyncio.gather(*(self._run_alone(item, k) for item in items))
                    return
                self._fail(items, exc)
                return
            ids, scores, counts = answer.ids, answer.scores, answer.counts
            if len(items) == 1:
                items[0].gather.deliver(items[0].index, self.shard, (ids, scores, counts))
                return
            start = 0
            for item in items:
                end = start + len(item.vectors)
                item.gather.deliver(
                    item.index, self.shard, (ids[start:end], scores[start:end], counts[start:end])
                )
                start = end
        finally:
            self._batch_done()

    async def _run_alone(self, item: Block, k: int) -> None:
        """One block of a refused batch on its own, by its own deadline."""
        try:
            answer = await self._search(
                _Batch(item.vectors, k, item.exclude, item.min_sequence, item.leader_only), item.deadline
            )
        except Exception as exc:
            self._fail([item], exc)
            return
        item.gather.deliver(item.index, self.shard, (answer.ids, answer.scores, answer.counts))

    def _fail(self, items: list[Block], exc: Exception) -> None:
        # Whatever went wrong, every waiting request must hear about it, or it would hang.
        if isinstance(exc, ShardFailedError):
            reason = exc.reason
        else:
            reason = "error"
            log.error("shard %d: batch failed unexpectedly", self.shard, exc_info=exc)
        self.metrics.shard_failures.labels(str(self.shard), reason).inc()
        for item in items:
            item.gather.fail(item.index, self.shard, reason)

    # --- one batch: replica choice, hedging, retries ------------------------------------------

    def _unreadable(self, min_sequence: int, leader_only: bool) -> tuple[list[Replica[ShardClientLike]], str]:
        """Read-your-writes, for every read of this shard (searches and item-vector lookups alike):
        the replicas a read must not go to, and the reason it fails if no other is left. Never
        tried: replicas behind the write the client asked to see (`min_sequence`, from its
        token), or behind the newest write this router acknowledged for the shard (so a deleted
        item stays deleted for every later read through this router); nor, for a write carried
        from an older layout (`leader_only`), any replica but the leader. "behind" only when
        that rule left none, so the client hears that waiting helps (503 `replicas_behind`)."""
        floor = max(min_sequence, self.acked_sequence)
        first = leader(self.replicas) if leader_only and self.replicas else None
        skipped = [
            r for r in self.replicas if r.applied_sequence < floor or (first is not None and r is not first)
        ]
        return skipped, "behind" if skipped and len(skipped) == len(self.replicas) else "no_replica"

    async def _search(self, batch: _Batch, deadline: float) -> ShardAnswerLike:
        loop = asyncio.get_running_loop()
        tried, last_reason = self._unreadable(batch.min_sequence, batch.leader_only)
        attempts = 1 + self.policy.max_retries
        try:
            async with asyncio.timeout_at(deadline):
                for attempt in range(attempts):
                    replica = self._choose(tried)
                    if replica is None:
                        break
                    if attempt:
                        self._m_retries.inc()
                    remaining = deadline - loop.time()
                    try:
                        return await self._attempt(replica, tried, batch, remaining)
                    except ShardFailedError as failure:
                        if failure.reason == "rejected":
                            raise
                        last_reason = failure.reason
        except TimeoutError:
            raise ShardFailedError("deadline") from None
        raise ShardFailedError(last_reason)

    async def _attempt(
        self,
        primary: Replica[ShardClientLike],
        tried: list[Replica[ShardClientLike]],
        batch: _Batch,
        timeout_s: float,
    ) -> ShardAnswerLike:
        """One try on `primary`, hedged on a second replica if it is slow. Adds what it used to
        `tried`; raises ShardFailedError if no replica it used answered."""
        tried.append(primary)
        self.budget.on_request()
        policy = self.policy
        if not policy.hedging_enabled or len(self.replicas) < 2 or timeout_s <= policy.hedge_after_s:
            return await self._call(primary, batch, timeout_s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = loop.create_task(self._call(primary, batch, timeout_s))
        pending: set[asyncio.Task[ShardAnswerLike]] = {first}
        try:
            done, pending = await asyncio.wait(pending, timeout=policy.hedge_after_s)
            if done:
                return first.result()
            second_replica = self._choose(tried)
            if second_replica is None or not self.budget.try_spend():
                pending = set()
                return await first
            tried.append(second_replica)
            self._m_hedges.inc()
            remaining = timeout_s - (loop.time() - started)
            second = loop.create_task(self._call(second_replica, batch, remaining))
            pending.add(second)
            failure: ShardFailedError | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        if task is second:
                            self._m_hedges_won.inc()
                        return task.result()
                    if not isinstance(exc, ShardFailedError) or exc.reason == "rejected":
                        raise exc
                    failure = exc
            raise failure or ShardFailedError("unavailable")
        finally:
            # The loser of a hedge race, or everything when the deadline cancels us.
            for task in pending:
                task.cancel()

    async def _call(
        self,
        replica: Replica[ShardClientLike],
        batch: _Batch,
        timeout_s: float,
    ) -> ShardAnswerLike:
        replica.started()
        started = time.monotonic()
        try:
            answer = await replica.client.search(
                batch.queries, batch.k, batch.exclude, timeout_s, ef_search=self.ef_search
            )
        except asyncio.CancelledError:
            replica.cancelled()
            raise
        except self.errors.rejected as exc:
            replica.cancelled()
            self._m_failed.observe(time.monotonic() - started)
            raise ShardFailedError("rejected") from exc
        except self.errors.unavailable as exc:
            self._replica_failed(replica, started)
            raise ShardFailedError("unavailable") from exc
        except Exception as exc:
            # A client bug on one connection must not fail the request: count it against the
            # replica and let the retry go elsewhere, but say loudly what happened.
            log.error("shard %d replica %s: unexpected client error", self.shard, replica.name, exc_info=exc)
            self._replica_failed(replica, started)
            raise ShardFailedError("unavailable") from exc
        if answer.version != self.version or answer.layout != self.layout or answer.shard != self.shard:
            # The replica serves something else than the topology says (restarted on another
            # layout?): its answer must not be mixed into this version's results.
            self._replica_failed(replica, started)
            raise ShardFailedError("wrong_version")
        now = time.monotonic()
        replica.succeeded(now - started, now)
        self._m_ok.observe(now - started)
        return answer

    def _replica_failed(self, replica: Replica[ShardClientLike], started: float) -> None:
        now = time.monotonic()
        self._m_failed.observe(now - started)
        if replica.failed(now, now - started):
            self.metrics.ejections.labels(str(self.shard), replica.name).inc()

    # --- item vectors (for /v1/similar and the fold-in of recent_items) -------------------------

    async def fetch_vector(
        self, item_id: str, deadline: float, min_sequence: int = 0, leader_only: bool = False
    ) -> Vector | None:
        """The stored vector of `item_id` from a replica of this (its owning) shard; None if the
        shard does not hold it."""
        return (await self.fetch_vectors([item_id], deadline, min_sequence, leader_only)).get(item_id)

    async def fetch_vectors(
        self, item_ids: Sequence[str], deadline: float, min_sequence: int = 0, leader_only: bool = False
    ) -> dict[str, Vector]:
        """The stored vectors of those of `item_ids` this (their owning) shard holds, from one of
        its replicas. Same replica choice, read-your-writes rule (`_unreadable`: a replica behind
        a write would answer for a deleted item, or miss a new one) and retries as searches, no
        hedging."""
        loop = asyncio.get_running_loop()
        tried, reason = self._unreadable(min_sequence, leader_only)
        try:
            async with asyncio.timeout_at(deadline):
                for _ in range(1 + self.policy.max_retries):
                    replica = self._choose(tried)
                    if replica is None:
                        break
                    tried.append(replica)
                    replica.started()
                    started = time.monotonic()
                    try:
                        found = await replica.client.item_vectors(item_ids, deadline - loop.time())
                    except asyncio.CancelledError:
                        replica.cancelled()
                        raise
                    except self.errors.rejected as exc:
                        replica.cancelled()
                        raise ShardFailedError("rejected") from exc
                    except self.errors.unavailable:
                        self._replica_failed(replica, started)
                        reason = "unavailable"
                        continue
                    if (found.version, found.layout, found.shard) != (self.version, self.layout, self.shard):
                        self._replica_failed(replica, started)
                        reason = "wrong_version"
                        continue
                    now = time.monotonic()
                    replica.succeeded(now - started, now)
                    return {
                        item: np.ascontiguousarray(vector, dtype=np.float32)
                        for item, vector in found.vectors.items()
                    }
        except TimeoutError:
            raise ShardFailedError("deadline") from None
        raise ShardFailedError(reason)

    def live_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.health == "healthy")

    async def drain(self) -> None:
        """Wait for the batches on the wire (used before closing a retired snapshot's clients)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
