"""Item writes through the router app in one process: the write permission of API keys, routing to
the owning shard, the leader numbering, replication and catch-up, the acknowledgement policy,
4xx answers, read-your-writes and the lag metric. Replicas are in-process fakes that keep a log
and apply it to the items they search (exact inner product)."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import httpx
import numpy as np
import pytest

from shardrec.api.topology import Topology
from shardrec.serving.index.foldin import FoldInSpec
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.router.auth import ApiKeysError, parse_api_keys
from shardrec.serving.router.config import RouterConfig, RouterSettings, WritesConfig
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.manager import ManagerDeps, _note_applied
from shardrec.serving.router.replicas import Replica
from shardrec.serving.router.shard_protocol import ErrorKinds
from shardrec.serving.router.writes import ReadFloor, acks_needed, parse_min_sequence
from shardrec.serving.shard.client import NO_WRITE_LOG, SequenceGap, ShardRejected, ShardUnavailable
from tests.serving.test_router_app import DIM, SHARDS, World, running, settings
from tests.serving.test_router_dispatch import FakeShard

KEYS = "reader:k-read\nwriter:k-write write\nboth:k-both read,write\n"
WRITE = {"x-api-key": "k-write"}
READ = {"x-api-key": "k-read"}
BOTH = {"x-api-key": "k-both"}


@dataclass
class WritingShard(FakeShard):
    """A fake replica with a write log: lead numbers, replicate refuses gaps, read_log serves."""

    log: list[dict[str, Any]] = field(default_factory=list)
    applied_sequence: int | None = None
    replicated: list[int] = field(default_factory=list)  # sequences received by replicate
    refuse_writes: bool = False  # searches answered, replication refused (stays behind)
    lead_batches: list[int] = field(default_factory=list)  # ops per lead_writes call
    no_write_log: bool = False  # a shard server started without --write-log-dir
    lookups: list[list[str]] = field(default_factory=list)  # ids asked of item_vectors

    @property
    def applied(self) -> int:
        return len(self.log)

    def _apply(self, record: dict[str, Any]) -> None:
        self.log.append(record)
        item = record["id"]
        if item in self.ids:
            index = self.ids.index(item)
            self.ids.pop(index)
            self.vectors = np.delete(self.vectors, index, axis=0)
        if record["op"] == "upsert":
            self.ids.append(item)
            self.vectors = np.vstack([self.vectors, np.asarray([record["vector"]], dtype=np.float32)])

    async def lead_writes(self, ops: list[dict[str, Any]], timeout_s: float = 5.0) -> list[int]:
        if self.mode == "refuse":
            raise ShardUnavailable("connection refused")
        self.lead_batches.append(len(ops))
        if self.no_write_log:
            raise ShardRejected("409 no_write_log: no write log here", status=409, code=NO_WRITE_LOG)
        await asyncio.sleep(0.01)  # the leader's fsync: later writes queue meanwhile
        sequences = []
        if any(op["id"].startswith("bad") for op in ops):
            raise ShardRejected("400 write_rejected: refused", status=400)
        for op in ops:
            if shard_of(op["id"], SHARDS) != self.shard:
                raise ShardRejected("400 write_rejected: wrong shard", status=400)
            self._apply({**op, "seq": self.applied + 1})
            sequences.append(self.applied)
        return sequences

    async def replicate(self, records: list[dict[str, Any]], timeout_s: float = 5.0) -> int:
        if self.mode == "refuse" or self.refuse_writes:
            raise ShardUnavailable("connection refused")
        fresh = [r for r in records if r["seq"] > self.applied]
        if fresh and fresh[0]["seq"] != self.applied + 1:
            raise SequenceGap(self.applied)
        for record in fresh:
            self.replicated.append(record["seq"])
            self._apply(record)
        return self.applied

    async def read_log(self, after: int, limit: int = 1024, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        return self.log[after : after + limit]

    async def item_vectors(self, item_ids: Sequence[str], timeout_s: float) -> Any:
        self.lookups.append(list(item_ids))
        return await super().item_vectors(item_ids, timeout_s)

    async def ready(self, timeout_s: float) -> bool:
        self.applied_sequence = self.applied
        return self.ready_answer and self.mode != "refuse"


def _world(fold_in: FoldInSpec | None = None) -> tuple[World, Topology]:
    world = World(fold_in=fold_in)
    layout = world.build("v1", seed=1)
    for url, fake in list(world.fakes.items()):
        world.fakes[url] = WritingShard(
            fake.shard, list(fake.ids), fake.vectors.copy(), version=fake.version, layout=fake.layout
        )
    return world, Topology(revision=1, active=layout)


def _deps(world: World) -> ManagerDeps:
    errors = ErrorKinds(unavailable=ShardUnavailable, rejected=ShardRejected, gap=SequenceGap)
    return replace(world.deps(), errors=errors)


def _settings(ack: Literal["all", "majority"] = "all", *, enabled: bool = True) -> RouterSettings:
    base = settings()
    config = RouterConfig(router=base.config.router, writes=WritesConfig(ack=ack, enabled=enabled))
    return replace(base, config=config, api_keys=parse_api_keys(KEYS, "keys"))


def _replicas(world: World, shard: int) -> list[WritingShard]:
    found = world.replicas_of("v1", shard)
    return [f for f in found if isinstance(f, WritingShard)]


def _new_id(shard: int, prefix: str = "new-") -> str:
    n = 0
    while shard_of(f"{prefix}{n}", SHARDS) != shard:
        n += 1
    return f"{prefix}{n}"


def _sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def _Running(  # noqa: N802 - used like the context manager class it wraps
    world: World, config: RouterSettings, topology: Topology
) -> AbstractAsyncContextManager[tuple[httpx.AsyncClient, Any]]:
    """`running` from test_router_app with this module's deps (a gap-aware ErrorKinds)."""
    world_deps = _deps(world)
    world.deps = lambda: world_deps  # type: ignore[method-assign]
    return running(world, config, topology)


@_sync
async def test_write_permission_is_separate_from_read() -> None:
    world, topology = _world()
    item = _new_id(0)
    body = {"vector": [1.0] * DIM}
    async with _Running(world, _settings(), topology) as (client, _):
        anonymous = await client.put(f"/v1/items/{item}", json=body)
        assert anonymous.status_code == 401
        reader = await client.put(f"/v1/items/{item}", json=body, headers=READ)
        assert reader.status_code == 403 and "no write permission" in reader.json()["error"]["message"]
        writer = await client.put(f"/v1/items/{item}", json=body, headers=WRITE)
        assert writer.status_code == 200, writer.text
        query = {"vector": [1.0] * DIM, "k": 3}
        assert (await client.post("/v1/recommend", json=query, headers=WRITE)).status_code == 403
        assert (await client.post("/v1/recommend", json=query, headers=READ)).status_code == 200
        assert (await client.delete(f"/v1/items/{item}", headers=BOTH)).status_code == 200


@_sync
async def test_a_router_without_api_keys_refuses_writes() -> None:
    world, topology = _world()
    async with _Running(world, settings(), topology) as (client, _):
        refused = await client.put(f"/v1/items/{_new_id(1)}", json={"vector": [1.0] * DIM})
        assert refused.status_code == 403 and "no API keys" in refused.json()["error"]["message"]


@_sync
async def test_upsert_goes_to_the_owner_leader_then_every_replica_and_is_searchable() -> None:
    world, topology = _world()
    item = _new_id(1)
    vector = [5.0, 5.0, 5.0, 5.0]
    async with _Running(world, _settings(), topology) as (client, _):
        answer = await client.put(
            f"/v1/items/{item}", json={"vector": vector, "metadata": {"t": 1}}, headers=BOTH
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() | {"layout": None} == {
            "item_id": item,
            "op": "upsert",
            "shard": 1,
            "sequence": 1,
            "token": "L-v1/1:1",
            "acknowledged_by": 2,
            "ready_replicas": 2,
            "layout": None,
        }
        for replica in _replicas(world, 1):
            assert [r["id"] for r in replica.log] == [item]
            assert replica.log[0]["metadata"] == {"t": 1}
        assert all(not r.log for r in _replicas(world, 0))
        found = await client.post("/v1/recommend", json={"vector": vector, "k": 1}, headers=BOTH)
        assert found.json()["items"][0]["item_id"] == item
        gone = await client.delete(f"/v1/items/{item}", headers=BOTH)
        assert gone.json()["sequence"] == 2
        found = await client.post("/v1/recommend", json={"vector": vector, "k": 5}, headers=BOTH)
        assert item not in [hit["item_id"] for hit in found.json()["items"]]


@_sync
async def test_an_upsert_may_give_its_vector_as_base64() -> None:
    """`vector_b64` on a write is the same vector as its numbers: logged as numbers, searchable."""
    world, topology = _world()
    item = _new_id(1)
    vector = np.array([5.0, -2.5, 0.125, 3.0], dtype=np.float32)
    encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode()
    async with _Running(world, _settings(), topology) as (client, _):
        answer = await client.put(f"/v1/items/{item}", json={"vector_b64": encoded}, headers=BOTH)
        assert answer.status_code == 200, answer.text
        for replica in _replicas(world, 1):
            assert [r["vector"] for r in replica.log] == [vector.tolist()]
        found = await client.post("/v1/recommend", json={"vector_b64": encoded, "k": 1}, headers=BOTH)
        assert found.json()["items"][0]["item_id"] == item


@_sync
async def test_a_follower_that_missed_records_is_caught_up_from_the_leader() -> None:
    world, topology = _world()
    leader, follower = _replicas(world, 0)  # r0, r1
    items = [_new_id(0, f"gap{n}-") for n in range(3)]
    async with _Running(world, _settings("majority"), topology) as (client, state):
        follower.mode = "refuse"
        await state.manager.probe(state.manager.current)
        for item in items[:2]:
            answer = await client.put(f"/v1/items/{item}", json={"vector": [1.0] * DIM}, headers=BOTH)
            assert answer.json()["acknowledged_by"] == 1 and answer.json()["ready_replicas"] == 1
        assert follower.log == []
        follower.mode = "ok"
        await state.manager.probe(state.manager.current)
        await client.put(f"/v1/items/{items[2]}", json={"vector": [1.0] * DIM}, headers=BOTH)
        assert [r["seq"] for r in follower.log] == [1, 2, 3]
        assert follower.log == leader.log


@_sync
async def test_the_probe_loop_catches_up_a_replica_that_came_back_without_a_new_write() -> None:
    world, topology = _world()
    leader, follower = _replicas(world, 0)
    item = _new_id(0)
    async with _Running(world, _settings("majority"), topology) as (client, state):
        follower.mode = "refuse"
        await state.manager.probe(state.manager.current)
        await client.put(f"/v1/items/{item}", json={"vector": [1.0] * DIM}, headers=BOTH)
        follower.mode = "ok"
        await state.manager.probe(state.manager.current)
        metrics = state.metrics.registry
        lag = metrics.get_sample_value(
            "shardrec_router_replica_write_lag", {"shard": "0", "replica": "v1-s0-r1"}
        )
        assert lag == 1.0
        for task in list(state.manager._catching_up):
            await task
        assert follower.log == leader.log
        await state.manager.probe(state.manager.current)
        assert (
            metrics.get_sample_value(
                "shardrec_router_replica_write_lag", {"shard": "0", "replica": "v1-s0-r1"}
            )
            == 0.0
        )


@_sync
async def test_ack_all_fails_when_a_ready_follower_cannot_take_the_write() -> None:
    world, topology = _world()
    _, follower = _replicas(world, 0)
    async with _Running(world, _settings("all"), topology) as (client, _):
        follower.mode = "refuse"  # still believed ready: no probe since
        answer = await client.put(f"/v1/items/{_new_id(0)}", json={"vector": [1.0] * DIM}, headers=BOTH)
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "write_unavailable" and "retrying the same write is safe" in error["message"]


@_sync
async def test_leader_down_means_no_writes_for_its_shard_only() -> None:
    world, topology = _world()
    leader, _ = _replicas(world, 0)
    async with _Running(world, _settings("majority"), topology) as (client, state):
        leader.mode = "refuse"
        await state.manager.probe(state.manager.current)
        down = await client.put(f"/v1/items/{_new_id(0)}", json={"vector": [1.0] * DIM}, headers=BOTH)
        assert down.status_code == 503 and "leader of shard 0" in down.json()["error"]["message"]
        other = await client.put(f"/v1/items/{_new_id(1)}", json={"vector": [1.0] * DIM}, headers=BOTH)
        assert other.status_code == 200


@_sync
async def test_concurrent_writes_leave_in_batches_and_a_refused_one_fails_alone() -> None:
    world, topology = _world()
    leader, follower = _replicas(world, 0)
    good = [_new_id(0, f"b{n}-") for n in range(30)]
    bad = _new_id(0, "bad-")
    async with _Running(world, _settings(), topology) as (client, _):
        answers = await asyncio.gather(
            *(
                client.put(f"/v1/items/{item}", json={"vector": [1.0] * DIM}, headers=BOTH)
                for item in [*good, bad]
            )
        )
    assert [a.status_code for a in answers] == [200] * 30 + [400]
    assert sorted(a.json()["sequence"] for a in answers[:30]) == list(range(1, 31))
    assert answers[30].json()["error"]["code"] == "write_rejected"
    assert max(leader.lead_batches) > 1  # concurrent writes shared a leader request
    assert follower.log == leader.log and len(leader.log) == 30
    calls = len(leader.lead_batches)
    async with _Running(world, _settings(), topology) as (client, _):
        more = [_new_id(0, f"c{n}-") for n in range(20)]
        answers = await asyncio.gather(
            *(client.put(f"/v1/items/{item}", json={"vector": [1.0] * DIM}, headers=BOTH) for item in more)
        )
    assert all(a.status_code == 200 for a in answers)
    assert len(leader.lead_batches) - calls < 20  # fewer leader requests than writes


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/items/x", {"vector": [1.0, 2.0]}, 400, "bad_dimension"),
        ("/v1/items/x", {"vector": [1.0, 2.0, 3.0, float("nan")]}, 400, "invalid_json"),
        ("/v1/items/x", {"vector": "no"}, 422, "invalid_request"),
        ("/v1/items/x", {"vector_b64": "AACAPwAAAEA="}, 400, "bad_dimension"),
        ("/v1/items/x", {"vector_b64": "AACAPwAAwH8AAIA/AACAPw=="}, 400, "bad_vector"),  # a NaN
        ("/v1/items/x", {"vector_b64": "AACAPwAAAEA"}, 422, "invalid_request"),  # no padding
        ("/v1/items/x", {"vector_b64": "AACAPwA="}, 422, "invalid_request"),  # 5 bytes
        ("/v1/items/x", {"vector_b64": "é"}, 422, "invalid_request"),
        ("/v1/items/x", {"vector_b64": 5}, 422, "invalid_request"),
        (
            "/v1/items/x",
            {"vector_b64": "AACAPwAAgD8AAIA/AACAPw==", "vector": [1.0] * DIM},
            422,
            "invalid_request",
        ),
        ("/v1/items/x", {"vector": [1.0] * DIM, "colour": 1}, 422, "invalid_request"),
        ("/v1/items/x", {"vector": [1.0] * DIM, "metadata": "m"}, 422, "invalid_request"),
        ("/v1/items/a%0Ab", {"vector": [1.0] * DIM}, 400, "bad_item_id"),
        ("/v1/items/", {"vector": [1.0] * DIM}, 400, "bad_item_id"),
        (f"/v1/items/{'x' * 600}", {"vector": [1.0] * DIM}, 400, "bad_item_id"),
    ],
)
@_sync
async def test_bad_writes_are_4xx_with_a_message(path: str, body: Any, status: int, code: str) -> None:
    world, topology = _world()
    async with _Running(world, _settings(), topology) as (client, _):
        raw = json.dumps(body).encode()  # NaN is written as the non-JSON token NaN
        answer = await client.put(path, content=raw, headers=BOTH)
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == code and answer.json()["error"]["message"]


@_sync
async def test_writes_turned_off_in_the_spec_are_refused_with_a_403_that_names_it() -> None:
    """`spec.writes.enabled: false` reaches the router as `writes.enabled: false` (the local
    runtime's config): a PUT or DELETE is refused before any shard is asked, reads go on."""
    world, topology = _world()
    item = _new_id(0)
    async with _Running(world, _settings(enabled=False), topology) as (client, _):
        put = await client.put(f"/v1/items/{item}", json={"vector": [1.0] * DIM}, headers=BOTH)
        delete = await client.delete(f"/v1/items/{item}", headers=BOTH)
        query = {"vector": [1.0] * DIM, "k": 3}
        read = await client.post("/v1/recommend", json=query, headers=BOTH)
    for refused in (put, delete):
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "writes_disabled" and "spec.writes.enabled" in error["message"]
    assert read.status_code == 200
    assert all(not shard.log for shard in _replicas(world, 0))


@_sync
async def test_a_shard_without_a_write_log_is_reported_as_writes_turned_off() -> None:
    """On Kubernetes a writes-off layout's shards keep no log (no --write-log-dir) and its router
    config has no `writes` key; the shard's refusal reaches the client as the same 403."""
    world, topology = _world()
    item = _new_id(1)
    for shard in _replicas(world, 1):
        shard.no_write_log = True
    async with _Running(world, _settings(), topology) as (client, _):
        put = await client.put(f"/v1/items/{item}", json={"vector": [1.0] * DIM}, headers=BOTH)
    assert put.status_code == 403, put.text
    assert put.json()["error"]["code"] == "writes_disabled"
    assert "spec.writes.enabled" in put.json()["error"]["message"]


@_sync
async def test_delete_with_a_body_is_refused() -> None:
    world, topology = _world()
    async with _Running(world, _settings(), topology) as (client, _):
        answer = await client.request("DELETE", "/v1/items/x", content=b'{"a":1}', headers=BOTH)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "unexpected_body"


@_sync
async def test_read_your_writes_avoids_replicas_behind_the_token() -> None:
    world, topology = _world()
    leader, follower = _replicas(world, 1)
    item = _new_id(1)
    async with _Running(world, _settings("majority"), topology) as (client, state):
        follower.mode = "refuse"
        await state.manager.probe(state.manager.current)
        written = await client.put(f"/v1/items/{item}", json={"vector": [9.0] * DIM}, headers=BOTH)
        assert written.json()["acknowledged_by"] == 1, written.text
        token = written.json()["token"]
        follower.mode, follower.refuse_writes = "ok", True  # back, answers searches, stays behind
        await state.manager.probe(state.manager.current)
        follower_calls = len(follower.calls)
        for _ in range(20):
            answer = await client.post(
                "/v1/recommend",
                json={"vector": [9.0] * DIM, "k": 1},
                headers={**BOTH, "x-shardrec-min-sequence": token},
            )
            assert answer.json()["items"][0]["item_id"] == item
        assert len(follower.calls) == follower_calls  # never asked
        assert follower.log == []
        plain = await client.post("/v1/recommend", json={"vector": [9.0] * DIM, "k": 1}, headers=BOTH)
        assert plain.status_code == 200
        # Without the token too: this router acknowledged the write, so no read of it goes to a
        # replica behind it (a deleted item stays deleted).
        assert len(follower.calls) == follower_calls
        leader.mode = "refuse"
        behind = await client.post(
            "/v1/recommend",
            json={"vector": [9.0] * DIM, "k": 1},
            headers={**BOTH, "x-shardrec-min-sequence": token},
        )
        assert behind.status_code == 503, behind.text
        assert behind.json()["error"]["code"] in ("replicas_behind", "shard_unavailable")
        bad = await client.post(
            "/v1/recommend",
            json={"vector": [9.0] * DIM, "k": 1},
            headers={**BOTH, "x-shardrec-min-sequence": "x"},
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_min_sequence"


def _behind_follower(world: World, item: str, vector: list[float]) -> tuple[WritingShard, WritingShard, str]:
    """`item` upserted on its shard's leader by *another* router (this one never acknowledged it,
    so only the client's token says a read must see it); the follower answers reads but takes no
    record, so it stays behind. Returns (leader, follower, the write's token)."""
    shard = shard_of(item, SHARDS)
    leader, follower = _replicas(world, shard)
    leader._apply({"seq": leader.applied + 1, "op": "upsert", "id": item, "vector": vector})
    follower.refuse_writes = True
    return leader, follower, f"L-v1/{shard}:{leader.applied}"


@_sync
async def test_similar_honours_the_token_in_the_item_lookup_and_the_fan_out() -> None:
    """`/v1/similar` with a write's token, on a router that did not acknowledge the write: neither
    the lookup of the item's vector on its owning shard nor the search on that shard goes to a
    replica behind the token, so the item just written is found (not a 404 from a follower that
    lacks it); the same answers as `/v1/recommend` for a malformed token or no replica caught up."""
    world, topology = _world()
    item = _new_id(1)
    leader, follower, token = _behind_follower(world, item, [9.0] * DIM)
    with_token = {**BOTH, "x-shardrec-min-sequence": token}
    async with _Running(world, _settings("majority"), topology) as (client, state):
        await state.manager.probe(state.manager.current)
        for _ in range(20):
            answer = await client.post("/v1/similar", json={"item_id": item, "k": 3}, headers=with_token)
            assert answer.status_code == 200, answer.text
            assert item not in [hit["item_id"] for hit in answer.json()["items"]]
        assert follower.lookups == [] and follower.calls == [], "a replica behind the token was read"
        assert len(leader.lookups) == 20 and len(leader.calls) == 20
        # No replica has applied the sequence asked for: the same 503 as /v1/recommend's.
        ahead = {**BOTH, "x-shardrec-min-sequence": "L-v1/1:999"}
        similar = await client.post("/v1/similar", json={"item_id": item, "k": 3}, headers=ahead)
        recommend = await client.post("/v1/recommend", json={"vector": [9.0] * DIM, "k": 3}, headers=ahead)
        assert similar.status_code == recommend.status_code == 503, similar.text
        assert similar.json() == recommend.json()
        assert similar.json()["error"]["code"] == "replicas_behind"
        assert similar.headers["retry-after"] == recommend.headers["retry-after"] == "1"
        # A malformed token is refused before any shard is asked, whatever the item.
        malformed = {**BOTH, "x-shardrec-min-sequence": "x"}
        for body in ({"item_id": item, "k": 3}, {"item_id": "not-an-item", "k": 3}):
            bad = await client.post("/v1/similar", json=body, headers=malformed)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_min_sequence", bad.text
        assert len(leader.lookups) == 20 and follower.lookups == []


@_sync
async def test_similar_never_reads_an_item_from_a_replica_behind_a_write_acknowledged_here() -> None:
    """Without a token: this router acknowledged the delete (ack majority, the follower down), so
    no read through it, the item lookup of `/v1/similar` included, goes to the follower that
    missed it; the deleted item answers 404, never the follower's stale vector."""
    world, topology = _world()
    follower = _replicas(world, 1)[1]
    item = _new_id(1)
    async with _Running(world, _settings("majority"), topology) as (client, state):
        written = await client.put(f"/v1/items/{item}", json={"vector": [9.0] * DIM}, headers=BOTH)
        assert written.json()["acknowledged_by"] == 2, written.text
        follower.mode = "refuse"
        await state.manager.probe(state.manager.current)
        deleted = await client.delete(f"/v1/items/{item}", headers=BOTH)
        assert deleted.json()["acknowledged_by"] == 1, deleted.text
        follower.mode, follower.refuse_writes = "ok", True  # back, answers reads, stays behind
        await asyncio.sleep(1.1)  # past its ejection (EjectionPolicy.base_ejection_s): live again
        await state.manager.probe(state.manager.current)
        replica = next(r for r in state.manager.current.channels[1].replicas if r.client is follower)
        assert replica.health == "healthy" and item in follower.ids
        for _ in range(20):
            answer = await client.post("/v1/similar", json={"item_id": item, "k": 3}, headers=BOTH)
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["code"] == "unknown_item"
        assert follower.lookups == []


@_sync
async def test_a_fold_in_reads_the_recent_items_only_from_replicas_that_applied_the_token() -> None:
    """The lookup of `recent_items` is the same lookup as `/v1/similar`'s, under the same rule:
    an item just upserted through another router is folded in, not skipped as unknown."""
    world, topology = _world(FoldInSpec("unknown", "mean"))
    item = _new_id(1)
    _, follower, token = _behind_follower(world, item, [9.0] * DIM)
    query = {"recent_items": [{"item_id": item}], "k": 3}
    async with _Running(world, _settings("majority"), topology) as (client, state):
        await state.manager.probe(state.manager.current)
        for _ in range(20):
            answer = await client.post(
                "/v1/recommend", json=query, headers={**BOTH, "x-shardrec-min-sequence": token}
            )
            assert answer.status_code == 200, answer.text
        assert follower.lookups == [] and follower.calls == []


@_sync
async def test_a_token_from_an_older_layout_is_read_from_the_new_layouts_leaders() -> None:
    """A layout numbers its writes in its own logs: the writes carried into a new layout get new
    sequences there (the ones up to the cut are folded into its build and not logged at all). A
    token naming the old layout says nothing about the new one's numbers, but the hand-over
    forwarded every write the old one acknowledged to the new leaders before the switch, so the
    read goes to each shard's leader, never to a follower that may lack a forwarded record, and is
    neither refused as malformed nor left waiting for a sequence the new layout never reaches."""
    world, topology = _world()
    items = [_new_id(1, prefix=f"w{n}-") for n in range(3)]
    async with _Running(world, _settings(), topology) as (client, state):
        for n, item in enumerate(items):
            written = await client.put(f"/v1/items/{item}", json={"vector": [9.0 + n] * DIM}, headers=BOTH)
            assert written.status_code == 200, written.text
        token = written.json()["token"]
        assert token == "L-v1/1:3"
        v2 = world.build("v2", seed=2)
        for url, fake in list(world.fakes.items()):
            if "/v2/" in url:
                world.fakes[url] = WritingShard(
                    fake.shard, list(fake.ids), fake.vectors.copy(), version=fake.version, layout=fake.layout
                )
        leader, follower = (f for f in world.replicas_of("v2", 1) if isinstance(f, WritingShard))
        # The cut folded the first two writes into v2's build; the third was forwarded after it,
        # numbered 1 by v2's leader. Its follower has not received it yet (and takes nothing).
        leader._apply({"seq": 1, "op": "upsert", "id": items[2], "vector": [11.0] * DIM})
        follower.refuse_writes = True
        await state.manager.apply(Topology(revision=2, active=v2))
        await state.manager.probe(state.manager.current)
        follower_calls = len(follower.calls)
        for _ in range(10):
            answer = await client.post(
                "/v1/recommend",
                json={"vector": [11.0] * DIM, "k": 1},
                headers={**BOTH, "x-shardrec-min-sequence": token},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["items"][0]["item_id"] == items[2]
        assert len(follower.calls) == follower_calls, "a follower answered a read of a carried write"
        similar = await client.post(
            "/v1/similar",
            json={"item_id": items[2], "k": 1},
            headers={**BOTH, "x-shardrec-min-sequence": token},
        )
        assert similar.status_code == 200, similar.text
        assert follower.lookups == [] and len(follower.calls) == follower_calls
        # A token naming a layout with more shards than this one is not malformed either.
        other = await client.post(
            "/v1/recommend",
            json={"vector": [11.0] * DIM, "k": 1},
            headers={**BOTH, "x-shardrec-min-sequence": "L-v0/7:40"},
        )
        assert other.status_code == 200, other.text
        # The leader gone: that read cannot be served safely, and says so (retryable).
        leader.mode = "refuse"
        await state.manager.probe(state.manager.current)
        behind = await client.post(
            "/v1/recommend",
            json={"vector": [11.0] * DIM, "k": 1},
            headers={**BOTH, "x-shardrec-min-sequence": token},
        )
        assert behind.status_code == 503, behind.text
        assert behind.json()["error"]["code"] in ("replicas_behind", "shard_unavailable")
        assert len(follower.calls) == follower_calls


def test_acks_needed_and_min_sequence_parsing() -> None:
    assert [acks_needed("all", n) for n in (1, 2, 3)] == [1, 2, 3]
    assert [acks_needed("majority", n) for n in (1, 2, 3, 4)] == [1, 2, 2, 3]
    assert parse_min_sequence(b"0:3, 1:7,0:5", 2, "L") == ReadFloor({0: 5, 1: 7})
    assert parse_min_sequence(b"L/0:3,L/1:7", 2, "L") == ReadFloor({0: 3, 1: 7})
    assert parse_min_sequence(b"L/0:3,old/9:70", 2, "L") == ReadFloor({0: 3}, leaders_only=True)
    assert parse_min_sequence(None, 2, "L") == ReadFloor()
    for bad in (b"x", b"/0:3", b"L/0", b"L/a:1", b"9:1", b"L/9:1", b"L\x01/0:1"):
        with pytest.raises(ApiError) as refused:
            parse_min_sequence(bad, 2, "L")
        assert refused.value.status == 400 and refused.value.code == "bad_min_sequence", bad


def test_key_permissions_parse() -> None:
    keys = parse_api_keys(KEYS + "plain\n", "keys")
    assert keys.allows("reader", "read") and not keys.allows("reader", "write")
    assert keys.allows("writer", "write") and not keys.allows("writer", "read")
    assert keys.allows("both", "read") and keys.allows("both", "write")
    assert keys.allows("key-4", "read") and not keys.allows("key-4", "write")
    for bad in ("a:k admin\n", "a:k read, write\n"):
        with pytest.raises(ApiKeysError):
            parse_api_keys(bad, "keys")


def test_a_stale_probe_never_lowers_the_applied_sequence_but_a_restart_does() -> None:
    @dataclass
    class Client:
        applied_sequence: int | None = None
        instance: str | None = None

    client = Client(5, "a")
    replica: Replica[Any] = Replica("s0-r1", "http://x", client)
    _note_applied(replica)
    assert replica.applied_sequence == 5
    replica.applied_sequence = 9  # a write's acknowledgement
    client.applied_sequence = 7  # a probe answered before that write
    _note_applied(replica)
    assert replica.applied_sequence == 9
    client.applied_sequence, client.instance = 4, "b"  # restarted and replayed its log up to 4
    _note_applied(replica)
    assert replica.applied_sequence == 4
