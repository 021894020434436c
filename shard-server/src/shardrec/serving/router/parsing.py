"""Client request bodies -> queries: pydantic's `model_validate_json` with the strict, bounded
models of `shardrec.serving.router.schemas` (the ones /docs shows), then one float32 conversion.

A hand-written validator (orjson + type checks) was dropped after `make bench-ab`: pydantic doing
the same validation needed 0.86x its CPU per body (geometric mean over single queries and batches
of 64 at k=10 and k=100; 0.70x to 1.07x), under the 1.3x a hand-written hot path must win by
(docs/router.md). The docs and the parser are now one thing; tests/serving/test_request_bodies.py
checks them against the published OpenAPI schema over generated bodies.

Errors keep the router's one-line messages that name the field (`queries[3].vector[2]: must be a
number, got a string`): unparseable JSON (NaN and Infinity included) -> 400 `invalid_json`; wrong
fields -> 422 `invalid_request`; more queries than router.maxBatchSize, or more results in all
(the sum of k) than Limits.max_batch_results -> 413 `batch_too_large`.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from shardrec.serving.router.config import Limits
from shardrec.serving.router.errors import ApiError, invalid
from shardrec.serving.router.schemas import MAX_COMPONENT, RecommendRequest, request_models

Vector = npt.NDArray[np.float32]
M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class RecommendQuery:
    """Exactly one of `user_id` and `vector` is set."""

    user_id: str | None
    vector: Vector | None
    k: int
    exclude: list[str]
    exclude_seen: bool
    # User fold-in: (item id, weight or None for the layout's default), with or without user_id.
    recent: list[tuple[str, float | None]] | None = None
    vector_field: str = "vector"  # the field the vector came in, for messages: or "vector_b64"


@dataclass(slots=True)
class SimilarQuery:
    item_id: str
    k: int
    exclude: list[str]


@dataclass(slots=True)
class VectorBatch:
    """A batch whose queries all give a `vector` (or all a `vector_b64`) of one length and no
    `exclude` (`exclude_seen` does nothing for a vector query): nothing to resolve and nothing to
    exclude, so it is held as one matrix instead of an object per query."""

    vectors: npt.NDArray[np.float32]  # (queries, dimension)
    ks: list[int]
    vector_field: str = "vector"  # the field the vectors came in, for messages: or "vector_b64"


class RequestParser:
    """The three request bodies under one set of bounds."""

    def __init__(self, limits: Limits, max_batch_size: int) -> None:
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.models = request_models(limits, max_batch_size)

    def recommend(self, body: bytes) -> RecommendQuery:
        return _query(self._validate(self.models.recommend, body), "")

    def batch(self, body: bytes) -> VectorBatch | list[RecommendQuery]:
        """A `VectorBatch` when every query is a plain vector query of one length (the common
        shape), otherwise one `RecommendQuery` per query."""
        queries = self._validate(self.models.batch, body).queries
        results = sum(query.k for query in queries)
        if results > self.limits.max_batch_results:
            raise ApiError(
                413,
                "batch_too_large",
                f"queries: {len(queries)} queries asking for {results} results in all (the sum of "
                f"their k), at most {self.limits.max_batch_results} per batch",
            )
        texts = [query.vector_b64 for query in queries if query.vector_b64 is not None and not query.exclude]
        if len(texts) == len(queries) and len(set(map(len, texts))) == 1:
            return VectorBatch(_decode_rows(texts), [query.k for query in queries], "vector_b64")
        vectors = [query.vector for query in queries if query.vector is not None and not query.exclude]
        if len(vectors) == len(queries) and len(set(map(len, vectors))) == 1:
            return VectorBatch(np.array(vectors, dtype=np.float32), [query.k for query in queries])
        return [_query(query, f"queries[{i}].") for i, query in enumerate(queries)]

    def similar(self, body: bytes) -> SimilarQuery:
        request = self._validate(self.models.similar, body)
        return SimilarQuery(request.item_id, request.k, request.exclude or [])

    def _validate(self, model: type[M], body: bytes) -> M:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise self._problem(model, exc.errors(include_url=False)) from None

    def _problem(self, model: type[BaseModel], errors: list[ErrorDetails]) -> ApiError:
        """The one error a client sees: broken JSON first, then too many queries, unknown fields, and
        otherwise the first problem pydantic found."""
        for error in errors:
            if error["type"] == "json_invalid":
                reason = error.get("ctx", {}).get("error", error["msg"])
                return ApiError(400, "invalid_json", f"request body is not valid JSON: {reason}")
            if _non_finite(error.get("input")):
                return ApiError(
                    400, "invalid_json", "request body is not valid JSON: NaN and Infinity are not numbers"
                )
        for error in errors:
            if error["type"] == "too_long" and error["loc"] == ("queries",):
                count = error.get("ctx", {}).get("actual_length", "more")
                return ApiError(
                    413,
                    "batch_too_large",
                    f"queries: {count} queries, at most {self.max_batch_size} per batch",
                )
        unknown = [error for error in errors if error["type"] == "extra_forbidden"]
        if unknown:
            parent = unknown[0]["loc"][:-1]
            names = sorted(_path(error["loc"]) for error in unknown if error["loc"][:-1] == parent)
            allowed = _fields_at(model, parent)
            return invalid(f"unknown field(s) {', '.join(names)}; allowed: {', '.join(allowed)}")
        return invalid(_message(errors[0], self.limits))


def check_dimension(vector: Vector, dimension: int, where: str = "vector") -> None:
    if vector.shape[0] != dimension:
        raise invalid(f"{where}: has {vector.shape[0]} numbers, the active index has dimension {dimension}")


def _query(request: RecommendRequest, where: str) -> RecommendQuery:
    field = "vector"
    if request.vector_b64 is not None:
        field = "vector_b64"
        vector: Vector | None = decode_vector_b64(request.vector_b64, f"{where}vector_b64")
    else:
        vector = None if request.vector is None else np.array(request.vector, dtype=np.float32)
    recent = (
        None
        if request.recent_items is None
        else [(item.item_id, item.weight) for item in request.recent_items]
    )
    return RecommendQuery(
        request.user_id, vector, request.k, request.exclude or [], request.exclude_seen, recent, field
    )


def decode_vector_b64(text: str, where: str) -> Vector:
    """A `vector_b64` the schema's pattern accepted -> its float32 numbers, within the bounds of a
    vector given as numbers (which no JSON Schema can state of base64)."""
    vector = float32_from_b64(text)
    assert vector is not None, "the schema's pattern admits only base64 of whole float32 numbers"
    _check_bounds(vector[None, :], lambda _: where)
    return vector


def float32_from_b64(text: object) -> Vector | None:
    """Base64 (RFC 4648, with padding) of little-endian float32 numbers -> them, from a body no
    schema has checked (`PUT /v1/items/{id}`); None when `text` is not that."""
    if not isinstance(text, str):
        return None
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        return None
    if not raw or len(raw) % 4:
        return None
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _decode_rows(encoded: list[str]) -> npt.NDArray[np.float32]:
    """The `vector_b64` of every query of a batch, all of one length -> one (queries, dimension)
    float32 array: one decode per query and one bounds check for the whole batch."""
    raw = b"".join([binascii.a2b_base64(text, strict_mode=True) for text in encoded])
    vectors = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(len(encoded), -1)
    _check_bounds(vectors, lambda row: f"queries[{row}].vector_b64")
    return vectors


def _check_bounds(vectors: npt.NDArray[np.float32], name: Callable[[int], str]) -> None:
    # NaN compares false, so one comparison of the largest magnitude catches it with infinities and
    # numbers beyond the bound; only then is the first offending number looked for.
    if np.abs(vectors).max() <= MAX_COMPONENT:
        return
    inside = (np.abs(vectors) <= MAX_COMPONENT).all(axis=1)
    row = int(np.argmin(inside))
    column = int(np.argmin(np.abs(vectors[row]) <= MAX_COMPONENT))
    raise invalid(
        f"{name(row)}: every number must be finite and within +-1e15 (number {column} is "
        f"{float(vectors[row, column])})"
    )


# --- errors: pydantic's error list -> one message naming the field ----------------------------------


def _message(error: ErrorDetails, limits: Limits) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    field = _path(loc)
    name = next((part for part in reversed(loc) if isinstance(part, str)), "")
    ctx: dict[str, Any] = dict(error.get("ctx", {}))
    in_list = bool(loc) and isinstance(loc[-1], int)
    if kind == "exactly_one":
        where = f"{field}." if field else ""
        return (
            f"{where}user_id / {where}vector / {where}vector_b64: give exactly one of them "
            f"({where}recent_items may come alone or with user_id, never with a vector)"
        )
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return (
            f"{field}: must be a JSON object, got {_kind(value)}"
            if field
            else (f"request body must be a JSON object, got {_kind(value)}")
        )
    if kind == "missing":
        if name == "queries":
            return "queries: required, must be a list of query objects, got null"
        return f"{field}: required"
    if name == "queries" and not in_list:
        if kind == "too_short":
            return "queries: must not be empty"
        return f"queries: required, must be a list of query objects, got {_kind(value)}"
    if name == "vector_b64":
        if kind in {"string_pattern_mismatch", "string_too_short"}:
            return (
                f"{field}: must be base64 (RFC 4648, with padding) of little-endian float32 numbers, "
                "4 bytes each"
            )
        if kind == "string_too_long":
            return f"{field}: more than {limits.max_dimension} numbers"
        return f"{field}: must be a base64 string, got {_kind(value)}"
    if kind == "string_pattern_mismatch":
        return f"{field}: must not contain control characters (TAB, CR, LF, NUL, ...)"
    if name == "exclude" and in_list:
        return f"{field}: must be a non-empty string of at most {limits.max_id_length}"
    if name == "exclude":
        if kind == "too_long":
            return f"{field}: {ctx.get('actual_length', 'too many')} ids, at most {limits.max_exclude}"
        return f"{field}: must be a list of item ids, got {_kind(value)}"
    if name == "vector" and in_list:
        if kind in {"greater_than_equal", "less_than_equal"}:
            return f"{_path(loc[:-1])}: every number must be finite and within +-1e15"
        return f"{field}: must be a number, got {_kind(value)}"
    if name == "vector":
        if kind == "too_short":
            return f"{field}: must not be empty"
        if kind == "too_long":
            return f"{field}: {ctx.get('actual_length', 'too many')} numbers, at most {limits.max_dimension}"
        return f"{field}: must be a list of numbers, got {_kind(value)}"
    if name == "k":
        if kind in {"greater_than_equal", "less_than_equal"}:
            return f"{field}: must be within 1..{limits.max_k}, got {value}"
        return f"{field}: must be an integer, got {_kind(value)}"
    if name == "recent_items" and not in_list:
        if kind == "too_short":
            return f"{field}: must not be empty (null or absent: no fold-in)"
        if kind == "too_long":
            return f"{field}: {ctx.get('actual_length', 'too many')} items, at most {limits.max_recent_items}"
        return f"{field}: must be a list of {{item_id, weight}} objects, got {_kind(value)}"
    if name == "weight":
        if kind in {"greater_than", "less_than_equal"}:
            return f"{field}: must be greater than 0 and at most 1e6, got {value}"
        return f"{field}: must be a number or null, got {_kind(value)}"
    if name in {"user_id", "item_id"}:
        if kind in {"string_too_short", "string_too_long"}:
            return f"{field}: must be 1..{limits.max_id_length} characters long"
        return f"{field}: must be a string, got {_kind(value)}"
    if name == "exclude_seen":
        return f"{field}: must be true or false, got {_kind(value)}"
    return f"{field}: {error['msg']}"


def _path(loc: tuple[int | str, ...]) -> str:
    """('queries', 3, 'vector', 2) -> 'queries[3].vector[2]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names allowed in the object at `loc` of a body of `model`."""
    current: Any = model
    for part in loc:
        if isinstance(part, str):
            current = _model_in(current.model_fields[part].annotation)
    return sorted(current.model_fields)


def _model_in(annotation: Any) -> Any:
    """The model class inside a field's annotation (`list[M]`, `Annotated[list[M], ...] | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _non_finite(value: object) -> bool:
    return type(value) is float and not math.isfinite(value)


def _kind(value: object) -> str:
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
