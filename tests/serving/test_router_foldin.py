"""User fold-in in the router app (one process, the fake shards of test_router_app): `recent_items`
gives the user's vector from those items' stored vectors, fetched from their owning shards, and
they are never in the answer; cold start without a user id, replacement for a known one; errors;
the result cache keys on the recent items; batches."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from shardrec.serving.index.foldin import FoldInModel, FoldInSpec, fold_in, item_gram
from shardrec.serving.index.partitioning import shard_of
from tests.serving.test_router_app import World, error_of, run, settings
from tests.serving.test_router_cache_app import cached, calls

ALS = FoldInSpec("als", "als", regularization=0.1, alpha=0.5, default_weight=3.0)


def folded(world: World, recent: list[tuple[str, float | None]], spec: FoldInSpec = ALS) -> np.ndarray:
    """The user vector the router must compute (the pure fold-in on the world's item vectors)."""
    vectors = world.items["v1"]
    model = FoldInModel(spec, item_gram(vectors, "ip") if spec.method == "als" else None)
    rows = np.stack([vectors[world.ids.index(item)] for item, _ in recent])
    weights = np.array([spec.default_weight if w is None else w for _, w in recent], dtype=np.float64)
    return fold_in(model, rows, weights)


def ids_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_cold_start_from_a_few_clicks_excludes_them() -> None:
    world = World(fold_in=ALS)
    recent: list[tuple[str, float | None]] = [("item-3", None), ("item-7", 2.0), ("item-30", 5.0)]
    # The clicks live on both shards: every owning shard is asked for its vectors.
    assert {shard_of(item, 2) for item, _ in recent} == {0, 1}

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        body = {
            "recent_items": [
                {"item_id": "item-3"},
                {"item_id": "item-7", "weight": 2},
                {"item_id": "item-30", "weight": 5.0},
            ],
            "k": 8,
        }
        got = ids_of(await client.post("/v1/recommend", json=body))
        clicked = {item for item, _ in recent}
        assert got == world.expected("v1", folded(world, recent), 8, clicked)
        assert not clicked & set(got)
        # Order of the clicks does not matter; their weights do.
        swapped = {**body, "recent_items": body["recent_items"][::-1]}
        assert ids_of(await client.post("/v1/recommend", json=swapped)) == got
        light = [("item-3", None), ("item-7", 2.0), ("item-30", 0.5)]
        assert world.expected("v1", folded(world, light), 8, clicked) != got  # the check can fail
        lighter = {**body, "recent_items": [*body["recent_items"][:2], {"item_id": "item-30", "weight": 0.5}]}
        assert ids_of(await client.post("/v1/recommend", json=lighter)) == world.expected(
            "v1", folded(world, light), 8, clicked
        )

    run(world, settings(), scenario)


def test_a_known_user_gets_the_folded_vector_and_keeps_seen_exclusion() -> None:
    world = World(fold_in=ALS)

    async def scenario(client: httpx.AsyncClient, state: Any) -> None:
        body = {"user_id": "u0", "recent_items": [{"item_id": "item-11"}, {"item_id": "item-12"}], "k": 6}
        got = ids_of(await client.post("/v1/recommend", json=body))
        excluded = {"item-1", "item-2", "item-11", "item-12"}  # u0's seen items and the clicks
        want = world.expected("v1", folded(world, [("item-11", None), ("item-12", None)]), 6, excluded)
        assert got == want
        stored = state.manager.current.users.vector("u0")
        assert got != world.expected("v1", stored, 6, excluded)  # replaced, not the stored vector
        # Without seen exclusion only the clicks are left out.
        loose = ids_of(await client.post("/v1/recommend", json={**body, "exclude_seen": False}))
        vector = folded(world, [("item-11", None), ("item-12", None)])
        assert loose == world.expected("v1", vector, 6, {"item-11", "item-12"})
        # None of the clicks held by the layout: a known user falls back to the stored vector.
        gone = {"user_id": "u0", "recent_items": [{"item_id": "no-such-item"}], "k": 6}
        got = ids_of(await client.post("/v1/recommend", json=gone))
        assert got == world.expected("v1", stored, 6, {"item-1", "item-2"})

    run(world, settings(), scenario)


def test_unknown_clicks_are_skipped_and_none_known_is_404() -> None:
    world = World(fold_in=ALS)

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        mixed = {"recent_items": [{"item_id": "item-4"}, {"item_id": "gone"}], "k": 5}
        got = ids_of(await client.post("/v1/recommend", json=mixed))
        assert got == world.expected("v1", folded(world, [("item-4", None)]), 5, {"item-4"})
        for body in (
            {"recent_items": [{"item_id": "gone"}, {"item_id": "also-gone"}]},
            {"user_id": "stranger", "recent_items": [{"item_id": "gone"}]},
        ):
            response = await client.post("/v1/recommend", json=body)
            assert response.status_code == 404
            assert error_of(response)["code"] == "unknown_items"
        # An unknown user with known clicks is a cold start, not a 404.
        stranger = {"user_id": "stranger", "recent_items": [{"item_id": "item-4"}], "k": 5}
        assert ids_of(await client.post("/v1/recommend", json=stranger)) == got

    run(world, settings(), scenario)


def test_mean_fallback_for_models_without_a_closed_form() -> None:
    spec = FoldInSpec("bpr", "mean", default_weight=1.0, bias_last=True)
    world = World(fold_in=spec)

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        body = {
            "recent_items": [{"item_id": "item-5", "weight": 1}, {"item_id": "item-9", "weight": 3}],
            "k": 5,
        }
        want = world.expected(
            "v1", folded(world, [("item-5", 1.0), ("item-9", 3.0)], spec), 5, {"item-5", "item-9"}
        )
        assert ids_of(await client.post("/v1/recommend", json=body)) == want

    run(world, settings(), scenario)


def test_a_layout_without_fold_in_is_409_and_a_dead_owner_is_503() -> None:
    async def without(client: httpx.AsyncClient, _: Any) -> None:
        response = await client.post("/v1/recommend", json={"recent_items": [{"item_id": "item-3"}]})
        assert response.status_code == 409
        assert error_of(response)["code"] == "fold_in_unavailable"

    run(World(), settings(), without)
    world = World(fold_in=ALS)

    async def dead_owner(client: httpx.AsyncClient, _: Any) -> None:
        owner = shard_of("item-3", 2)
        for fake in world.replicas_of("v1", owner):
            fake.mode = "refuse"
        response = await client.post("/v1/recommend", json={"recent_items": [{"item_id": "item-3"}]})
        assert response.status_code == 503
        assert error_of(response)["code"] == "shard_unavailable"
        assert response.headers["x-shardrec-unavailable-shards"] == str(owner)

    run(world, settings(consistency="available"), dead_owner)


def test_validation_of_recent_items() -> None:
    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        cases = [
            ({"recent_items": []}, "recent_items: must not be empty"),
            ({"recent_items": [{"item_id": "a"}] * 101}, "recent_items: 101 items, at most 100"),
            (
                {"recent_items": [{"item_id": "a", "weight": 0}]},
                "recent_items[0].weight: must be greater than 0",
            ),
            (
                {"recent_items": [{"item_id": "a", "weight": -1}]},
                "recent_items[0].weight: must be greater than 0",
            ),
            ({"recent_items": [{"item_id": "a", "weight": "2"}]}, "recent_items[0].weight: must be a number"),
            ({"recent_items": ["a"]}, "recent_items[0]: must be a JSON object"),
            ({"recent_items": [{"item_id": "a\n"}]}, "recent_items[0].item_id: must not contain"),
            (
                {"recent_items": [{"id": "a"}]},
                "unknown field(s) recent_items[0].id; allowed: item_id, weight",
            ),
            ({"recent_items": [{"item_id": "a"}], "vector": [1, 2, 3, 4]}, "give exactly one"),
        ]
        for body, message in cases:
            response = await client.post("/v1/recommend", json=body)
            assert response.status_code == 422, body
            assert message in error_of(response)["message"], (body, error_of(response))

    run(World(fold_in=ALS), settings(), scenario)


def test_the_cache_keys_on_the_clicks() -> None:
    world = World(fold_in=ALS)

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        plain = {"user_id": "u1", "k": 5}
        one = {**plain, "recent_items": [{"item_id": "item-3"}]}
        two = {**plain, "recent_items": [{"item_id": "item-3"}, {"item_id": "item-20"}]}
        first = await client.post("/v1/recommend", json=plain)
        assert "cached" not in first.json()
        after_one = (await client.post("/v1/recommend", json=one)).json()
        assert "cached" not in after_one  # a new click is never answered from the user's entry
        assert [i["item_id"] for i in after_one["items"]] == world.expected(
            "v1", folded(world, [("item-3", None)]), 5, {"item-3"}
        )
        after_two = (await client.post("/v1/recommend", json=two)).json()
        assert "cached" not in after_two and after_two["items"] != after_one["items"]
        before = calls(world)
        again = (await client.post("/v1/recommend", json=one)).json()
        assert again.pop("cached") is True and again == after_one and calls(world) == before
        anonymous = {"recent_items": one["recent_items"], "k": 5}
        assert "cached" not in (await client.post("/v1/recommend", json=anonymous)).json()

    run(world, cached(), scenario)


def test_batches_fold_in_per_query() -> None:
    world = World(fold_in=ALS)

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        queries = [
            {"recent_items": [{"item_id": "item-3"}], "k": 4},
            {"user_id": "u2", "k": 4},
            {"recent_items": [{"item_id": "item-8", "weight": 4}, {"item_id": "item-9"}], "k": 3},
        ]
        response = await client.post("/v1/recommend/batch", json={"queries": queries})
        assert response.status_code == 200, response.text
        results = [[i["item_id"] for i in r["items"]] for r in response.json()["results"]]
        assert results[0] == world.expected("v1", folded(world, [("item-3", None)]), 4, {"item-3"})
        both = folded(world, [("item-8", 4.0), ("item-9", None)])
        assert results[2] == world.expected("v1", both, 3, {"item-8", "item-9"})
        bad = [*queries, {"recent_items": [{"item_id": "gone"}]}]
        response = await client.post("/v1/recommend/batch", json={"queries": bad})
        assert response.status_code == 404
        assert error_of(response)["message"].startswith("queries[3].recent_items")

    run(world, settings(), scenario)
