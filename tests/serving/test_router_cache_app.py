"""The result cache and fallback answers in the router app (one process, the fake shards of
test_router_app): hits are flagged and equal the shards' answer, a layout switch misses, fallback
answers replace 503s only when the spec allows them."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import numpy as np

from shardrec.api.topology import Topology
from shardrec.api.v1alpha1 import RouterCacheSpec, RouterFallbackSpec
from shardrec.serving.router.config import RouterSettings
from tests.serving.test_router_app import World, error_of, run, settings, until

CACHE = RouterCacheSpec(enabled=True, max_bytes=1024 * 1024, ttl_seconds=60)


def cached(fallback: bool = False, **router: Any) -> RouterSettings:
    return settings(cache=CACHE, fallback=RouterFallbackSpec(cached=fallback), **router)


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def calls(world: World) -> int:
    return sum(len(fake.calls) for fake in world.fakes.values())


def test_a_repeated_query_is_a_flagged_hit_with_the_same_answer_and_no_shard_call() -> None:
    world = World()

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        body = {"user_id": "u0", "k": 5}
        first = await client.post("/v1/recommend", json=body)
        before = calls(world)
        second = await client.post("/v1/recommend", json=body)
        assert first.status_code == second.status_code == 200
        assert "cached" not in first.json()
        answer = second.json()
        assert answer.pop("cached") is True
        assert answer == first.json() and "fallback" not in answer
        assert calls(world) == before  # the shards were not asked again
        other_k = (await client.post("/v1/recommend", json={"user_id": "u0", "k": 6})).json()
        assert "cached" not in other_k and len(other_k["items"]) == 6
        vector = {"vector": [1, 2, 3, 4], "k": 3}
        await client.post("/v1/recommend", json=vector)
        assert (await client.post("/v1/recommend", json={**vector, "vector": [1.0, 2.0, 3.0, 4.0]})).json()[
            "cached"
        ]
        # The same float32 numbers as base64 are the same query: one entry for both forms.
        encoded = base64.b64encode(np.array([1, 2, 3, 4], dtype="<f4").tobytes()).decode()
        assert (await client.post("/v1/recommend", json={"vector_b64": encoded, "k": 3})).json()["cached"]
        text = (await client.get("/metrics")).text
        assert metric(text, "shardrec_router_cache_hits_total ") == 3
        assert metric(text, "shardrec_router_cache_misses_total ") == 3
        assert metric(text, "shardrec_router_cache_entries ") == 3
        assert metric(text, "shardrec_router_cache_bytes ") > 0

    run(world, cached(), scenario)


def test_a_layout_switch_misses_and_answers_from_the_new_version() -> None:
    world = World()

    async def scenario(client: httpx.AsyncClient, state: Any) -> None:
        body = {"vector": [1, 2, 3, 4], "k": 4}
        await client.post("/v1/recommend", json=body)
        assert (await client.post("/v1/recommend", json=body)).json()["cached"] is True
        await state.manager.apply(Topology(revision=2, active=world.build("v2", seed=2)))
        after = (await client.post("/v1/recommend", json=body)).json()
        assert after["index_version"] == "v2" and "cached" not in after
        assert (await client.post("/v1/recommend", json=body)).json()["cached"] is True

    run(world, cached(), scenario)


def test_partial_answers_are_not_cached() -> None:
    world = World()

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        for fake in world.replicas_of("v1", 1):
            fake.mode = "refuse"
        for _ in range(2):
            answer = (await client.post("/v1/recommend", json={"user_id": "u1"})).json()
            assert answer["partial"] is True and "cached" not in answer

    run(world, cached(consistency="available"), scenario)


def test_strict_with_a_dead_shard_answers_from_the_cache_only_when_fallback_allows_it() -> None:
    for fallback in (False, True):
        world = World()

        async def scenario(
            client: httpx.AsyncClient, state: Any, fallback: bool = fallback, world: World = world
        ) -> None:
            await client.post("/v1/recommend", json={"user_id": "u0", "k": 5})
            for fake in world.replicas_of("v1", 1):
                fake.mode = "refuse"
            state.service.answers.cache.ttl_s = 1e-9  # every entry is now stale: no hit, only fallback
            response = await client.post("/v1/recommend", json={"user_id": "u0", "k": 5})
            unknown = await client.post("/v1/recommend", json={"user_id": "u2", "k": 5})
            assert unknown.status_code == 503 and error_of(unknown)["code"] == "shard_unavailable"
            text = (await client.get("/metrics")).text
            counted = 'shardrec_router_fallback_answers_total{reason="shard_unavailable",source="cached"}'
            if not fallback:
                assert response.status_code == 503
                assert counted not in text
                return
            assert response.status_code == 200
            answer = response.json()
            assert answer["fallback"] == "cached" and answer["cached"] is True and len(answer["items"]) == 5
            assert f"{counted} 1.0" in text

        run(world, cached(fallback=fallback, consistency="strict"), scenario)


def test_a_shed_request_gets_a_cached_fallback_and_others_still_503() -> None:
    world = World()

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        known = {"user_id": "u1", "k": 3}
        await client.post("/v1/recommend", json=known)
        gate = asyncio.Event()
        for fake in world.fakes.values():
            fake.gate = gate  # admitted requests stay in flight until released
        held = [
            asyncio.create_task(client.post("/v1/recommend", json={"user_id": "u2", "k": k})) for k in (1, 2)
        ]
        await until(lambda: calls(world) >= 2 * 2 + 2)  # both admitted and at the shards
        answered = await client.post("/v1/recommend", json=known)
        assert answered.status_code == 200
        assert answered.json()["fallback"] == "cached"
        assert answered.headers["x-shardrec-layout-order"] == "0.1"
        pinned = await client.post(
            "/v1/recommend", json=known, headers={"x-shardrec-min-layout-order": "0.2"}
        )
        assert pinned.status_code == 503  # never an answer from a layout older than the client's pin
        refused = await client.post("/v1/recommend", json={"user_id": "u0", "k": 3})
        assert refused.status_code == 503 and error_of(refused)["code"] == "overloaded"
        batch = await client.post("/v1/recommend/batch", json={"queries": [known]})
        assert batch.status_code == 503  # only /v1/recommend has fallback answers
        gate.set()
        assert [(await t).status_code for t in held] == [200, 200]
        text = (await client.get("/metrics")).text
        assert 'shardrec_router_fallback_answers_total{reason="shed",source="cached"} 1.0' in text
        assert metric(text, "shardrec_router_shed_requests_total ") == 4

    run(world, cached(fallback=True, max_in_flight=2), scenario)


def test_a_live_ef_search_change_misses_so_a_hit_is_what_the_shards_would_answer_now() -> None:
    """efSearch changes without a new layout (it travels per query), and answers depend on it:
    the cache keys on the layout and the ef the shards are sent."""
    world = World()

    async def scenario(client: httpx.AsyncClient, state: Any) -> None:
        body = {"user_id": "u0", "k": 5}
        await client.post("/v1/recommend", json=body)
        assert (await client.post("/v1/recommend", json=body)).json()["cached"] is True
        active = world.build("v1", seed=1)
        await state.manager.apply(Topology(revision=2, active=active.model_copy(update={"ef_search": 300})))
        after = (await client.post("/v1/recommend", json=body)).json()
        assert after["index_version"] == "v1" and "cached" not in after
        assert (await client.post("/v1/recommend", json=body)).json()["cached"] is True

    run(world, cached(), scenario)
