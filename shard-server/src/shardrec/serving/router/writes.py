"""Item writes through the router: `PUT /v1/items/{id}` and `DELETE /v1/items/{id}`.

A write goes to the shard that owns the id (the build's partition function). The shard's
sequence authority is its leader replica, the one of lowest ordinal (docs/design.md, "Item
writes"): the router asks it to number, log (append + fsync) and apply the write, then sends the
numbered record to every other replica not known dead and answers once the acknowledgement policy
is met: `all` ready replicas, or a `majority` of them (the leader counts). A follower that
missed records answers 409 with the sequence it applied; the router then reads the missing
records from the leader's log and sends them first (the same catch-up the probe loop runs for a
replica that came back).

Read-your-writes: the answer carries the sequence and a token `<layout>/<shard>:<sequence>`; a read
that sends it back (header X-Shardrec-Min-Sequence) is answered only by replicas that applied it,
or, when the token names an older layout, only by the shards' leaders (`ReadFloor`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import orjson

from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.write_log import id_problem
from shardrec.serving.router.dispatch import ShardChannel
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.parsing import float32_from_b64
from shardrec.serving.router.replicas import Replica, leader
from shardrec.serving.router.shard_protocol import ErrorKinds, ShardClientLike, WriterClientLike
from shardrec.serving.router.snapshot import Snapshot

log = logging.getLogger("shardrec.router")

Ack = Literal["all", "majority"]
MIN_SEQUENCE_HEADER = b"x-shardrec-min-sequence"
"""Read-your-writes: a client echoes the token of its write (`<layout>/<shard>:<sequence>[,...]`) here."""
min_sequence_header: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "min_sequence_header", default=None
)
"""The request's X-Shardrec-Min-Sequence, for the service (set by the gate around its work)."""
MAX_METADATA_BYTES = 16 * 1024
CATCH_UP_BATCH = 512
MAX_WRITE_BATCH = 256
"""Writes of one shard sent to its leader in one request (the shard takes up to 1024)."""
CATCH_UP_ROUNDS = 64


@dataclass(frozen=True)
class WritePolicy:
    ack: Ack = "all"
    timeout_s: float = 5.0
    enabled: bool = True
    """False: every write is refused (`writes_disabled`) before a shard is asked."""


def leader_of(channel: ShardChannel) -> Replica[ShardClientLike]:
    """The shard's sequence authority (`replicas.leader`)."""
    return leader(channel.replicas)


def acks_needed(ack: Ack, ready: int) -> int:
    """Replicas (the leader included) that must hold a write before it is acknowledged."""
    return ready if ack == "all" else ready // 2 + 1


def write_token(layout: str, shard: int, sequence: int) -> str:
    """What a write's answer gives the client to read it back: `<layout>/<shard>:<sequence>`.
    Sequences are per layout (each layout's shards number their own logs), so the token names it."""
    return f"{layout}/{shard}:{sequence}"


@dataclass(frozen=True)
class ReadFloor:
    """What a read must see. `sequences`: per shard of the serving layout, the write-log sequence a
    replica must have applied. `leaders_only`: a token named another layout, whose sequences mean
    nothing here; the hand-over before a switch forwarded every write an older layout acknowledged
    to this layout's leaders (docs/design.md, "Fold-in at the next version"), so only a shard's
    leader is sure to hold it."""

    sequences: dict[int, int] = field(default_factory=dict)
    leaders_only: bool = False


NO_FLOOR = ReadFloor()


def parse_min_sequence(value: bytes | None, shards: int, layout: str) -> ReadFloor:
    """`X-Shardrec-Min-Sequence: L-v7/0:12,L-v7/3:40` (the tokens of writes, `<layout>/` optional
    for the serving layout) as a `ReadFloor` for the serving `layout`; malformed parts are a 400."""
    if not value:
        return NO_FLOOR
    wanted: dict[int, int] = {}
    leaders_only = False
    for part in value.decode("latin-1").split(","):
        named, slash, token = part.strip().rpartition("/")
        shard_text, sep, seq_text = token.partition(":")
        if (
            not sep
            or not shard_text.isdigit()
            or not seq_text.isdigit()
            or (slash and (not named or id_problem(named) is not None))
        ):
            raise ApiError(
                400,
                "bad_min_sequence",
                "X-Shardrec-Min-Sequence must be '<layout>/<shard>:<sequence>[,...]', as a write's token",
            )
        shard, seq = int(shard_text), int(seq_text)
        if slash and named != layout:
            leaders_only = True
            continue
        if shard >= shards:
            raise ApiError(400, "bad_min_sequence", f"shard {shard} does not exist (the layout has {shards})")
        wanted[shard] = max(wanted.get(shard, 0), seq)
    return ReadFloor(wanted, leaders_only)


def check_item_id(item_id: str, max_length: int) -> None:
    problem = id_problem(item_id)
    if problem is None and len(item_id) > max_length:
        problem = f"item id longer than {max_length} characters"
    if problem is not None:
        raise ApiError(400, "bad_item_id", f"{item_id[:80]!r}: {problem}")


def parse_upsert(body: bytes, dimension: int) -> dict[str, Any]:
    """The body of `PUT /v1/items/{id}`: {"vector": [d numbers], "metadata": {...}?}, or the
    vector as "vector_b64" (base64 of little-endian float32, as queries may give it)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be an object with 'vector'")
    unknown = sorted(set(data) - {"vector", "vector_b64", "metadata"})
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field(s): {', '.join(unknown)}")
    vector = _vector_of(data)
    if len(vector) != dimension:
        raise ApiError(
            400,
            "bad_dimension",
            f"vector has {len(vector)} numbers; the active layout's dimension is {dimension}",
        )
    if not all(math.isfinite(float(x)) for x in vector):
        raise ApiError(400, "bad_vector", "vector contains NaN or inf")
    op: dict[str, Any] = {"op": "upsert", "vector": [float(x) for x in vector]}
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ApiError(422, "invalid_request", "metadata must be an object")
        if len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
            raise ApiError(413, "metadata_too_large", f"metadata is larger than {MAX_METADATA_BYTES} bytes")
        op["metadata"] = metadata
    return op


def _vector_of(data: dict[str, Any]) -> list[Any]:
    if "vector_b64" in data:
        if "vector" in data:
            raise ApiError(422, "invalid_request", "give exactly one of vector and vector_b64")
        decoded = float32_from_b64(data["vector_b64"])
        if decoded is None:
            raise ApiError(
                422,
                "invalid_request",
                "vector_b64: must be base64 (RFC 4648, with padding) of little-endian float32 numbers, "
                "4 bytes each",
            )
        return decoded.tolist()  # type: ignore[no-any-return]
    vector = data.get("vector")
    if not isinstance(vector, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector
    ):
        raise ApiError(422, "invalid_request", "vector: a list of numbers is required (or vector_b64)")
    return vector


@dataclass(frozen=True)
class _Outcome:
    seq: int
    acked: int  # followers that hold it
    ready: int  # ready replicas, the leader included
    needed: int  # followers the policy needed


@dataclass
class _PendingWrite:
    op: dict[str, Any]
    future: asyncio.Future[_Outcome]


class ItemWriter:
    """Writes to one shard leave in batches: while the leader numbers and the followers take one
    batch, the writes that arrive wait and go together in the next (one fsync per replica for
    the whole batch). A lone write waits for nothing."""

    def __init__(self, policy: WritePolicy, errors: ErrorKinds, metrics: RouterMetrics) -> None:
        self.policy = policy
        self.errors = errors
        self.metrics = metrics
        self._background: set[asyncio.Task[Any]] = set()
        self._queues: dict[ShardChannel, list[_PendingWrite]] = {}

    async def write(self, snapshot: Snapshot, item_id: str, op: dict[str, Any]) -> bytes:
        """Number, log and replicate one write; the JSON answer once the policy is met."""
        shard = shard_of(item_id, snapshot.shards)
        channel = snapshot.channels[shard]
        leader = leader_of(channel)
        kind = op["op"]
        if leader.known_dead:
            self.metrics.writes.labels(kind, "unavailable").inc()
            raise _unavailable(f"the leader of shard {shard} ({leader.name}) is not ready")
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(channel)
        if queue is None:
            self._queues[channel] = [_PendingWrite({**op, "id": item_id}, future)]
            task = asyncio.create_task(self._flush(channel))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            queue.append(_PendingWrite({**op, "id": item_id}, future))
        try:
            outcome = await future
        except ApiError as error:
            self.metrics.writes.labels(kind, "rejected" if error.status < 500 else "unavailable").inc()
            raise
        token = write_token(snapshot.layout, shard, outcome.seq)
        if outcome.acked < outcome.needed:
            self.metrics.writes.labels(kind, "not_acknowledged").inc()
            raise _unavailable(
                f"write {token} is logged by the leader but only {outcome.acked + 1} of "
                f"{outcome.ready} ready replicas hold it ({self.policy.ack} needed); "
                "retrying the same write is safe"
            )
        self.metrics.writes.labels(kind, "acknowledged").inc()
        channel.acked_sequence = max(channel.acked_sequence, outcome.seq)
        return orjson.dumps(
            {
                "item_id": item_id,
                "op": kind,
                "shard": shard,
                "sequence": outcome.seq,
                "token": token,
                "acknowledged_by": outcome.acked + 1,
                "ready_replicas": outcome.ready,
                "layout": snapshot.layout,
            }
        )

    async def _flush(self, channel: ShardChannel) -> None:
        """Send the shard's queued writes, batch after batch, until none waits (one batch of a
        shard in flight at a time: the leader numbers in arrival order anyway)."""
        while True:
            queue = self._queues.get(channel)
            if not queue:
                self._queues.pop(channel, None)
                return
            batch, rest = queue[:MAX_WRITE_BATCH], queue[MAX_WRITE_BATCH:]
            self._queues[channel] = rest
            try:
                await self._send(channel, batch)
            except Exception as exc:  # every waiting write must hear, or it would hang
                log.exception("item write batch failed", exc_info=exc)
                _fail(batch, _unavailable(f"the write failed: {exc}"))

    async def _send(self, channel: ShardChannel, batch: list[_PendingWrite]) -> None:
        leader = leader_of(channel)
        shard = channel.shard
        try:
            sequences = await _writer(leader).lead_writes([p.op for p in batch], self.policy.timeout_s)
        except self.errors.rejected as exc:
            if getattr(exc, "code", "") == self.errors.no_write_log:
                _fail(batch, writes_disabled())
                return
            if len(batch) > 1:  # find whose: one client's bad write never fails the others
                for pending in batch:
                    await self._send(channel, [pending])
                return
            _fail(batch, ApiError(400, "write_rejected", f"shard {shard} refused the write: {exc}"))
            return
        except self.errors.unavailable as exc:
            _fail(batch, _unavailable(f"the leader of shard {shard} did not take the write: {exc}"))
            return
        leader.applied_sequence = max(leader.applied_sequence, *sequences)
        records = [{**p.op, "seq": seq} for p, seq in zip(batch, sequences, strict=True)]
        followers = [r for r in channel.replicas if r is not leader and not r.known_dead]
        needed = acks_needed(self.policy.ack, 1 + len(followers)) - 1
        acked = await self._replicate(leader, followers, records, needed)
        for pending, seq in zip(batch, sequences, strict=True):
            if not pending.future.done():
                pending.future.set_result(_Outcome(seq, acked, 1 + len(followers), needed))

    async def _replicate(
        self,
        leader: Replica[ShardClientLike],
        followers: Sequence[Replica[ShardClientLike]],
        records: list[dict[str, Any]],
        needed: int,
    ) -> int:
        """Send `records` to every follower; return once `needed` of them hold them all or every
        follower has answered (the rest go on in the background). How many hold them."""
        if not followers:
            return 0
        target = records[-1]["seq"]
        tasks = [
            asyncio.create_task(self.bring_up_to(leader, follower, records, target)) for follower in followers
        ]
        acked = 0
        pending: set[asyncio.Task[bool]] = set(tasks)
        while pending and acked < needed:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            acked += sum(1 for task in done if task.result())
        for task in pending:
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return acked

    async def bring_up_to(
        self,
        leader: Replica[ShardClientLike],
        follower: Replica[ShardClientLike],
        records: list[dict[str, Any]],
        target: int,
    ) -> bool:
        """Send `records` to `follower`; on a gap, read what it misses from the leader's log and
        send that first. True once the follower applied `target`."""
        client = _writer(follower)
        gap = self.errors.gap
        for _ in range(CATCH_UP_ROUNDS):
            try:
                if records:
                    applied = await client.replicate(records, self.policy.timeout_s)
                    follower.applied_sequence = max(follower.applied_sequence, applied)
                    if applied >= target:
                        return True
                after = follower.applied_sequence
            except Exception as exc:
                if gap is None or not isinstance(exc, gap):
                    log.warning("replicating to %s failed: %s", follower.name, exc)
                    return False
                after = int(getattr(exc, "applied", 0))
                follower.applied_sequence = after
            try:
                records = await _writer(leader).read_log(after, CATCH_UP_BATCH, self.policy.timeout_s)
            except Exception as exc:
                log.warning("reading the log of %s failed: %s", leader.name, exc)
                return False
            if not records:
                return False  # the leader has nothing after `after`: it is behind `target` itself
        return False

    async def catch_up(self, channel: ShardChannel) -> None:
        """Bring the ready replicas of a shard that are behind its leader (as last probed) up to
        the leader's applied sequence; the probe loop calls it."""
        leader = leader_of(channel)
        if leader.known_dead:
            return
        behind = [
            r
            for r in channel.replicas
            if r is not leader and not r.known_dead and r.applied_sequence < leader.applied_sequence
        ]
        if behind:
            await asyncio.gather(
                *(self.bring_up_to(leader, r, [], leader.applied_sequence) for r in behind),
                return_exceptions=True,
            )

    async def drain(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


def _fail(batch: list[_PendingWrite], error: ApiError) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)


def _writer(replica: Replica[ShardClientLike]) -> WriterClientLike:
    client = replica.client
    if not hasattr(client, "lead_writes"):
        raise ApiError(501, "writes_unsupported", "this router's shard client cannot write")
    return cast(WriterClientLike, client)


def writes_disabled() -> ApiError:
    """A write to a cluster whose item writes are off (`spec.writes.enabled: false`): known from
    the router config (`writes.enabled`, the local runtime) or from a shard that keeps no log (on
    Kubernetes a writes-off layout's shards have no log volume)."""
    return ApiError(
        403,
        "writes_disabled",
        "item writes are off for this cluster: set spec.writes.enabled: true to PUT or DELETE items",
    )


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "write_unavailable", message, {"Retry-After": "1"})
