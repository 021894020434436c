"""Canary traffic in the router (serving/router/canary.py): sticky buckets, which layout answers
which request, mirroring within its in-flight budget, the comparison, and the report the planner
reads."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, fields
from typing import Any, cast

import orjson
import pytest
from pydantic import ValidationError

from shardrec.api.canary import CanaryStats
from shardrec.api.topology import CanaryRoute, LayoutTopology, RouterServing, ShardEndpoints, Topology
from shardrec.planning.fleet import topology_document
from shardrec.serving.router.canary import CanaryRouter, CanaryWindow, bucket, compare, in_canary
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.snapshot import Snapshot

ITEMS = [f"i{n}" for n in range(10)]


def run_async(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A sync test running the coroutine in a fresh event loop."""

    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())

    return sync


@dataclass(eq=False)
class FakeSnapshot:
    layout: str
    users: set[str]
    items: list[str]
    fail: bool = False
    delay_s: float = 0.0
    in_flight: int = 0
    answered: list[str] = field(default_factory=list)

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


async def work(body: bytes, snapshot: Snapshot) -> bytes:
    snap = cast(FakeSnapshot, snapshot)
    if snap.delay_s:
        await asyncio.sleep(snap.delay_s)
    if snap.fail:
        raise ApiError(503, "shard_unavailable", "down")
    request = orjson.loads(body)
    user = request.get("user_id")
    if user is not None and user not in snap.users:
        raise ApiError(404, "unknown_user", user)
    snap.answered.append(user or "vector")
    scores = [1.0 - n / 20 for n in range(len(snap.items))]
    items = [{"item_id": i, "score": s} for i, s in zip(snap.items, scores, strict=True)]
    return orjson.dumps({"items": items, "index_version": snap.layout})


def body(user: str | None = None) -> bytes:
    return orjson.dumps({"user_id": user, "k": 10} if user else {"vector": [0.1, 0.2], "k": 10})


def router(route: CanaryRoute | None) -> CanaryRouter:
    canary = CanaryRouter(RouterMetrics(), random.Random(7))
    canary.apply(route)
    return canary


USERS = {f"u{n}" for n in range(400)}


def snapshots(**candidate: Any) -> tuple[Snapshot, Snapshot]:
    active = FakeSnapshot("act", set(USERS), ITEMS)
    cand = FakeSnapshot("cand", set(USERS), list(reversed(ITEMS)), **candidate)
    return cast(Snapshot, active), cast(Snapshot, cand)


async def ask(
    canary: CanaryRouter, active: Snapshot, cand: Snapshot, payload: bytes, route: str = "/v1/recommend"
) -> str:
    answer, _ = await canary.serve(route, payload, active, cand, work)
    await asyncio.sleep(0)  # let mirrored tasks start
    return str(orjson.loads(answer)["index_version"])


def test_buckets_are_stable_spread_and_monotonic_in_the_weight() -> None:
    assert bucket("alice", "cand") == bucket("alice", "cand")
    assert bucket("alice", "cand") != bucket("alice", "other")  # a new candidate reshuffles users
    users = [f"user-{n}" for n in range(20_000)]
    share = sum(in_canary(u, "cand", 25) for u in users) / len(users)
    assert 0.23 < share < 0.27
    at5 = {u for u in users if in_canary(u, "cand", 5)}
    at25 = {u for u in users if in_canary(u, "cand", 25)}
    assert at5 < at25  # a user on the candidate stays on it as the weight grows


def test_compare_overlap_rank_correlation_and_score_shift() -> None:
    same = compare(ITEMS, [1.0] * 10, ITEMS, [1.0] * 10)
    assert (same.overlap, same.score_shift) == (1.0, 0.0) and same.rank_correlation == pytest.approx(1.0)
    flipped = compare(ITEMS, [1.0] * 10, list(reversed(ITEMS)), [0.5] * 10)
    assert flipped.overlap == 1.0 and flipped.rank_correlation == pytest.approx(-1.0)
    assert flipped.score_shift == pytest.approx(0.5)
    disjoint = compare(ITEMS, [1.0] * 10, [f"x{n}" for n in range(10)], [1.0] * 10)
    assert (disjoint.overlap, disjoint.rank_correlation) == (0.0, 0.0)
    assert compare(ITEMS[:4], [1.0] * 4, [*ITEMS[:2], "x", "y"], [1.0] * 4).overlap == 0.5


@run_async
async def test_weight_step_answers_bucketed_users_from_the_candidate_and_always_the_same() -> None:
    canary = router(CanaryRoute(layout="cand", step=1, weight=30, sample_rate=0.0))
    active, cand = snapshots()
    seen: dict[str, set[str]] = {}
    for _ in range(3):
        for user in sorted(USERS):
            seen.setdefault(user, set()).add(await ask(canary, active, cand, body(user)))
    assert all(len(versions) == 1 for versions in seen.values())  # no user sees both
    on_candidate = {u for u, v in seen.items() if v == {"cand"}}
    assert on_candidate == {u for u in USERS if in_canary(u, "cand", 30)}
    assert await ask(canary, active, cand, body()) == "act"  # a vector query goes to the active
    assert await ask(canary, active, cand, body("u1"), route="/v1/recommend/batch") == "act"
    report = canary.report()
    assert report is not None
    stats = CanaryStats.from_report(report)
    assert stats.requests == 3 * len(on_candidate) and stats.errors == 0
    assert stats.user_queries == stats.requests and stats.candidate_p99_ms is not None


@run_async
async def test_a_candidate_without_the_user_or_failing_is_replaced_by_the_active() -> None:
    canary = router(CanaryRoute(layout="cand", step=1, weight=100, sample_rate=0.0))
    active, cand = snapshots()
    cast(FakeSnapshot, cand).users.discard("u1")
    assert await ask(canary, active, cand, body("u1")) == "act"
    cast(FakeSnapshot, cand).fail = True
    assert await ask(canary, active, cand, body("u2")) == "act"
    stats = CanaryStats.from_report(canary.report() or {})
    assert (stats.unknown_users, stats.user_queries, stats.errors, stats.requests) == (1, 2, 1, 1)
    assert stats.status().unknown_user_share == 0.5 and stats.status().candidate_error_rate == 1.0
    with pytest.raises(ApiError) as refused:  # unknown to both: the same 404 the active gives
        await ask(canary, active, cand, body("nobody"))
    assert refused.value.status == 404


@run_async
async def test_shadow_step_mirrors_a_sample_and_compares_off_the_answer() -> None:
    canary = router(CanaryRoute(layout="cand", step=0, weight=0, sample_rate=1.0, max_inflight=64))
    active, cand = snapshots()
    for user in sorted(USERS)[:50]:
        assert await ask(canary, active, cand, body(user)) == "act"
    await asyncio.sleep(0.01)
    stats = CanaryStats.from_report(canary.report() or {})
    assert stats.compared == 50 and stats.requests == 50 and stats.active_requests == 50
    seen = stats.status()
    assert seen.overlap_at10 == 1.0 and seen.rank_correlation == pytest.approx(-1.0)
    assert cast(FakeSnapshot, cand).in_flight == 0


@run_async
async def test_mirrors_over_the_in_flight_budget_are_dropped_not_queued() -> None:
    canary = router(CanaryRoute(layout="cand", step=0, weight=0, sample_rate=1.0, max_inflight=2))
    active, cand = snapshots(delay_s=0.05)
    for user in sorted(USERS)[:10]:
        await ask(canary, active, cand, body(user))
    assert canary.inflight == 2
    await asyncio.sleep(0.1)
    stats = CanaryStats.from_report(canary.report() or {})
    assert (stats.compared, stats.shadow_dropped) == (2, 8)
    assert canary.inflight == 0


@run_async
async def test_a_new_step_starts_a_new_window_and_no_canary_reports_nothing() -> None:
    canary = router(CanaryRoute(layout="cand", step=1, weight=100))
    active, cand = snapshots()
    await ask(canary, active, cand, body("u1"))
    canary.apply(CanaryRoute(layout="cand", step=1, weight=100))
    assert (canary.report() or {})["requests"] == 1
    canary.apply(CanaryRoute(layout="cand", step=2, weight=100))
    assert (canary.report() or {})["requests"] == 0
    canary.apply(None)
    assert canary.report() is None
    assert await ask(canary, active, cand, body("u1")) == "act"


def _layout(name: str) -> LayoutTopology:
    return LayoutTopology(
        layout=name,
        version=name,
        shards=1,
        dimension=2,
        metric="cosine",
        artifact_dir="/x",
        endpoints=[ShardEndpoints(shard=0)],
    )


def test_the_topology_canary_must_name_the_staged_layout() -> None:
    route = CanaryRoute(layout="b", step=0, weight=5)
    Topology(revision=1, active=_layout("a"), staged=_layout("b"), canary=route)
    with pytest.raises(ValidationError):
        Topology(revision=1, active=_layout("a"), staged=None, canary=route)
    stored = Topology(revision=1, active=_layout("a"), staged=_layout("b"))
    written = topology_document(
        stored, active=_layout("a"), staged=_layout("b"), floor=None, now_ms=1, canary=route
    )
    assert written is not None and written.canary == route and written.revision == 2
    assert (
        topology_document(
            written, active=_layout("a"), staged=_layout("b"), floor=None, now_ms=1, canary=route
        )
        is None
    )
    switched = topology_document(
        written, active=_layout("b"), staged=None, floor=None, now_ms=1, canary=route
    )
    assert switched is not None and switched.canary is None


def test_the_router_app_splits_mirrors_and_reports_through_readyz_and_canary() -> None:
    """The real app: a canary section naming the staged layout routes users, /canary and /readyz
    (the `serving` report the operator reads from the pod annotation) carry the measurements."""
    from tests.serving.test_router_app import World, running, settings, until

    world = World()
    v1, v2 = world.build("v1", seed=1), world.build("v2", seed=2)

    async def main() -> None:
        async with running(world, settings(), Topology(revision=1, active=v1)) as (client, state):
            manager = state.manager
            route = CanaryRoute(layout=v2.layout, step=1, weight=100, sample_rate=1.0)
            await manager.apply(Topology(revision=2, active=v1, staged=v2, canary=route))
            for user in ("u0", "u1", "u2"):
                answer = await client.post("/v1/recommend", json={"user_id": user, "k": 5})
                assert answer.json()["index_version"] == "v2"
            vector = await client.post("/v1/recommend", json={"vector": [0.1] * 4, "k": 5})
            assert vector.json()["index_version"] == "v1"
            await until(lambda: (manager.canary.report() or {}).get("compared") == 3)
            report = (await client.get("/canary")).json()["canary"]
            assert (report["layout"], report["step"], report["requests"]) == (v2.layout, 1, 3)
            serving = (await client.get("/readyz")).json()["serving"]
            assert serving["canary"]["requests"] == 3 and serving["prepared"] == v2.layout
            # Without the candidate staged the section is not applied: nothing is split.
            await manager.apply(Topology(revision=3, active=v1))
            assert manager.canary.route is None and (await client.get("/canary")).json() == {"canary": None}
            answer = await client.post("/v1/recommend", json={"user_id": "u0", "k": 5})
            assert answer.json()["index_version"] == "v1"

    asyncio.run(main())


def test_documents_without_a_canary_are_written_as_before_it_existed() -> None:
    """Older routers and operators forbid unknown fields: no `canary` key unless one is set."""
    assert "canary" not in Topology(revision=1, active=_layout("a")).model_dump_json()
    assert "canary" not in RouterServing(layout="a").model_dump_json()
    route = CanaryRoute(layout="b", step=0, weight=5)
    written = Topology(revision=1, active=_layout("a"), staged=_layout("b"), canary=route)
    assert Topology.model_validate_json(written.model_dump_json()) == written


def test_the_window_counts_and_reports_every_sum_of_canary_stats() -> None:
    """The router's window counts in plain mutable fields (the hot path) and reports through the
    frozen CanaryStats: a sum added to one and not the other, or left out of `report()`, would
    silently read 0 in the planner."""
    latencies = {"candidate_p99_ms", "active_p99_ms"}
    sums = [f.name for f in fields(CanaryStats) if f.name not in {"layout", "step", *latencies}]
    window = CanaryWindow("layout-b", 3)
    counted = [
        f.name
        for f in fields(window)
        if f.name not in {"layout", "step", "candidate_seconds", "active_seconds"}
    ]
    assert counted == sums
    for value, name in enumerate(sums, start=1):
        setattr(window, name, value)
    stats = CanaryStats.from_report(window.report())
    assert (stats.layout, stats.step) == ("layout-b", 3)
    assert [getattr(stats, name) for name in sums] == list(range(1, len(sums) + 1))
