"""The popular fallback: the most-seen items computed at index build and stored (checksummed) in the
layout's users part, loaded with the user table (absent in older layouts), and served flagged
`fallback: "popular"` when the router would otherwise answer 503 and router.fallback.popular allows it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from shardrec.api.v1alpha1 import RouterCacheSpec, RouterFallbackSpec
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.layout import LayoutError
from shardrec.serving.index.manifest import POPULAR_FILE, USERS_DIR
from shardrec.serving.index.users import MappedLines, UserTable, load_user_table, popular_items
from shardrec.serving.router.fallback import popular_answer
from shardrec.serving.router.parsing import RecommendQuery
from tests.serving.test_failover_integration import write_embeddings
from tests.serving.test_router_app import World, error_of, run, settings, until


def test_popular_items_count_users_not_pairs_most_first_ties_by_id() -> None:
    seen = [["b", "b", "a"], ["a", "c"], ["c"], ["d", "a"]]
    assert popular_items(seen) == [("a", 3), ("c", 2), ("b", 1), ("d", 1)]
    assert popular_items(seen, limit=2) == [("a", 3), ("c", 2)]
    assert popular_items([[], []]) == []


def table(popular: tuple[tuple[str, int], ...]) -> UserTable:
    seen = [["i1", "i3"], []]
    return UserTable(
        "v1",
        "L",
        2,
        np.zeros((2, 2), dtype=np.float32),
        ["u0", "u1"],
        {"u0": 0, "u1": 1},
        np.array([0, 2, 2], dtype=np.int64),
        [item for items in seen for item in items],
        popular=popular,
    )


def query(**fields: Any) -> RecommendQuery:
    base: dict[str, Any] = {"user_id": "u0", "vector": None, "k": 3, "exclude": [], "exclude_seen": True}
    return RecommendQuery(**{**base, **fields})


POPULAR = (("i1", 9), ("i2", 7), ("i3", 5), ("i4", 4), ("i5", 1))


def test_a_popular_answer_skips_seen_and_excluded_items_and_stops_at_k() -> None:
    answer = orjson.loads(popular_answer(table(POPULAR), query(exclude=["i4"]), "v1", 2) or b"null")
    assert [item["item_id"] for item in answer["items"]] == ["i2", "i5"]
    assert answer["items"][0]["score"] == 7.0
    assert answer["fallback"] == "popular" and answer["index_version"] == "v1"
    assert answer["shards"] == {"answered": 0, "total": 2} and answer["partial"] is False
    kept_seen = orjson.loads(
        popular_answer(table(POPULAR), query(exclude_seen=False, k=2), "v1", 2) or b"null"
    )
    assert [item["item_id"] for item in kept_seen["items"]] == ["i1", "i2"]


def test_no_popular_answer_without_a_list_for_an_unknown_user_or_a_wrong_dimension() -> None:
    assert popular_answer(table(()), query(), "v1", 2) is None
    assert popular_answer(table(POPULAR), query(user_id="nobody"), "v1", 2) is None
    vector = np.zeros(3, dtype=np.float32)
    assert popular_answer(table(POPULAR), query(user_id=None, vector=vector), "v1", 2) is None
    right = np.zeros(2, dtype=np.float32)
    assert popular_answer(table(POPULAR), query(user_id=None, vector=right), "v1", 2) is not None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("popular")
    write_embeddings(root / "emb", "v1", 1)
    out = root / "layout"
    build_layout(
        root / "emb",
        out,
        version="v1",
        shards=2,
        metric="ip",
        m=8,
        ef_construction=32,
        workers=1,
        progress=False,
    )
    return out


def test_the_build_stores_the_popular_list_checksummed_and_the_router_loads_it(built: Path) -> None:
    manifest = json.loads((built / "layout.json").read_text())
    entries = {entry["name"]: entry for entry in manifest["users"]["files"]}
    assert POPULAR_FILE in entries and entries[POPULAR_FILE]["sha256"]
    users = load_user_table(built)
    seen_by_users = [users.seen(user) for user in users.user_ids]
    assert list(users.popular) == popular_items(seen_by_users)
    assert users.popular[0][1] >= users.popular[-1][1] > 0


def test_a_layout_without_a_popular_list_loads_with_none(built: Path, tmp_path: Path) -> None:
    older = tmp_path / "older"
    older.mkdir()
    (older / USERS_DIR).mkdir()
    for path in (built / USERS_DIR).iterdir():
        if path.name != POPULAR_FILE:
            (older / USERS_DIR / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((built / "layout.json").read_text())
    manifest["users"]["files"] = [f for f in manifest["users"]["files"] if f["name"] != POPULAR_FILE]
    (older / "layout.json").write_text(json.dumps(manifest))
    assert load_user_table(older).popular == ()


def test_a_tampered_popular_list_is_refused(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    (copy / USERS_DIR).mkdir(parents=True)
    (copy / "layout.json").write_bytes((built / "layout.json").read_bytes())
    for path in (built / USERS_DIR).iterdir():
        (copy / USERS_DIR / path.name).write_bytes(path.read_bytes())
    (copy / USERS_DIR / POPULAR_FILE).write_text("v1-item-0\t999999\n")
    with pytest.raises(LayoutError):
        load_user_table(copy)


# --- in the router app (the fake shards of test_router_app) ----------------------------------------


def with_popular(world: World) -> None:
    build = world.build

    def build_with_popular(version: str, seed: int) -> Any:
        topology = build(version, seed)
        artifact = topology.artifact_dir
        world.tables[artifact] = replace(
            world.tables[artifact], popular=(("item-1", 3), ("item-7", 2), ("item-9", 1))
        )
        return topology

    world.build = build_with_popular  # type: ignore[method-assign]


def test_strict_with_a_dead_shard_answers_popular_only_when_the_spec_allows_it() -> None:
    for allowed in (False, True):
        world = World()
        with_popular(world)

        async def scenario(
            client: httpx.AsyncClient, _: Any, allowed: bool = allowed, world: World = world
        ) -> None:
            for fake in world.replicas_of("v1", 1):
                fake.mode = "refuse"
            response = await client.post("/v1/recommend", json={"user_id": "u0", "k": 2})
            text = (await client.get("/metrics")).text
            counted = 'shardrec_router_fallback_answers_total{reason="shard_unavailable",source="popular"}'
            if not allowed:
                assert response.status_code == 503 and error_of(response)["code"] == "shard_unavailable"
                assert counted not in text
                return
            assert response.status_code == 200
            answer = response.json()
            # u0 has seen item-1 and item-2: excluded, as the shards would exclude them.
            assert answer["fallback"] == "popular"
            assert [item["item_id"] for item in answer["items"]] == ["item-7", "item-9"]
            assert f"{counted} 1.0" in text

        run(world, settings(consistency="strict", fallback=RouterFallbackSpec(popular=allowed)), scenario)


def test_a_shed_request_with_nothing_cached_gets_the_popular_answer() -> None:
    world = World()
    with_popular(world)

    async def scenario(client: httpx.AsyncClient, _: Any) -> None:
        gate = asyncio.Event()
        for fake in world.fakes.values():
            fake.gate = gate
        held = [
            asyncio.create_task(client.post("/v1/recommend", json={"user_id": "u2", "k": k})) for k in (1, 2)
        ]
        await until(lambda: sum(len(f.calls) for f in world.fakes.values()) >= 2 * 2)
        answered = await client.post("/v1/recommend", json={"user_id": "u1", "k": 3})
        assert answered.status_code == 200 and answered.json()["fallback"] == "popular"
        gate.set()
        assert [(await t).status_code for t in held] == [200, 200]
        text = (await client.get("/metrics")).text
        assert 'shardrec_router_fallback_answers_total{reason="shed",source="popular"} 1.0' in text

    cache = RouterCacheSpec(enabled=True, max_bytes=1024 * 1024, ttl_seconds=60)
    spec = RouterFallbackSpec(cached=True, popular=True)
    run(world, settings(max_in_flight=2, cache=cache, fallback=spec), scenario)


def test_mapped_seen_items_slice_like_the_list_they_replace(tmp_path: Path) -> None:
    path = tmp_path / "seen_items.txt"
    items = ["a", "bé", "", "ccc", "d"]
    path.write_text("".join(f"{item}\n" for item in items), encoding="utf-8")
    lines = MappedLines(path)
    assert len(lines) == len(items)
    for start in range(len(items) + 1):
        for stop in range(start, len(items) + 1):
            assert lines[start:stop] == items[start:stop]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert len(MappedLines(empty)) == 0 and MappedLines(empty)[0:0] == []
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"a\nb")  # no final newline: counted, so the indptr check refuses the file
    assert len(MappedLines(cut)) == 2
