"""The router's batch paths: a plain vector batch parses to one matrix equal to parsing its queries
one by one, errors name the query and field, the block layout equals the general one, the JSON
encoding of answers keeps ids and scores, and the ASCII id decode equals numpy's."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import numpy as np
import pytest

from shardrec.serving.router.config import Limits
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.parsing import RequestParser, VectorBatch
from shardrec.serving.router.response import encode_batch
from shardrec.serving.router.service import _plain_blocks, _prepare, _Query
from shardrec.serving.shard.wire import WireError, ascii_to_str
from tests.serving.test_router_app import World, run, settings

PARSER = RequestParser(Limits(max_k=50, max_dimension=8), 16)


def _outcome(body: bytes) -> Any:
    """What the batch parse makes of a body: its queries as comparable tuples, or its error."""
    try:
        parsed = PARSER.batch(body)
    except ApiError as exc:
        return ("error", exc.status, exc.code, exc.body())
    if isinstance(parsed, VectorBatch):
        return [(None, row.tolist(), k, []) for row, k in zip(parsed.vectors, parsed.ks, strict=True)]
    return [(q.user_id, None if q.vector is None else q.vector.tolist(), q.k, q.exclude) for q in parsed]


def _one_by_one(queries: list[Any]) -> Any:
    """The same queries parsed as single requests (the reference for a batch)."""
    out = []
    for query in queries:
        q = PARSER.recommend(json.dumps(query).encode())
        out.append((q.user_id, None if q.vector is None else q.vector.tolist(), q.k, q.exclude))
    return out


def _random_plain_body(rng: random.Random) -> bytes:
    dimension = rng.randint(1, 8)
    queries = []
    for _ in range(rng.randint(1, 16)):
        query: dict[str, Any] = {
            "vector": [
                rng.choice([rng.uniform(-3, 3), rng.randint(-5, 5), 1e15, 0]) for _ in range(dimension)
            ]
        }
        if rng.random() < 0.7:
            query["k"] = rng.choice([1, 3, 10, 50])
        if rng.random() < 0.3:
            query["exclude_seen"] = rng.random() < 0.5
        queries.append(query)
    return json.dumps({"queries": queries}).encode()


def test_plain_vector_batches_parse_to_one_matrix_equal_to_single_parses() -> None:
    rng = random.Random(11)
    for _ in range(300):
        body = _random_plain_body(rng)
        fast = PARSER.batch(body)
        assert isinstance(fast, VectorBatch), body
        assert fast.vectors.dtype == np.float32
        assert _outcome(body) == _one_by_one(json.loads(body)["queries"])


@pytest.mark.parametrize(
    "queries",
    [
        [{"vector": [1.0, 2.0]}, {"vector": [1.0]}],  # two lengths
        [{"vector": [1.0, 2.0], "exclude": ["item-1"]}],
        [{"vector": [1.0, 2.0], "user_id": None, "exclude": None}],  # null is "not given"
        [{"user_id": "u1", "k": 3}, {"vector": [1.0, 2.0]}],
    ],
)
def test_other_valid_batches_parse_query_by_query(queries: list[Any]) -> None:
    body = json.dumps({"queries": queries}).encode()
    outcome = _outcome(body)
    assert outcome == _one_by_one(queries)
    plain = (
        all("vector" in q and not q.get("exclude") for q in queries)
        and len({len(q["vector"]) for q in queries}) == 1
    )
    assert isinstance(PARSER.batch(body), VectorBatch) == plain


EXACTLY_ONE = "queries[0].user_id / queries[0].vector / queries[0].vector_b64: give exactly one"


@pytest.mark.parametrize(
    ("queries", "fragment"),
    [
        ([{"vector": [1.0, True]}], "queries[0].vector[1]: must be a number, got a boolean"),
        ([{"vector": [1.0, "2.5"]}], "queries[0].vector[1]: must be a number, got a string"),
        ([{"vector": [1.0, None]}], "queries[0].vector[1]: must be a number, got null"),
        ([{"vector": [1.0, [2.0]]}], "queries[0].vector[1]: must be a number, got a list"),
        ([{"vector": []}], "queries[0].vector: must not be empty"),
        ([{"vector": [0.5] * 9}], "queries[0].vector: 9 numbers, at most 8"),
        ([{"vector": [1.0, 2.0], "k": True}], "queries[0].k: must be an integer, got a boolean"),
        ([{"vector": [1.0, 2.0], "k": 2.0}], "queries[0].k: must be an integer, got a number"),
        ([{"vector": [1.0, 2.0], "k": 0}], "queries[0].k: must be within 1..50, got 0"),
        ([{"vector": [1.0, 2.0], "k": 51}], "queries[0].k: must be within 1..50, got 51"),
        ([{"vector": [1.0, 2.0], "exclude_seen": 1}], "queries[0].exclude_seen: must be true or false"),
        (
            [{"vector": [1.0, 2.0], "user_id": "u1"}],
            EXACTLY_ONE,
        ),
        ([{"vector": [1.0, 2.0], "colour": "red"}], "unknown field(s) queries[0].colour; allowed: exclude,"),
        ([{"vector": [1.0, 2.0]}, ["not", "an", "object"]], "queries[1]: must be a JSON object, got a list"),
        ([{"vector": [1.0, 2**200]}], "queries[0].vector: every number must be finite and within"),
        ([{"vector": [1.0, 1e39]}], "queries[0].vector: every number must be finite and within"),
        ([{"vector": None}], EXACTLY_ONE),
        ([{"k": 3}], EXACTLY_ONE),
    ],
)
def test_bad_queries_are_422_naming_the_field(queries: list[Any], fragment: str) -> None:
    outcome = _outcome(json.dumps({"queries": queries}).encode())
    assert outcome[:3] == ("error", 422, "invalid_request")
    assert fragment in json.loads(outcome[3])["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"[1]", 422, "request body must be a JSON object, got a list"),
        (b"{", 400, "request body is not valid JSON"),
        (b'{"queries": [{"vector": [NaN]}]}', 400, "request body is not valid JSON"),
        (b'{"queries": []}', 422, "queries: must not be empty"),
        (b'{"queries": {}}', 422, "queries: required, must be a list of query objects, got an object"),
        (b"{}", 422, "queries: required, must be a list of query objects, got null"),
        (b'{"queries": [], "x": 1}', 422, "unknown field(s) x; allowed: queries"),
        (json.dumps({"queries": [{"vector": [1.0]}] * 17}).encode(), 413, "queries: 17 queries, at most 16"),
    ],
)
def test_batch_level_errors(body: bytes, status: int, fragment: str) -> None:
    outcome = _outcome(body)
    assert outcome[:2] == ("error", status)
    assert fragment in json.loads(outcome[3])["error"]["message"]


def test_plain_blocks_are_the_blocks_of_the_resolved_queries() -> None:
    rng = random.Random(5)
    for _ in range(100):
        fast = PARSER.batch(_random_plain_body(rng))
        assert isinstance(fast, VectorBatch)
        resolved = [_Query(row, k, [[], [], []], []) for row, k in zip(fast.vectors, fast.ks, strict=True)]
        plain, reference = _plain_blocks(fast, 3), _prepare(resolved, 3)
        assert [(b.k, b.members, b.exclude_by_shard, b.explicit) for b in plain] == [
            (b.k, b.members, b.exclude_by_shard, b.explicit) for b in reference
        ]
        for block, expected in zip(plain, reference, strict=True):
            np.testing.assert_array_equal(block.vectors, expected.vectors)


_ODD_IDS = [
    "item-1",
    'quo"te',
    "back\\slash",
    "new\nline",
    "\x00nul",
    "東京",
    "ü",
    "\u2028",
    "",
    "a,b",
    '","',
    "}]}",
]


def _random_results(rng: random.Random, ids: list[str]) -> list[tuple[list[str], Any]]:
    results = []
    for _ in range(rng.randint(0, 12)):
        count = rng.choice([0, 0, 1, 3, 10])
        dtype = rng.choice([np.float32, np.float32, np.float64])
        values = [
            rng.choice([rng.uniform(-2, 2), 0.1, 1e-45, 3.4e38, float("nan"), float("-inf")])
            for _ in range(count)
        ]
        results.append(([rng.choice(ids) for _ in range(count)], np.array(values, dtype=dtype)))
    return results


@pytest.mark.parametrize("ids", [["item-1", "item-22", "東京", "x"], _ODD_IDS])
def test_batch_encoding_keeps_ids_and_float32_scores(ids: list[str]) -> None:
    rng = random.Random(3)
    for _ in range(400):
        results = _random_results(rng, ids)
        partial = rng.random() < 0.5
        decoded = json.loads(encode_batch(results, "v-1", partial, 2, 4))
        assert (decoded["index_version"], decoded["partial"], decoded["shards"]) == (
            "v-1",
            partial,
            {"answered": 2, "total": 4},
        )
        assert [[item["item_id"] for item in row["items"]] for row in decoded["results"]] == [
            r[0] for r in results
        ]
        for row, (_, scores) in zip(decoded["results"], results, strict=True):
            got = np.array([np.nan if s is None else s for s in (i["score"] for i in row["items"])])
            finite = np.isfinite(scores.astype(np.float32))
            # Finite scores read back as the same float32; orjson writes NaN and inf as null.
            np.testing.assert_array_equal(got[finite].astype(np.float32), scores.astype(np.float32)[finite])
            assert all(
                s is None for s, f in zip((i["score"] for i in row["items"]), finite, strict=True) if not f
            )


def test_batch_encoding_refuses_ids_and_scores_that_do_not_pair_up() -> None:
    results = [(["a", "b"], np.array([0.5, 0.25, 0.125], dtype=np.float32))]
    with pytest.raises(ValueError):
        encode_batch(results, "v", False, 1, 1)


def test_ascii_ids_decode_like_numpy_does() -> None:
    rng = np.random.default_rng(9)
    for width in (1, 3, 12):
        octets = rng.integers(0, 128, size=(7, 5, width), dtype=np.uint8)
        octets[rng.random(size=octets.shape) < 0.3] = 0  # NUL padding, and NULs inside
        raw = octets.view(f"S{width}").reshape(7, 5)
        decoded = ascii_to_str(raw)
        assert decoded.dtype == np.dtype(f"U{width}")
        assert decoded.tolist() == raw.astype(f"U{width}").tolist()
    assert ascii_to_str(np.zeros((0, 4), dtype="S3")).shape == (0, 4)
    with pytest.raises(WireError, match="non-ASCII"):
        ascii_to_str(np.array([[b"ok", "é".encode()]]))


def test_a_plain_batch_with_several_k_answers_like_single_requests() -> None:
    world = World()

    async def scenario(client: httpx.AsyncClient, state: Any) -> None:
        queries = [
            {"vector": [1, 0, 0, 0], "k": 3},
            {"vector": [0.5, -1, 0, 2], "exclude_seen": False},
            {"vector": [0, 0, 0, 1], "k": 3},
            {"vector": [0, 2, 1, 0], "k": 5},
        ]
        response = await client.post("/v1/recommend/batch", json={"queries": queries})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["index_version"] == "v1" and body["partial"] is False
        for query, result in zip(queries, body["results"], strict=True):
            single = await client.post("/v1/recommend", json=query)
            assert single.status_code == 200, single.text
            assert result["items"] == single.json()["items"]
            vector = np.array(query["vector"], np.float32)
            assert [item["item_id"] for item in result["items"]] == world.expected(
                "v1", vector, query.get("k", 10), set()
            )
        wrong = await client.post("/v1/recommend/batch", json={"queries": [{"vector": [1, 0, 0]}] * 2})
        assert wrong.status_code == 422
        assert "queries[0].vector: has 3 numbers" in wrong.json()["error"]["message"]

    run(world, settings(), scenario)
