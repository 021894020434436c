"""Search scheduling and index swapping of a shard server.

Requests queue on the event loop; whenever a search thread is free, everything queued (up to a
bound) goes to it as ONE knn_query call. At low load a request is dispatched on the next loop
tick (no added latency); under load requests pile up while threads are busy and are coalesced,
which amortises the Python overhead per call. An optional bounded wait trades latency for
bigger batches. hnswlib releases the GIL, so the event loop keeps reading requests meanwhile.

The served index is one reference, replaced in a single assignment after a new one is fully
loaded and warmed. A batch captures the reference when it is dispatched, so every request is
answered from exactly one index and names that index's version.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shardrec.api.commands import DEFAULT_EF_SEARCH
from shardrec.serving.cpus import usable_cpus
from shardrec.serving.index.layout import LayoutError
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.shard_index import NO_LABEL, Expectation, ShardIndex
from shardrec.serving.index.write_log import (
    WriteLog,
    WriteLogError,
    WriteRecord,
    log_path,
)
from shardrec.serving.shard.metrics import ShardMetrics
from shardrec.serving.shard.wire import encode_answer

Floats = npt.NDArray[np.float32]


class EngineError(Exception):
    code = "error"
    status = 503


class NotReadyError(EngineError):
    code = "not_ready"


class OverloadedError(EngineError):
    code = "overloaded"


class DeadlineExceededError(EngineError):
    code = "deadline_exceeded"


class WriteRejectedError(EngineError):
    """A write that does not fit this shard (dimension, owner, sequence)."""

    code = "write_rejected"
    status = 400


class NoWriteLogError(EngineError):
    """This shard server keeps no write log (started without --write-log-dir: its cluster has
    item writes off), so it takes no write. The router answers the client 403 `writes_disabled`."""

    code = "no_write_log"  # client.NO_WRITE_LOG
    status = 409


class SequenceGapRefusedError(EngineError):
    """A replicated record does not follow the last applied one: the sender must send the gap."""

    code = "sequence_gap"
    status = 409

    def __init__(self, applied: int, got: int) -> None:
        super().__init__(f"sequence {got} does not follow the applied {applied}")
        self.applied = applied


class WritesFencedError(EngineError):
    """This replica was told to take no new writes (its layout is being replaced): retry, the
    router will send the write to the new layout once it switched."""

    code = "writes_fenced"


class LoadRejectedError(EngineError):
    """A layout that fails verification or does not fit the one being served."""

    code = "layout_rejected"
    status = 409


@dataclass
class _Pending:
    queries: Floats
    k: int
    exclude: list[list[str]] | None
    deadline: float
    binary: bool
    enqueued: float
    future: asyncio.Future[Any]
    ef_search: int = 0


@dataclass
class _WriteRequest:
    """A lead (`lead`: number `records` after the log) or replicate call waiting for its group."""

    lead: bool
    records: list[WriteRecord]
    future: asyncio.Future[Any]


MAX_GROUP_RECORDS = 4096
"""Records committed in one group at most (one append + fsync, one pause of the searches); a
request is never split, so a group holds at least one whole request."""


@dataclass(frozen=True)
class _Failed:
    """The answer of a request whose search failed alone (its batch neighbours were answered)."""

    error: Exception


@dataclass
class LoadStatus:
    state: str = "idle"  # idle | loading | failed | done
    layout_dir: str = ""
    shard: int = -1
    message: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "layout_dir": self.layout_dir,
            "shard": self.shard,
            "message": self.message,
        }


@dataclass
class EngineSettings:
    search_threads: int = field(default_factory=usable_cpus)
    """Threads running knn_query: the CPUs this process may use (affinity capped by CPU quota)."""
    max_batch_queries: int = 512
    max_pending_queries: int = 16384
    max_wait_s: float = 0.0
    ef_search: int = DEFAULT_EF_SEARCH
    write_log_dir: Path | None = None
    """Where this replica keeps its write logs (one per shard count and shard); None: no writes."""


class SearchEngine:
    def __init__(self, metrics: ShardMetrics, settings: EngineSettings) -> None:
        self.metrics = metrics
        self.settings = settings
        self.current: ShardIndex | None = None
        self.load_status = LoadStatus()
        self._pending: deque[_Pending] = deque()
        self._pending_queries = 0
        self._idle = settings.search_threads
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._timed = False  # uvloop's timer handles are not asyncio.TimerHandle: track it here
        self._searchers = ThreadPoolExecutor(settings.search_threads, thread_name_prefix="search")
        self._load_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = 0
        self._quiet = asyncio.Event()
        self._logs: dict[tuple[int, int], WriteLog] = {}
        self._writes: deque[_WriteRequest] = deque()
        self._committer: asyncio.Task[None] | None = None
        self._applier = ThreadPoolExecutor(1, thread_name_prefix="apply")
        self._applying = False
        self._settled = asyncio.Event()
        self._settled.set()
        self.writes_fenced = False
        """Refuse to lead new writes (in memory: a restart takes writes again)."""

    # --- searching --------------------------------------------------------------------------

    async def search(
        self,
        queries: Floats,
        k: int,
        exclude: list[list[str]] | None,
        timeout_ms: int,
        *,
        binary: bool,
        ef_search: int = 0,
    ) -> Any:
        """Bytes of a binary answer, or a JSON-able dict; raises an EngineError subclass.

        `ef_search`: the HNSW ef to search with (0: the index's default). The router sends the value
        of its topology, so changing efSearch restarts nothing. hnswlib keeps one ef per index, so
        a batch only holds requests of one ef, and the ef changes only while no search runs."""
        if self.current is None:
            raise NotReadyError("no index loaded yet")
        n = len(queries)
        if self._pending_queries + n > self.settings.max_pending_queries:
            self.metrics.rejected.labels("overloaded").inc()
            raise OverloadedError(f"{self._pending_queries} queries already queued")
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        now = time.monotonic()
        deadline = now + timeout_ms / 1000.0 if timeout_ms else float("inf")
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Pending(queries, k, exclude, deadline, binary, now, future, ef_search))
        self._pending_queries += n
        self._kick()
        return await future

    def _kick(self) -> None:
        if not self._idle or not self._pending:
            return
        loop = self._loop
        assert loop is not None
        full = self._pending_queries >= self.settings.max_batch_queries
        if self._scheduled is not None:
            if not (full and self._timed):
                return
            self._scheduled.cancel()  # the batch filled up before the wait ended
        if self.settings.max_wait_s > 0 and not full:
            # Bounded wait: give other requests up to max_wait_s to join this batch.
            self._scheduled, self._timed = loop.call_later(self.settings.max_wait_s, self._dispatch), True
        else:
            # One loop tick: requests whose bytes arrived in the same poll join this batch.
            self._scheduled, self._timed = loop.call_soon(self._dispatch), False

    def _take_batch(self, ef_search: int) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        now = time.monotonic()
        while self._pending:
            head = self._pending[0]
            if batch and size + len(head.queries) > self.settings.max_batch_queries:
                break
            if head.ef_search != ef_search:
                break  # one ef per batch, first come first served
            self._pending.popleft()
            self._pending_queries -= len(head.queries)
            if head.future.done():
                continue  # the client went away
            if head.deadline < now:
                self.metrics.rejected.labels("deadline").inc()
                head.future.set_exception(DeadlineExceededError("deadline passed while queued"))
                continue
            self.metrics.queue_wait.observe(now - head.enqueued)
            batch.append(head)
            size += len(head.queries)
        return batch

    def _dispatch(self) -> None:
        self._scheduled = None
        loop = self._loop
        assert loop is not None
        while self._idle and self._pending and not self._paused:
            index = self.current
            ef_search = self._pending[0].ef_search
            if index is not None and (ef_search or index.default_ef_search) != index.ef_search:
                if self._idle < self.settings.search_threads:
                    break  # searches with the old ef still run: _finish kicks again
                index.use_ef(ef_search)
            batch = self._take_batch(ef_search)
            if not batch:
                continue
            if index is None:
                for pending in batch:
                    pending.future.set_exception(NotReadyError("no index loaded"))
                continue
            self._idle -= 1
            job = self._searchers.submit(self._run_batch, index, batch)
            job.add_done_callback(partial(self._on_done, loop, batch))
        self.metrics.pending.set(self._pending_queries)

    def _on_done(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], job: Future[list[Any]]
    ) -> None:
        loop.call_soon_threadsafe(self._finish, batch, job)

    def _finish(self, batch: list[_Pending], job: Future[list[Any]]) -> None:
        self._idle += 1
        if self._idle == self.settings.search_threads:
            self._quiet.set()
        error: BaseException | None = (
            NotReadyError("the server is shutting down") if job.cancelled() else job.exception()
        )
        answers = job.result() if error is None else [None] * len(batch)
        for pending, answer in zip(batch, answers, strict=True):
            if pending.future.done():
                continue
            if error is not None:
                pending.future.set_exception(error)
            elif isinstance(answer, _Failed):
                pending.future.set_exception(answer.error)
            else:
                pending.future.set_result(answer)
        self._kick()

    def _run_batch(self, index: ShardIndex, batch: list[_Pending]) -> list[Any]:
        """In a search thread: one knn_query for the whole batch, then one answer per request. If
        the batch fails, each request is run on its own, so one request's failure (a `_Failed`
        answer) never fails the others coalesced with it."""
        try:
            return self._search_batch(index, batch)
        except Exception:
            if len(batch) == 1:
                raise
            answers: list[Any] = []
            for pending in batch:
                try:
                    answers.extend(self._search_batch(index, [pending]))
                except Exception as alone:
                    answers.append(_Failed(alone))
            return answers

    def _search_batch(self, index: ShardIndex, batch: list[_Pending]) -> list[Any]:
        started = time.perf_counter()
        if len(batch) == 1:
            queries = batch[0].queries
        else:
            queries = np.concatenate([pending.queries for pending in batch])
        k = max(pending.k for pending in batch)
        exclude: list[list[str] | None] | None = None
        if any(pending.exclude for pending in batch):
            exclude = []
            for pending in batch:
                exclude.extend(pending.exclude or [None] * len(pending.queries))
        result = index.search(queries, k, exclude, threads=1)
        answers: list[Any] = []
        version, layout = index.version.encode(), index.layout_name.encode()
        row = 0
        returned = 0
        for pending in batch:
            rows = slice(row, row + len(pending.queries))
            row += len(pending.queries)
            labels = result.labels[rows, : pending.k]
            scores = result.scores[rows, : pending.k]
            counts = np.minimum(result.counts[rows], pending.k)
            returned += int(counts.sum())
            if pending.binary:
                ids = index.ids_wire[np.maximum(labels, 0)]
                if (labels == NO_LABEL).any():
                    ids[labels == NO_LABEL] = b""
                answers.append(
                    encode_answer(index.shard, version, layout, counts, scores, ids, index.ids_ascii)
                )
            else:
                answers.append(_json_answer(index, labels, scores, counts))
        metrics = self.metrics
        metrics.search_seconds.observe(time.perf_counter() - started)
        metrics.batch_queries.observe(len(queries))
        metrics.batch_requests.observe(len(batch))
        metrics.queries.inc(len(queries))
        metrics.items_returned.inc(returned)
        return answers

    # --- writes -------------------------------------------------------------------------------

    def write_log(self, shards: int, shard: int) -> WriteLog:
        """This replica's log of `shard` of a `shards`-shard partitioning (opened once; a torn tail
        is cut on open). The log outlives layouts: a new version with the same shard count replays
        it from its base sequence."""
        if self.settings.write_log_dir is None:
            raise NoWriteLogError("this shard server keeps no write log (--write-log-dir unset)")
        key = (shards, shard)
        log = self._logs.get(key)
        if log is None:
            path = log_path(self.settings.write_log_dir, shards, shard)
            try:
                log = WriteLog(path)
            except WriteLogError as exc:
                raise EngineError(f"write log unusable: {exc}") from exc
            self._logs[key] = log
        return log

    async def _exclusive(self) -> None:
        """Stop dispatching searches and wait until none runs (hnswlib writes and resizes must not
        run beside knn_query). The caller resumes with `_resume`."""
        self._paused += 1
        while self._idle < self.settings.search_threads:
            self._quiet.clear()
            await self._quiet.wait()

    def _resume(self) -> None:
        self._paused -= 1
        if self._loop is not None:
            self._kick()

    def _apply(self, index: ShardIndex, log: WriteLog) -> int:
        """Bring `index` up to the end of `log` (no search running: in the apply thread while serving,
        on the loop thread for an index not serving yet)."""
        started, cpu = time.perf_counter(), time.thread_time()
        records = log.since(index.applied_sequence)
        try:
            applied = index.apply_writes(records)
        finally:
            self.metrics.write_apply.inc(time.perf_counter() - started)
            self.metrics.write_apply_cpu.inc(time.thread_time() - cpu)
        for record in records[-applied:] if applied else []:
            self.metrics.writes.labels(record.op).inc()
        self.metrics.write_sequence.set(index.applied_sequence)
        self.metrics.log_sequence.set(log.last_sequence)
        self.metrics.items.set(index.count)
        return applied

    def _serving_for_writes(self) -> tuple[ShardIndex, WriteLog]:
        index = self.current
        if index is None:
            raise NotReadyError("no index loaded yet")
        return index, self.write_log(index.layout.shards, index.shard)

    def _check_ops(self, index: ShardIndex, ops: list[WriteRecord]) -> None:
        for op in ops:
            owner = shard_of(op.item_id, index.layout.shards)
            if owner != index.shard:
                raise WriteRejectedError(f"item {op.item_id!r} belongs to shard {owner}, not {index.shard}")
            if op.vector is not None and len(op.vector) != index.dimension:
                raise WriteRejectedError(
                    f"item {op.item_id!r}: vector has {len(op.vector)} numbers, the index {index.dimension}"
                )

    async def lead_writes(self, ops: list[WriteRecord]) -> list[int]:
        """As the shard's sequence authority: number `ops` after the log's last sequence (their own
        `seq` is ignored), append them durably, apply them; their sequences (see `_commit`)."""
        sequences: list[int] = await self._submit(_WriteRequest(True, list(ops), self._future()))
        return sequences

    async def fence_writes(self, fenced: bool) -> int:
        """Stop (or resume) leading new writes; the log's last sequence once no write is being
        appended any more (the write lock is taken), so everything up to it is durable."""
        async with self._write_lock:
            self.writes_fenced = fenced
            _, log = self._serving_for_writes()
            return log.last_sequence

    async def replicate_writes(self, records: list[WriteRecord]) -> int:
        """As a follower: append and apply records the leader numbered. Records at or below the
        log's last sequence are skipped (a retry); a gap raises SequenceGapRefusedError."""
        applied: int = await self._submit(_WriteRequest(False, list(records), self._future()))
        return applied

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, request: _WriteRequest) -> Any:
        """Queue `request` for the next group commit; its answer once its group is durable and
        applied (or its error)."""
        self._writes.append(request)
        if self._committer is None:
            self._committer = asyncio.get_running_loop().create_task(self._commit_queued())
        return await request.future

    async def _commit_queued(self) -> None:
        """Commit the queued write requests, group after group, until none waits: the requests that
        arrive while a group is being appended, fsynced and applied form the next group."""
        try:
            while self._writes:
                async with self._write_lock:  # a load or a fence may hold it: more requests join
                    group = self._take_group()
                    try:
                        await self._commit(group)
                    except Exception as exc:  # every waiting write must hear, or it would hang
                        _fail(group, exc)
                    except BaseException:
                        _fail(group, NotReadyError("the server is shutting down"))
                        raise
        finally:
            self._committer = None
            _fail(list(self._writes), NotReadyError("the server is shutting down"))
            self._writes.clear()

    def _take_group(self) -> list[_WriteRequest]:
        group = [self._writes.popleft()]
        size = len(group[0].records)
        while self._writes and size + len(self._writes[0].records) <= MAX_GROUP_RECORDS:
            size += len(self._writes[0].records)
            group.append(self._writes.popleft())
        return group

    async def _commit(self, group: list[_WriteRequest]) -> None:
        """One append + fsync and one pause of the searches for every request of `group`, in
        arrival order: a lead's ops are numbered after the records before them (in the log or in
        the group), a replicate's records must follow them. A request that does not fit (wrong
        shard or dimension, fenced, a gap) fails alone; an append or apply error fails the group's
        accepted requests only. Answers are given once the group is durable and applied. The
        caller holds the write lock, so the index stays the serving one (a swap takes it too)."""
        try:
            index, log = self._serving_for_writes()
        except EngineError as exc:
            _fail(group, exc)
            return
        behind = index.applied_sequence < log.last_sequence
        accepted: list[tuple[_WriteRequest, Any]] = []
        gaps: list[tuple[_WriteRequest, int]] = []
        records: list[WriteRecord] = []
        following = log.last_sequence + 1
        for request in group:
            if request.future.done():
                continue  # the caller went away before its records were numbered
            try:
                fresh = self._admit(index, request, following, behind=behind)
            except _GapError as gap:
                gaps.append((request, gap.got))
                continue
            except EngineError as exc:
                request.future.set_exception(exc)
                continue
            records.extend(fresh)
            following += len(fresh)
            accepted.append((request, [r.seq for r in fresh] if request.lead else len(fresh)))
        self.metrics.write_group_requests.observe(len(accepted) + len(gaps))
        try:
            if records:
                started = time.perf_counter()
                try:
                    await asyncio.get_running_loop().run_in_executor(None, log.append, records)
                finally:
                    self.metrics.write_append.inc(time.perf_counter() - started)
            if index.applied_sequence < log.last_sequence:
                await self._apply_exclusively(index, log)
        except Exception as exc:
            _fail([request for request, _ in accepted], exc)
            raise
        finally:
            for request, got in gaps:  # the log's last sequence as it is now: what to send after
                _fail([request], SequenceGapRefusedError(log.last_sequence, got))
        for request, result in accepted:
            if not request.future.done():
                request.future.set_result(result)

    def _admit(
        self, index: ShardIndex, request: _WriteRequest, following: int, *, behind: bool
    ) -> list[WriteRecord]:
        """The records `request` adds after sequence `following - 1`: a lead's ops numbered from
        `following`, a replicate's records from `following` on (those before are held already)."""
        self._check_ops(index, request.records)
        if request.lead:
            if self.writes_fenced:
                raise WritesFencedError("this replica's layout is being replaced: it takes no new writes")
            if behind:
                raise NotReadyError("the index has not replayed the log yet")
            return [
                WriteRecord(following + n, op.op, op.item_id, op.vector, op.metadata)
                for n, op in enumerate(request.records)
            ]
        fresh = [record for record in request.records if record.seq >= following]
        for expected, record in enumerate(fresh, start=following):
            if record.seq != expected:
                raise _GapError(record.seq)
        return fresh

    async def _apply_exclusively(self, index: ShardIndex, log: WriteLog) -> None:
        """Apply the log to `index` with no search running: stop dispatching, wait until the
        running searches end, apply in the apply thread (the event loop keeps reading and queueing
        requests meanwhile), resume. Searches resume only once the apply has ended, even if this
        coroutine is cancelled."""
        loop = asyncio.get_running_loop()
        paused = time.perf_counter()
        await self._exclusive()
        self.metrics.write_barriers.inc()
        self.metrics.write_barrier_wait.inc(time.perf_counter() - paused)
        self._applying = True
        self._settled.clear()
        job = self._applier.submit(self._apply, index, log)
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._applied, paused))
        await asyncio.shield(asyncio.wrap_future(job))

    def _applied(self, paused: float) -> None:
        self._applying = False
        self._settled.set()
        self._resume()
        self.metrics.write_exclusive.inc(time.perf_counter() - paused)

    async def settled_index(self) -> ShardIndex | None:
        """The serving index once no write is being applied to it: what reads hnswlib on the event
        loop (item vectors) must wait for, since the apply runs in its own thread."""
        while self._applying:
            await self._settled.wait()
        return self.current

    def applied_sequence(self) -> int | None:
        index = self.current
        return None if index is None else index.applied_sequence

    # --- loading and swapping ---------------------------------------------------------------

    async def load(self, layout_dir: Path, shard: int, ef_search: int | None = None) -> ShardIndex:
        """Verify, load and warm `shard` of `layout_dir` off the loop, then swap it in at once.
        While a serving index exists, the new one must keep its dimension, metric, shard count."""
        async with self._load_lock:
            started = time.monotonic()
            self.load_status = LoadStatus("loading", str(layout_dir), shard, "", time.time())
            serving = self.current
            expect = Expectation()
            if serving is not None:
                expect = Expectation(serving.dimension, serving.metric, serving.layout.shards)
            loop = asyncio.get_running_loop()
            try:
                loaded = await loop.run_in_executor(
                    None,
                    lambda: ShardIndex.load(
                        layout_dir, shard, ef_search=ef_search or self.settings.ef_search, expect=expect
                    ),
                )
                if self.settings.write_log_dir is not None:
                    log = self.write_log(loaded.layout.shards, loaded.shard)
                    # Replay off the loop first (the bulk), then the rest under the write lock.
                    await loop.run_in_executor(None, loaded.apply_writes, log.since(loaded.applied_sequence))
            except (LayoutError, OSError, ValueError, EngineError) as exc:
                self.metrics.loads.labels("failed").inc()
                self.load_status.state, self.load_status.message = "failed", str(exc)
                self.load_status.finished_at = time.time()
                raise LoadRejectedError(str(exc)) from exc
            async with self._write_lock:
                if self.settings.write_log_dir is not None:
                    self._apply(loaded, self.write_log(loaded.layout.shards, loaded.shard))
                previous = self.current
                self.current = loaded  # the swap: one reference assignment on the loop thread
            self._publish_metrics(previous, loaded)
            self.metrics.load_seconds.observe(loaded.load_seconds)
            self.metrics.swap_seconds.observe(time.monotonic() - started)
            self.metrics.loads.labels("ok").inc()
            self.load_status.state, self.load_status.finished_at = "done", time.time()
            self.load_status.message = f"serving {loaded.layout_name} version {loaded.version}"
            return loaded

    def _publish_metrics(self, previous: ShardIndex | None, loaded: ShardIndex) -> None:
        if previous is not None:
            self.metrics.active.labels(previous.layout_name, previous.version, str(previous.shard)).set(0)
        self.metrics.active.labels(loaded.layout_name, loaded.version, str(loaded.shard)).set(1)
        self.metrics.items.set(loaded.count)
        self.metrics.index_bytes.set(loaded.index_bytes)
        self.metrics.ready.set(1)

    def close(self) -> None:
        self._searchers.shutdown(wait=False, cancel_futures=True)
        self._applier.shutdown(wait=True)
        for log in self._logs.values():
            log.close()


class _GapError(Exception):
    """A replicated record does not follow the records before it (raised inside `_commit`)."""

    def __init__(self, got: int) -> None:
        super().__init__(f"sequence {got} is not the next one")
        self.got = got


def _fail(requests: list[_WriteRequest], error: Exception) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(error)


def _json_answer(
    index: ShardIndex, labels: npt.NDArray[np.int64], scores: Floats, counts: npt.NDArray[np.int64]
) -> dict[str, object]:
    results = [
        [
            {"item_id": index.ids[label], "score": float(score)}
            for label, score in zip(labels[row, :count].tolist(), scores[row, :count].tolist(), strict=True)
        ]
        for row, count in enumerate(counts.tolist())
    ]
    return {
        "version": index.version,
        "layout": index.layout_name,
        "shard": index.shard,
        "results": results,
    }
