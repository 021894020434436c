"""Shard channels: coalescing, replica choice, retries, hedging, ejection, version checks, deadlines.

The replicas are in-process fakes that search real vectors exactly (so answers can be checked) and
misbehave on demand with the shard client's own exception classes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from shardrec.serving.router.dispatch import Block, DispatchPolicy, ShardChannel, ShardFailedError
from shardrec.serving.router.gather import Gather
from shardrec.serving.router.hedging import HedgeBudget
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.replicas import EjectionPolicy, Replica
from shardrec.serving.router.shard_protocol import ErrorKinds
from shardrec.serving.shard.client import ShardRejected, ShardUnavailable

ERRORS = ErrorKinds(unavailable=ShardUnavailable, rejected=ShardRejected)
Floats = npt.NDArray[np.float32]


@dataclass
class FakeAnswer:
    """Same shape as the shard client's answer: padded (n, k) arrays plus real counts."""

    ids: npt.NDArray[np.str_]
    scores: Floats
    counts: npt.NDArray[np.uint32]
    version: str
    layout: str
    shard: int


@dataclass
class FakeVectors:
    vectors: dict[str, Floats]
    missing: list[str]
    version: str
    layout: str
    shard: int


@dataclass
class FakeShard:
    """One replica of one shard: exact inner-product search over its items."""

    shard: int
    ids: list[str]
    vectors: Floats
    version: str = "v1"
    layout: str = "L1"
    mode: str = "ok"  # ok | refuse | reject | hang | wrong_version
    delay_s: float = 0.0
    ready_answer: bool = True
    gate: asyncio.Event | None = None  # when set, searches wait for it (deterministic "in flight")
    entered: asyncio.Event | None = None  # set when a search arrives
    calls: list[int] = field(default_factory=list)  # batch sizes received
    efs: list[int] = field(default_factory=list)  # ef_search of each batch
    closed: bool = False

    async def search(
        self,
        queries: Floats,
        k: int,
        exclude: Sequence[Sequence[str]] | None,
        timeout_s: float,
        *,
        ef_search: int = 0,
    ) -> FakeAnswer:
        self.calls.append(len(queries))
        self.efs.append(ef_search)
        if self.entered is not None:
            self.entered.set()
        if self.mode == "refuse":
            raise ShardUnavailable("connection refused")
        if self.mode == "reject":
            raise ShardRejected("400 bad request", status=400)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        version = "other" if self.mode == "wrong_version" else self.version
        scores = queries @ self.vectors.T
        n = len(queries)
        out_ids = np.full((n, k), "", dtype="U32")
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        counts = np.zeros(n, dtype=np.uint32)
        for row in range(n):
            banned = set(exclude[row]) if exclude else set()
            order = [i for i in np.argsort(-scores[row], kind="stable") if self.ids[i] not in banned][:k]
            out_ids[row, : len(order)] = [self.ids[i] for i in order]
            out_scores[row, : len(order)] = scores[row][order]
            counts[row] = len(order)
        return FakeAnswer(out_ids, out_scores, counts, version, self.layout, self.shard)

    async def item_vectors(self, item_ids: Sequence[str], timeout_s: float) -> FakeVectors:
        if self.mode == "refuse":
            raise ShardUnavailable("connection refused")
        found = {i: self.vectors[self.ids.index(i)] for i in item_ids if i in self.ids}
        return FakeVectors(
            found, [i for i in item_ids if i not in found], self.version, self.layout, self.shard
        )

    async def ready(self, timeout_s: float) -> bool:
        return self.ready_answer and self.mode not in ("refuse", "hang")

    async def close(self) -> None:
        self.closed = True


POLICY = DispatchPolicy(
    max_retries=2,
    hedging_enabled=True,
    hedge_after_s=0.02,
    max_batches_in_flight=2,
    max_queries_per_batch=256,
)


def channel(fakes: list[FakeShard], policy: DispatchPolicy = POLICY, budget: int = 100) -> ShardChannel:
    replicas: list[Replica[FakeShard]] = [
        Replica(name=f"r{i}", url=f"http://127.0.0.1:{9100 + i}", client=fake, policy=EjectionPolicy())
        for i, fake in enumerate(fakes)
    ]
    return ShardChannel(
        shard=fakes[0].shard,
        layout="L1",
        version="v1",
        replicas=replicas,  # type: ignore[arg-type]
        policy=policy,
        budget=HedgeBudget(budget),
        errors=ERRORS,
        metrics=RouterMetrics(),
        rng=random.Random(0),
    )


def data(count: int = 20, dim: int = 4, seed: int = 0) -> tuple[list[str], Floats]:
    rng = np.random.default_rng(seed)
    return [f"i{n}" for n in range(count)], rng.normal(size=(count, dim)).astype(np.float32)


async def ask(ch: ShardChannel, queries: Floats, k: int = 3, timeout_s: float = 1.0) -> Gather:
    """Each query as its own single-row block, as concurrent single-query requests send them."""
    loop = asyncio.get_running_loop()
    gather = Gather(len(queries), 1, loop.create_future())
    deadline = loop.time() + timeout_s
    for index, vector in enumerate(queries):
        ch.submit(Block(gather, index, vector[None, :], k, None, deadline))
    await gather.future
    return gather


def row_ids(gather: Gather, block: int, row: int = 0) -> list[str]:
    part = gather.parts[block][0]
    assert part is not None
    ids, _, counts = part
    return list(ids[row, : int(counts[row])])


def counter(metrics: RouterMetrics, name: str) -> float:
    return sum(
        sample.value
        for metric in metrics.registry.collect()
        for sample in metric.samples
        if sample.name == name
    )


def test_concurrent_queries_leave_as_one_batched_shard_request_with_exact_answers() -> None:
    ids, vectors = data()
    fake = FakeShard(0, ids, vectors)
    ch = channel([fake])
    queries = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)

    async def scenario() -> Gather:
        return await ask(ch, queries)

    gather = asyncio.run(scenario())
    assert fake.calls == [10]
    for row in range(10):
        expected = np.argsort(-(vectors @ queries[row]))[:3]
        assert row_ids(gather, row) == [ids[i] for i in expected]


def test_queries_wait_for_a_free_slot_and_then_leave_together() -> None:
    ids, vectors = data()
    fake = FakeShard(0, ids, vectors)
    policy = DispatchPolicy(0, False, 0.02, max_batches_in_flight=1, max_queries_per_batch=256)
    ch = channel([fake], policy)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fake.gate, fake.entered = asyncio.Event(), asyncio.Event()
        first = Gather(1, 1, loop.create_future())
        ch.submit(Block(first, 0, vectors[:1], 3, None, loop.time() + 5))
        await fake.entered.wait()  # the first batch is on the wire (held by the gate)
        later = Gather(5, 1, loop.create_future())
        for index in range(5):
            ch.submit(Block(later, index, vectors[index : index + 1], 3, None, loop.time() + 5))
        await asyncio.sleep(0)
        assert fake.calls == [1]  # the later blocks wait for the slot instead of leaving
        fake.gate.set()
        await asyncio.gather(first.future, later.future)
        for index in range(5):  # each block got its own rows of the shared answer
            expected = np.argsort(-(vectors @ vectors[index]))[:3]
            assert row_ids(later, index) == [ids[i] for i in expected]

    asyncio.run(scenario())
    assert fake.calls == [1, 5]


def test_batches_are_split_by_k_and_capped_in_size_without_splitting_a_block() -> None:
    ids, vectors = data()
    fake = FakeShard(0, ids, vectors)
    policy = DispatchPolicy(0, False, 0.02, max_batches_in_flight=8, max_queries_per_batch=4)
    ch = channel([fake], policy)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gather = Gather(5, 1, loop.create_future())
        deadline = loop.time() + 1
        ch.submit(Block(gather, 0, vectors[0:2], 2, None, deadline))
        ch.submit(Block(gather, 1, vectors[2:4], 2, None, deadline))
        ch.submit(Block(gather, 2, vectors[4:5], 2, None, deadline))
        ch.submit(Block(gather, 3, vectors[5:11], 2, None, deadline))  # larger than a batch: alone
        ch.submit(Block(gather, 4, vectors[11:12], 5, None, deadline))
        await gather.future
        assert row_ids(gather, 3, row=5) == [ids[i] for i in np.argsort(-(vectors @ vectors[10]))[:2]]
        assert len(row_ids(gather, 4)) == 5

    asyncio.run(scenario())
    assert sorted(fake.calls) == [1, 1, 4, 6]


def test_per_row_exclusions_reach_the_shard_aligned_with_their_rows() -> None:
    ids, vectors = data()
    fake = FakeShard(0, ids, vectors)
    ch = channel([fake])

    async def scenario() -> Gather:
        loop = asyncio.get_running_loop()
        gather = Gather(2, 1, loop.create_future())
        best = ids[int(np.argmax(vectors @ vectors[3]))]
        ch.submit(Block(gather, 0, vectors[0:1], 3, None, loop.time() + 1))
        ch.submit(Block(gather, 1, vectors[3:4], 3, [[best]], loop.time() + 1))
        await gather.future
        assert best not in row_ids(gather, 1)
        return gather

    gather = asyncio.run(scenario())
    assert row_ids(gather, 0) == [ids[i] for i in np.argsort(-(vectors @ vectors[0]))[:3]]
    assert fake.calls == [2]


def test_a_refusing_replica_is_retried_elsewhere_and_ejected() -> None:
    ids, vectors = data()
    bad, good = FakeShard(0, ids, vectors, mode="refuse"), FakeShard(0, ids, vectors)
    ch = channel([bad, good], DispatchPolicy(2, False, 0.02, 2, 256))
    ch.replicas[1].latency_ewma_s = 1.0  # p2c tries the bad one first

    async def scenario() -> None:
        for _ in range(6):
            gather = await ask(ch, vectors[:1])
            assert not gather.failures

    asyncio.run(scenario())
    assert ch.replicas[0].health == "ejected"
    assert len(bad.calls) == 2  # failure_threshold failures, then it is out of rotation
    assert counter(ch.metrics, "shardrec_router_retries_total") == 2
    assert counter(ch.metrics, "shardrec_router_ejections_total") == 1


def test_a_slow_replica_is_hedged_and_the_fast_answer_wins() -> None:
    ids, vectors = data()
    slow, fast = FakeShard(0, ids, vectors, mode="hang"), FakeShard(0, ids, vectors)
    ch = channel([slow, fast])
    ch.replicas[1].latency_ewma_s = 1.0  # make p2c pick the slow one first

    async def scenario() -> Gather:
        return await ask(ch, vectors[:1], timeout_s=2.0)

    gather = asyncio.run(scenario())
    assert not gather.failures
    assert len(slow.calls) == 1 and len(fast.calls) == 1
    assert counter(ch.metrics, "shardrec_router_hedges_total") == 1
    assert counter(ch.metrics, "shardrec_router_hedge_wins_total") == 1
    assert ch.replicas[0].outstanding == 0  # the loser was cancelled and accounted for


def test_without_hedge_budget_the_slow_replica_is_awaited() -> None:
    ids, vectors = data()
    slow, fast = FakeShard(0, ids, vectors, delay_s=0.1), FakeShard(0, ids, vectors)
    ch = channel([slow, fast], budget=0)
    ch.replicas[1].latency_ewma_s = 1.0

    asyncio.run(ask(ch, vectors[:1]))
    assert len(slow.calls) == 1 and not fast.calls
    assert counter(ch.metrics, "shardrec_router_hedges_total") == 0


def test_every_replica_down_fails_the_shard_for_every_query() -> None:
    ids, vectors = data()
    ch = channel([FakeShard(0, ids, vectors, mode="refuse"), FakeShard(0, ids, vectors, mode="refuse")])
    gather = asyncio.run(ask(ch, vectors[:3]))
    assert gather.failures == {0: "unavailable"}
    assert gather.answered_shards() == 0


def test_hanging_replicas_fail_by_the_deadline() -> None:
    ids, vectors = data()
    ch = channel([FakeShard(0, ids, vectors, mode="hang"), FakeShard(0, ids, vectors, mode="hang")])
    gather = asyncio.run(ask(ch, vectors[:1], timeout_s=0.1))
    assert gather.failures == {0: "deadline"}
    assert all(r.outstanding == 0 for r in ch.replicas)


def test_an_answer_from_another_version_is_never_used() -> None:
    ids, vectors = data()
    stale, current = FakeShard(0, ids, vectors, mode="wrong_version"), FakeShard(0, ids, vectors)
    ch = channel([stale, current], DispatchPolicy(2, False, 0.02, 2, 256))
    ch.replicas[1].latency_ewma_s = 1.0  # try the stale one first

    gather = asyncio.run(ask(ch, vectors[:1]))
    assert not gather.failures
    assert len(stale.calls) == 1 and len(current.calls) == 1


def test_a_rejected_request_is_not_retried() -> None:
    ids, vectors = data()
    first, second = FakeShard(0, ids, vectors, mode="reject"), FakeShard(0, ids, vectors, mode="reject")
    ch = channel([first, second], DispatchPolicy(2, False, 0.02, 2, 256))
    gather = asyncio.run(ask(ch, vectors[:1]))
    assert gather.failures == {0: "rejected"}
    assert len(first.calls) + len(second.calls) == 1
    assert all(r.health == "healthy" for r in ch.replicas)  # a 4xx says nothing about health


def test_item_vectors_come_from_a_live_replica() -> None:
    ids, vectors = data()
    ch = channel([FakeShard(0, ids, vectors, mode="refuse"), FakeShard(0, ids, vectors)])

    async def scenario() -> tuple[Floats | None, Floats | None]:
        deadline = asyncio.get_running_loop().time() + 1
        return await ch.fetch_vector("i3", deadline), await ch.fetch_vector("absent", deadline)

    found, missing = asyncio.run(scenario())
    assert found is not None and np.array_equal(found, vectors[3])
    assert missing is None


def test_item_vectors_skip_the_replicas_a_search_skips() -> None:
    """An item lookup (`/v1/similar`, a fold-in) follows the read-your-writes rule of searches
    (`ShardChannel._unreadable`): no replica behind the client's token, behind the newest write
    this router acknowledged, or other than the leader for a token of an older layout; "behind"
    when none is left. The replica behind lacks the item just written and looks the faster one,
    so p2c would take it whenever it may."""
    ids, vectors = data()
    current = FakeShard(0, ids, vectors)
    behind = FakeShard(0, [i for i in ids if i != "i3"], vectors[[n for n, i in enumerate(ids) if i != "i3"]])
    ch = channel([current, behind])  # r0, the leader, and r1
    ch.replicas[0].applied_sequence, ch.replicas[1].applied_sequence = 5, 3
    ch.replicas[0].latency_ewma_s = 1.0

    async def scenario() -> None:
        deadline = asyncio.get_running_loop().time() + 1
        assert await ch.fetch_vector("i3", deadline) is None  # no floor: the behind replica answers
        for _ in range(5):
            assert await ch.fetch_vector("i3", deadline, min_sequence=5) is not None
            assert await ch.fetch_vector("i3", deadline, leader_only=True) is not None
        ch.acked_sequence = 5
        assert await ch.fetch_vector("i3", deadline) is not None
        ch.acked_sequence = 0
        with pytest.raises(ShardFailedError) as failed:
            await ch.fetch_vector("i3", deadline, min_sequence=6)
        assert failed.value.reason == "behind"

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_channel_drains_before_its_clients_close(mode: str) -> None:
    ids, vectors = data()
    ch = channel([FakeShard(0, ids, vectors, mode=mode)])

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gather = Gather(1, 1, loop.create_future())
        ch.submit(Block(gather, 0, vectors[:1], 3, None, loop.time() + 0.1))
        await asyncio.sleep(0)
        await ch.drain()
        assert gather.future.done()

    asyncio.run(scenario())


def test_a_shard_whose_replicas_are_known_dead_fails_without_waiting() -> None:
    ids, vectors = data()
    fakes = [FakeShard(0, ids, vectors, mode="hang"), FakeShard(0, ids, vectors, mode="hang")]
    ch = channel(fakes)
    for replica in ch.replicas:
        replica.probed(False, 0.0)

    async def scenario() -> tuple[Gather, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        gather = await ask(ch, vectors[:2], timeout_s=30.0)
        return gather, loop.time() - started

    gather, waited = asyncio.run(scenario())
    assert gather.failures == {0: "no_replica"}
    assert fakes[0].calls == [] and fakes[1].calls == []
    assert waited < 15.0  # far below the 30 s deadline: nothing waited for it


def test_each_request_stops_waiting_at_its_own_deadline_inside_a_shared_batch() -> None:
    """Two requests coalesced into one batch on a hung replica: the one with the earlier deadline
    is failed ("deadline") at it, though the batch runs on for the other."""
    ids, vectors = data()
    fake = FakeShard(0, ids, vectors, mode="hang")
    ch = channel([fake], DispatchPolicy(0, False, 0.02, max_batches_in_flight=1, max_queries_per_batch=256))

    async def scenario() -> tuple[Gather, Gather, int]:
        loop = asyncio.get_running_loop()
        short = Gather(1, 1, loop.create_future())
        long = Gather(1, 1, loop.create_future())
        ch.submit(Block(short, 0, vectors[:1], 3, None, loop.time() + 0.2))
        ch.submit(Block(long, 0, vectors[1:2], 3, None, loop.time() + 30))
        loop.call_at(loop.time() + 0.2, short.expire)  # what the service arms per request
        await asyncio.wait_for(short.future, 10)
        pending = int(not long.future.done())
        long.expire()
        return short, long, pending

    short, long, still_waiting = asyncio.run(scenario())
    assert fake.calls == [2]  # one shared batch
    assert short.failures == {0: "deadline"}
    assert still_waiting == 1  # the later deadline was not cut short either
    assert long.failures == {0: "deadline"}
