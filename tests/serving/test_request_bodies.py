"""The published OpenAPI schema of the request bodies and the router's parser agree, over generated
bodies (hypothesis): a body the schema accepts parses to the values it states (defaults filled in,
null exclude as none, numbers as float32); a body it rejects gets a 4xx with a message.

The oracle is the JSON Schema in the router's /openapi.json document, checked by `jsonschema`:
what a client reads, not the pydantic models that produce it. Bodies are generated from the
documented fields and bounds, valid and then mutated (a field replaced by any JSON value, an
unknown field, a non-object body), with lengths at the bounds. One known difference stays out of
the generated values: JSON Schema counts 2.0 as an integer, the router (like JSON's grammar,
which writes integers without a fraction) does not, so wrong values never include integral floats.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators

from shardrec.serving.router.app import create_app
from shardrec.serving.router.config import Limits, RouterSettings
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.parsing import RequestParser, VectorBatch

# Bodies at the documented bounds (10,000 excluded ids) have long reprs; that is on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)
LIMITS = Limits()
MAX_BATCH = 256  # router.maxBatchSize's default, the bound /docs states
PARSER = RequestParser(LIMITS, MAX_BATCH)
OPENAPI = create_app(RouterSettings()).openapi()
EXAMPLES = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """JSON Schema patterns are ECMA-262 regular expressions, where `$` (no multiline flag) matches
    only at the end of the text; Python's `re`, which `jsonschema` uses, also matches it before a
    final newline, so "0\\n" would pass `^[^\\x00-\\x1f]+$` here and nowhere else."""
    if not validator.is_type(instance, "string"):
        return
    ecma = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    if not re.search(ecma, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def _validator(name: str) -> Any:
    return EcmaValidator({"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]})


SCHEMAS = {name: _validator(name) for name in ("RecommendRequest", "BatchRequest", "SimilarRequest")}


def rarely(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`rare` (the values at a size bound, which are slow to check) in about one draw in ten."""
    return st.integers(0, 9).flatmap(lambda n: rare if n == 0 else common)


# --- values -------------------------------------------------------------------------------------

_FLOAT32_MAX = float(np.finfo(np.float32).max)
any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
identifier = st.text(min_size=1, max_size=6) | st.sampled_from(
    ["", "x" * LIMITS.max_id_length, "y" * (LIMITS.max_id_length + 1), "東京", "a\nb"]
)
number = (
    st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(10**6), 10**6)
    | st.sampled_from(
        [_FLOAT32_MAX, -_FLOAT32_MAX, 3.5e38, -1e39, 2**130, 1e15, -1e15, 1.0000001e15, 0, -0.0]
    )
)
vector = rarely(
    st.lists(number, max_size=5),
    st.sampled_from([[0.25] * LIMITS.max_dimension, [0.25] * (LIMITS.max_dimension + 1)]),
)


_BOUND32 = float(np.float32(1e15))  # the float32 nearest 1e15 from below


def _b64(values: list[float]) -> str:
    return base64.b64encode(np.array(values, dtype="<f4").tobytes()).decode()


# Base64 of float32 numbers within the bounds (the schema cannot state bounds of encoded numbers:
# test_vector_b64_out_of_bounds_is_422 covers those), and strings that are not such base64.
vector_b64 = (
    st.lists(st.floats(-_BOUND32, _BOUND32, width=32), min_size=1, max_size=5).map(_b64)
    | st.sampled_from(
        [
            _b64([0.25] * LIMITS.max_dimension),
            _b64([0.25] * (LIMITS.max_dimension + 1)),
            "",
            "AAAA",
            "AAAAAA==",
        ]
    )
    | st.binary(min_size=1, max_size=9)
    .filter(lambda raw: len(raw) % 4 != 0)  # not whole float32 numbers
    .map(lambda raw: base64.b64encode(raw).decode())
    | st.text(max_size=12)
)
k = st.integers(-2, 1003) | st.sampled_from([1, LIMITS.max_k, LIMITS.max_k + 1])
exclude = rarely(
    st.none() | st.lists(identifier, max_size=3),
    st.sampled_from([["i"] * LIMITS.max_exclude, ["i"] * (LIMITS.max_exclude + 1)]),
)
weight = number | st.none() | st.sampled_from([1e-300, 1e6, 1.0000001e6])
recent_item = st.fixed_dictionaries({"item_id": identifier}, optional={"weight": weight})
recent_items = rarely(
    st.none() | st.lists(recent_item | any_json, max_size=3),
    st.sampled_from(
        [[{"item_id": "i"}] * LIMITS.max_recent_items, [{"item_id": "i"}] * (LIMITS.max_recent_items + 1)]
    ),
)
recommend = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.none() | identifier,
        "vector": st.none() | vector,
        "vector_b64": st.none() | vector_b64,
        "k": k,
        "exclude": exclude,
        "exclude_seen": st.booleans(),
        "recent_items": recent_items,
    },
)
RECOMMEND_FIELDS = ["user_id", "vector", "vector_b64", "k", "exclude", "exclude_seen", "recent_items"]
similar = st.fixed_dictionaries({"item_id": identifier}, optional={"k": k, "exclude": exclude})


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]], fields: list[str]) -> Any:
    """A body from `base`; in about half of the cases one field (or an unknown one) gets any JSON
    value, and now and then the body is not an object at all."""
    body = draw(base)
    choice = draw(st.integers(0, 9))
    if choice < 5:
        body[draw(st.sampled_from([*fields, "colour"]))] = draw(any_json)
    elif choice == 5:
        return draw(any_json)
    return body


vector_queries = st.fixed_dictionaries(
    {"vector": st.lists(number, min_size=3, max_size=3)}, optional={"k": k, "exclude_seen": st.booleans()}
)
b64_queries = st.fixed_dictionaries(
    {"vector_b64": st.lists(st.floats(-_BOUND32, _BOUND32, width=32), min_size=2, max_size=2).map(_b64)},
    optional={"k": k},
)
query_lists = rarely(
    st.lists(mutated(recommend, RECOMMEND_FIELDS), max_size=4)
    | st.lists(vector_queries, min_size=1, max_size=5)  # the plain shapes, often all valid
    | st.lists(b64_queries, min_size=1, max_size=5),
    st.sampled_from([[{"user_id": "u"}] * MAX_BATCH, [{"user_id": "u"}] * (MAX_BATCH + 1)]),
)
batch = mutated(st.fixed_dictionaries({"queries": query_lists}), ["queries"])

# --- the check ----------------------------------------------------------------------------------


def _float32(values: list[Any]) -> list[float]:
    return np.array(values, dtype=np.float64).astype(np.float32).tolist()  # type: ignore[no-any-return]


def _stated(query: dict[str, Any]) -> tuple[Any, ...]:
    """What a valid query object says, defaults filled in."""
    user_id, values, recent = query.get("user_id"), query.get("vector"), query.get("recent_items")
    if query.get("vector_b64") is not None:
        values = np.frombuffer(base64.b64decode(query["vector_b64"]), dtype="<f4").tolist()
    return (
        user_id,
        None if values is None else _float32(values),
        query.get("k", 10),
        query.get("exclude") or [],
        query.get("exclude_seen", True) if user_id is not None else None,
        None if recent is None else [(item["item_id"], item.get("weight")) for item in recent],
    )


def _got(query: Any) -> tuple[Any, ...]:
    """The same of a parsed `RecommendQuery`."""
    return (
        query.user_id,
        None if query.vector is None else query.vector.tolist(),
        query.k,
        query.exclude,
        query.exclude_seen if query.user_id is not None else None,
        query.recent,
    )


def _check(schema: str, parse: Callable[[bytes], Any], value: Any) -> tuple[bool, Any]:
    """(accepted, parsed) after asserting the parser and the schema agree on acceptance."""
    body = json.dumps(value, allow_nan=False).encode()
    documented = SCHEMAS[schema].is_valid(json.loads(body))
    try:
        parsed = parse(body)
    except ApiError as exc:
        assert not documented, (body[:300], exc.status, exc.message)
        assert 400 <= exc.status < 500 and exc.message, (body[:300], exc.status)
        return False, None
    assert documented, (body[:300], "accepted by the router, rejected by the schema")
    return True, parsed


@EXAMPLES
@given(mutated(recommend, RECOMMEND_FIELDS))
def test_recommend_bodies(value: Any) -> None:
    accepted, query = _check("RecommendRequest", PARSER.recommend, value)
    if accepted:
        assert _got(query) == _stated(value)
        assert query.vector is None or query.vector.dtype == np.float32


@EXAMPLES
@given(batch)
def test_batch_bodies(value: Any) -> None:
    accepted, parsed = _check("BatchRequest", PARSER.batch, value)
    if not accepted:
        return
    if isinstance(parsed, VectorBatch):
        assert parsed.vectors.dtype == np.float32
        got = [
            (None, row, k, [], None, None) for row, k in zip(parsed.vectors.tolist(), parsed.ks, strict=True)
        ]
    else:
        got = [_got(q) for q in parsed]
    assert got == [_stated(query) for query in value["queries"]]


@EXAMPLES
@given(mutated(similar, ["item_id", "k", "exclude"]))
def test_similar_bodies(value: Any) -> None:
    accepted, request = _check("SimilarRequest", PARSER.similar, value)
    if accepted:
        assert (request.item_id, request.k, request.exclude) == (
            value["item_id"],
            value.get("k", 10),
            value.get("exclude") or [],
        )


@pytest.mark.parametrize(
    "value", [{"item_id": "0\n"}, {"item_id": "i", "exclude": ["a\n"]}, {"item_id": "\n0"}]
)
def test_an_id_ending_in_a_newline_is_refused_by_both_schema_and_router(value: Any) -> None:
    """Hypothesis found it: Python's `$` matches before a final newline, ECMA-262's does not."""
    assert _check("SimilarRequest", PARSER.similar, value) == (False, None)


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        ("RecommendRequest", b'{"vector": [1, 2, NaN]}'),
        ("RecommendRequest", b'{"vector": [1, 2, 1e999]}'),
        ("RecommendRequest", b'{"user_id": "u", "k": 2.0}'),  # the known difference: see the docstring
        ("BatchRequest", b"{"),
        ("SimilarRequest", b""),
    ],
)
def test_bodies_that_are_not_json_or_not_integers_are_4xx(schema: str, body: bytes) -> None:
    parse = {
        "RecommendRequest": PARSER.recommend,
        "BatchRequest": PARSER.batch,
        "SimilarRequest": PARSER.similar,
    }
    with pytest.raises(ApiError) as caught:
        parse[schema](body)
    assert 400 <= caught.value.status < 500


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1.0000001e15, -3e38])
def test_vector_b64_out_of_bounds_is_422_naming_the_query_and_number(bad: float) -> None:
    """The bounds of a vector given as numbers hold for base64 too, which JSON Schema cannot state:
    the one place the router is stricter than the published schema."""
    single = {"vector_b64": _b64([0.5, bad])}
    assert SCHEMAS["RecommendRequest"].is_valid(single)
    with pytest.raises(ApiError) as caught:
        PARSER.recommend(json.dumps(single).encode())
    assert (caught.value.status, caught.value.code) == (422, "invalid_request")
    assert caught.value.message.startswith("vector_b64: every number must be finite and within +-1e15")
    assert "number 1 is" in caught.value.message
    batch = {"queries": [{"vector_b64": _b64([0.5, 0.5])}, {"vector_b64": _b64([bad, 0.5])}]}
    with pytest.raises(ApiError) as caught:
        PARSER.batch(json.dumps(batch).encode())
    assert caught.value.message.startswith("queries[1].vector_b64: every number must be finite")
    assert "number 0 is" in caught.value.message


def test_vector_b64_is_the_same_query_as_its_numbers() -> None:
    """Exact: a float32 vector sent as base64 parses to the same array as its numbers, alone, in a
    plain batch and in a batch mixed with other query kinds."""
    vectors = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    as_numbers = [{"vector": row.tolist(), "k": 5} for row in vectors]
    as_b64 = [{"vector_b64": _b64(row.tolist()), "k": 5} for row in vectors]
    one = PARSER.recommend(json.dumps(as_b64[0]).encode())
    assert one.vector is not None and one.vector.dtype == np.float32
    assert one.vector.tobytes() == vectors[0].tobytes()
    plain = PARSER.batch(json.dumps({"queries": as_b64}).encode())
    assert isinstance(plain, VectorBatch) and plain.vectors.tobytes() == vectors.tobytes()
    assert (
        plain.vectors.tobytes()
        == PARSER.batch(json.dumps({"queries": as_numbers}).encode()).vectors.tobytes()
    )  # type: ignore[union-attr]
    mixed = PARSER.batch(json.dumps({"queries": [as_b64[0], as_numbers[1], {"user_id": "u"}]}).encode())
    assert isinstance(mixed, list)
    assert mixed[0].vector is not None and mixed[0].vector.tobytes() == vectors[0].tobytes()
