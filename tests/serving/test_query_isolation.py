"""Per-query isolation: one client's bad query never fails, or changes, the answers of the other
clients' queries coalesced into the same shard batch.

The replica here goes through the real wire format (`encode_request` -> `decode_request`, as the
shard server decodes it) and refuses, as a shard does with a 400, any batch holding a "poison" id.
Hypothesis mixes poison queries and queries excluding arbitrary text (newlines, NUL, ...) into
batches; the innocent answers must equal a clean run's and an exact reference search.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardrec.serving.router.dispatch import Block, DispatchPolicy, ShardChannel
from shardrec.serving.router.gather import Gather
from shardrec.serving.router.hedging import HedgeBudget
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.replicas import Replica
from shardrec.serving.router.shard_protocol import ErrorKinds
from shardrec.serving.shard.client import ShardRejected, ShardUnavailable
from shardrec.serving.shard.wire import WireError, decode_request, encode_request

Floats = npt.NDArray[np.float32]
DIM = 4
RNG = np.random.default_rng(3)
ITEM_IDS = [f"i{n}" for n in range(30)]
ITEMS = RNG.normal(size=(len(ITEM_IDS), DIM)).astype(np.float32)
QUERY_VECTORS = RNG.normal(size=(10, DIM)).astype(np.float32)
POISON = "POISON"


@dataclass
class Answer:
    ids: npt.NDArray[np.str_]
    scores: Floats
    counts: npt.NDArray[np.uint32]
    version: str = "v1"
    layout: str = "L1"
    shard: int = 0


def exact(vector: Floats, k: int, exclude: Sequence[str]) -> list[str]:
    banned = set(exclude)
    order = np.argsort(-(ITEMS @ vector), kind="stable")
    return [ITEM_IDS[i] for i in order if ITEM_IDS[i] not in banned][:k]


class WireReplica:
    """Decodes what the router sends exactly as the shard server does; 400 for poison."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def search(
        self,
        queries: Floats,
        k: int,
        exclude: Sequence[Sequence[str]] | None,
        timeout_s: float,
        ef_search: int = 0,
    ) -> Answer:
        self.batches.append(len(queries))
        try:
            request = decode_request(
                encode_request(queries, k, exclude, 1000, ef_search),
                max_queries=4096,
                max_k=100,
                dimension=DIM,
            )
        except WireError as exc:
            raise ShardRejected(f"400 bad_request: {exc}", status=400) from exc
        rows = request.exclude or [[] for _ in range(len(queries))]
        if any(POISON in ids for ids in rows):
            raise ShardRejected("400 bad_request: poison", status=400)
        n = len(queries)
        ids = np.full((n, k), "", dtype="U32")
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        counts = np.zeros(n, dtype=np.uint32)
        for row in range(n):
            found = exact(request.queries[row], k, rows[row])
            ids[row, : len(found)] = found
            scores[row, : len(found)] = [
                float(ITEMS[ITEM_IDS.index(i)] @ request.queries[row]) for i in found
            ]
            counts[row] = len(found)
        return Answer(ids, scores, counts)

    async def item_vectors(self, item_ids: Sequence[str], timeout_s: float) -> None:
        raise NotImplementedError

    async def ready(self, timeout_s: float) -> bool:
        return True

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Query:
    vector: int
    k: int
    exclude: tuple[str, ...]
    poison: bool


def channel(replica: WireReplica) -> ShardChannel:
    return ShardChannel(
        shard=0,
        layout="L1",
        version="v1",
        replicas=[Replica(name="r0", url="http://127.0.0.1:1", client=replica)],  # type: ignore[list-item]
        policy=DispatchPolicy(0, False, 0.05, max_batches_in_flight=1, max_queries_per_batch=256),
        budget=HedgeBudget(0),
        errors=ErrorKinds(unavailable=ShardUnavailable, rejected=ShardRejected),
        metrics=RouterMetrics(),
        rng=random.Random(0),
    )


def run(queries: list[Query]) -> tuple[list[list[str] | str], list[int]]:
    """Each query as its own client request, submitted together so they share batches; per query
    its ids, or the failure reason."""

    async def main() -> tuple[list[list[str] | str], list[int]]:
        replica = WireReplica()
        ch = channel(replica)
        loop = asyncio.get_running_loop()
        gathers = []
        for query in queries:
            gather = Gather(1, 1, loop.create_future())
            exclude = [[*query.exclude, *([POISON] if query.poison else [])]]
            vector = QUERY_VECTORS[query.vector][None, :]
            ch.submit(Block(gather, 0, vector, query.k, exclude, loop.time() + 10))
            gathers.append(gather)
        await asyncio.wait_for(asyncio.gather(*(g.future for g in gathers)), 20)
        out: list[list[str] | str] = []
        for gather in gathers:
            part = gather.parts[0][0]
            if part is None:
                out.append(gather.failures[0])
            else:
                ids, _, counts = part
                out.append(list(ids[0, : int(counts[0])]))
        return out, replica.batches

    return asyncio.run(main())


queries = st.builds(
    Query,
    vector=st.integers(0, len(QUERY_VECTORS) - 1),
    k=st.sampled_from([1, 3, 5]),
    exclude=st.lists(st.one_of(st.sampled_from(ITEM_IDS), st.text(min_size=0, max_size=8)), max_size=4).map(
        tuple
    ),
    poison=st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(queries, min_size=2, max_size=16))
def test_poison_queries_never_change_or_fail_their_batch_neighbours(mixed: list[Query]) -> None:
    answers, batches = run(mixed)
    innocent = [query for query in mixed if not query.poison]
    clean, _ = run(innocent) if innocent else ([], [])
    assert [a for a, q in zip(answers, mixed, strict=True) if not q.poison] == clean
    for answer, query in zip(answers, mixed, strict=True):
        if query.poison:
            assert answer == "rejected"
        else:
            assert answer == exact(QUERY_VECTORS[query.vector], query.k, query.exclude)
    assert len(batches) >= 1


def test_queries_of_different_clients_do_share_a_batch() -> None:
    """The property above is about coalesced batches: check that they are."""
    mixed = [Query(i % 10, 3, ("x\ny",), poison=False) for i in range(8)]
    answers, batches = run(mixed)
    assert batches == [8]
    assert all(isinstance(answer, list) and len(answer) == 3 for answer in answers)
