"""Validation of client request bodies, by hand on the hot path.

orjson parses, then plain type checks validate: this is several times cheaper than a pydantic model
per request, and every problem still names the field (`queries[3].vector`). The pydantic models in
`shardrec.serving.router.schemas` describe the same bodies for the OpenAPI docs only.

Errors: unparseable JSON -> 400 `invalid_json`; wrong fields -> 422 `invalid_request`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from shardrec.serving.router.config import Limits
from shardrec.serving.router.errors import ApiError, invalid

Vector = npt.NDArray[np.float32]

DEFAULT_K = 10
_RECOMMEND_FIELDS = frozenset({"user_id", "vector", "k", "exclude", "exclude_seen"})
_SIMILAR_FIELDS = frozenset({"item_id", "k", "exclude"})
_BATCH_FIELDS = frozenset({"queries"})
_PLAIN_VECTOR_FIELDS = frozenset({"vector", "k", "exclude_seen"})
_NUMBER_TYPES = frozenset({float, int})
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # exact types: bool (an int subclass) is not a number here


@dataclass(slots=True)
class RecommendQuery:
    """Exactly one of `user_id` and `vector` is set."""

    user_id: str | None
    vector: Vector | None
    k: int
    exclude: list[str]
    exclude_seen: bool


@dataclass(slots=True)
class SimilarQuery:
    item_id: str
    k: int
    exclude: list[str]


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid(f"request body must be a JSON object, got {_kind(data)}")
    return data


def parse_recommend(body: bytes, limits: Limits) -> RecommendQuery:
    return recommend_from_dict(parse_json_object(body), limits, "")


def parse_batch(body: bytes, limits: Limits, max_batch_size: int) -> list[RecommendQuery]:
    """The reference parse of a batch: one `RecommendQuery` per query (see `parse_batch_body`)."""
    return parse_queries(batch_queries(parse_json_object(body), max_batch_size), limits)


def parse_batch_body(body: bytes, limits: Limits, max_batch_size: int) -> VectorBatch | list[RecommendQuery]:
    """A batch body: a `VectorBatch` when every query is a plain vector query (the common shape),
    otherwise exactly what `parse_batch` returns, errors included."""
    queries = batch_queries(parse_json_object(body), max_batch_size)
    fast = vector_batch(queries, limits)
    return fast if fast is not None else parse_queries(queries, limits)


def batch_queries(data: dict[str, Any], max_batch_size: int) -> list[Any]:
    """The `queries` list of a batch body, checked as a list (not yet its members)."""
    _no_unknown_fields(data, _BATCH_FIELDS, "")
    queries = data.get("queries")
    if not isinstance(queries, list):
        raise invalid(f"queries: required, must be a list of query objects, got {_kind(queries)}")
    if not queries:
        raise invalid("queries: must not be empty")
    if len(queries) > max_batch_size:
        raise ApiError(
            413, "batch_too_large", f"queries: {len(queries)} queries, at most {max_batch_size} per batch"
        )
    return queries


def parse_queries(queries: list[Any], limits: Limits) -> list[RecommendQuery]:
    parsed = []
    raw_vectors: list[tuple[int, list[Any]]] = []
    for index, item in enumerate(queries):
        where = f"queries[{index}]."
        if not isinstance(item, dict):
            raise invalid(f"queries[{index}]: must be a JSON object, got {_kind(item)}")
        query = recommend_from_dict(item, limits, where, convert=False)
        if query.user_id is None:
            raw_vectors.append((index, item["vector"]))
        parsed.append(query)
    _convert_vectors(parsed, raw_vectors)
    return parsed


@dataclass(slots=True)
class VectorBatch:
    """A batch whose queries all give a `vector` of one length and at most `k` and `exclude_seen`
    (which does nothing for a vector query): nothing to resolve and nothing to exclude, so it
    is held as one matrix instead of an object per query."""

    vectors: npt.NDArray[np.float32]  # (queries, dimension)
    ks: list[int]


def vector_batch(queries: list[Any], limits: Limits) -> VectorBatch | None:
    """The queries as a `VectorBatch` if they have that shape and are valid; None otherwise, and
    then `parse_queries` decides (it names the field of any problem). Accepts exactly what
    `parse_queries` accepts for such batches, with the same numbers (a test holds them equal)."""
    vectors: list[Any] = []
    ks: list[int] = []
    max_k = limits.max_k
    for item in queries:
        if type(item) is not dict or not item.keys() <= _PLAIN_VECTOR_FIELDS:
            return None
        vector = item.get("vector")
        k = item.get("k", DEFAULT_K)
        if type(vector) is not list or type(k) is not int or not 1 <= k <= max_k:
            return None
        if type(item.get("exclude_seen", True)) is not bool:
            return None
        vectors.append(vector)
        ks.append(k)
    lengths = set(map(len, vectors))
    if len(lengths) != 1 or not 1 <= lengths.pop() <= limits.max_dimension:
        return None
    # One C-level pass over every number: bool is an int subclass numpy would take as 0/1.
    if not set(map(type, itertools.chain.from_iterable(vectors))) <= _NUMBER_TYPES:
        return None
    try:
        wide = np.array(vectors, dtype=np.float64)
    except OverflowError:
        return None
    if not np.abs(wide).max() <= _FLOAT32_MAX:
        return None
    return VectorBatch(wide.astype(np.float32), ks)


def _convert_vectors(parsed: list[RecommendQuery], raw_vectors: list[tuple[int, list[Any]]]) -> None:
    """All query vectors of a batch in one numpy conversion when they have one length (the usual
    case); their numbers were type-checked already. A failing batch is converted one by one, so
    the error names the query."""
    if not raw_vectors:
        return
    if len({len(vector) for _, vector in raw_vectors}) == 1:
        try:
            wide = np.array([vector for _, vector in raw_vectors], dtype=np.float64)
        except OverflowError:
            wide = None
        if wide is not None and np.abs(wide).max() <= _FLOAT32_MAX:
            matrix = wide.astype(np.float32)
            for row, (index, _) in enumerate(raw_vectors):
                parsed[index].vector = matrix[row]
            return
    for index, vector in raw_vectors:
        parsed[index].vector = _to_float32(vector, f"queries[{index}].vector")


def recommend_from_dict(
    data: dict[str, Any], limits: Limits, where: str, *, convert: bool = True
) -> RecommendQuery:
    """One query object. With `convert=False` the vector is checked (shape, number types) but left
    for the caller to convert; `vector` is then None."""
    _no_unknown_fields(data, _RECOMMEND_FIELDS, where)
    user_id = data.get("user_id")
    raw_vector: Any = data.get("vector")
    if (user_id is None) == (raw_vector is None):
        raise invalid(f"{where}user_id / {where}vector: give exactly one of them")
    vector = None
    if user_id is not None:
        user_id = _identifier(user_id, f"{where}user_id", limits)
    else:
        _check_vector(raw_vector, f"{where}vector", limits)
        if convert:
            vector = _to_float32(raw_vector, f"{where}vector")
    exclude_seen = data.get("exclude_seen", True)
    if type(exclude_seen) is not bool:
        raise invalid(f"{where}exclude_seen: must be true or false, got {_kind(exclude_seen)}")
    return RecommendQuery(
        user_id=user_id,
        vector=vector,
        k=_k(data.get("k", DEFAULT_K), f"{where}k", limits),
        exclude=_exclude(data.get("exclude"), f"{where}exclude", limits),
        exclude_seen=exclude_seen,
    )


def parse_similar(body: bytes, limits: Limits) -> SimilarQuery:
    data = parse_json_object(body)
    _no_unknown_fields(data, _SIMILAR_FIELDS, "")
    if "item_id" not in data:
        raise invalid("item_id: required")
    return SimilarQuery(
        item_id=_identifier(data["item_id"], "item_id", limits),
        k=_k(data.get("k", DEFAULT_K), "k", limits),
        exclude=_exclude(data.get("exclude"), "exclude", limits),
    )


def check_dimension(vector: Vector, dimension: int, where: str = "vector") -> None:
    if vector.shape[0] != dimension:
        raise invalid(f"{where}: has {vector.shape[0]} numbers, the active index has dimension {dimension}")


def _no_unknown_fields(data: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = data.keys() - allowed
    if unknown:
        names = ", ".join(sorted(f"{where}{name}" for name in unknown))
        raise invalid(f"unknown field(s) {names}; allowed: {', '.join(sorted(allowed))}")


def _k(value: Any, field: str, limits: Limits) -> int:
    if type(value) is not int:
        raise invalid(f"{field}: must be an integer, got {_kind(value)}")
    if not 1 <= value <= limits.max_k:
        raise invalid(f"{field}: must be within 1..{limits.max_k}, got {value}")
    return value


def _identifier(value: Any, field: str, limits: Limits) -> str:
    if type(value) is not str:
        raise invalid(f"{field}: must be a string, got {_kind(value)}")
    if not value or len(value) > limits.max_id_length:
        raise invalid(f"{field}: must be 1..{limits.max_id_length} characters long")
    return value


def _exclude(value: Any, field: str, limits: Limits) -> list[str]:
    if value is None:
        return []
    if type(value) is not list:
        raise invalid(f"{field}: must be a list of item ids, got {_kind(value)}")
    if len(value) > limits.max_exclude:
        raise invalid(f"{field}: {len(value)} ids, at most {limits.max_exclude}")
    for index, item in enumerate(value):
        if type(item) is not str or not item or len(item) > limits.max_id_length:
            raise invalid(f"{field}[{index}]: must be a non-empty string of at most {limits.max_id_length}")
    return value


def _check_vector(value: Any, field: str, limits: Limits) -> None:
    if type(value) is not list:
        raise invalid(f"{field}: must be a list of numbers, got {_kind(value)}")
    if not value:
        raise invalid(f"{field}: must not be empty")
    if len(value) > limits.max_dimension:
        raise invalid(f"{field}: {len(value)} numbers, at most {limits.max_dimension}")
    if not set(map(type, value)) <= _NUMBER_TYPES:  # one C-level pass; find the culprit only on error
        for index, number in enumerate(value):
            if type(number) not in _NUMBER_TYPES:
                raise invalid(f"{field}[{index}]: must be a number, got {_kind(number)}")


def _to_float32(value: list[Any], field: str) -> Vector:
    try:
        wide = np.array(value, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise invalid(f"{field}: every number must be finite and within float32 range") from None
    # Checked in float64 so the float32 cast below can neither overflow nor warn.
    if not np.abs(wide).max() <= _FLOAT32_MAX:
        raise invalid(f"{field}: every number must be finite and within float32 range")
    return wide.astype(np.float32)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
