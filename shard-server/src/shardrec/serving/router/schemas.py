"""Request and response bodies as pydantic models: the OpenAPI document at /docs, and (requests)
the validation of every client body (`shardrec.serving.router.parsing`).

Request models are strict (no "10" for 10, no true for 1) and bounded by the router's `Limits`;
`request_models(limits, max_batch_size)` builds them for other bounds, `RecommendRequest` and
friends below are the ones for the default `Limits()` that /docs shows. Numbers in a vector are
finite and within +-MAX_COMPONENT (1e15), so neither the float32 conversion after validation nor
the scores overflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shardrec.serving.router.config import Limits

DEFAULT_K = 10
FLOAT32_MAX = float(np.finfo(np.float32).max)
DEFAULT_LIMITS = Limits()
DEFAULT_MAX_BATCH_SIZE = 256


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""User and item ids: 1..Limits.max_id_length characters of any Unicode text but the C0 control
characters and DEL (so no TAB, CR, LF or NUL: docs/embeddings-format.md keeps those out of stored
ids, so an id holding one can never match)."""


def _identifier(limits: Limits) -> Any:
    return Annotated[
        str, StringConstraints(min_length=1, max_length=limits.max_id_length, pattern=ID_PATTERN)
    ]


MAX_COMPONENT = 1e15
"""Bound on each number of a query vector: a vector of 4096 such numbers still has a squared length
well inside float32 (so its scores are finite numbers, never inf or NaN)."""
_NUMBER = Annotated[float, Field(ge=-MAX_COMPONENT, le=MAX_COMPONENT)]

_ID = _identifier(DEFAULT_LIMITS)

VECTOR_B64_PATTERN = r"^(?:[A-Za-z0-9+/]{16})*(?:[A-Za-z0-9+/]{6}==|[A-Za-z0-9+/]{11}=)?$"
"""Standard base64 (RFC 4648, with padding) of a whole number of 4-byte floats: groups of 16
characters hold 3 floats; a last group of 8 characters holds 1, of 12 characters 2."""

VECTOR_B64_DOC = (
    "Or: the query vector as base64 (RFC 4648, with padding) of its little-endian float32 numbers, "
    "4 bytes each, as numpy's `vector.astype('<f4').tobytes()` gives and OpenAI's embeddings API returns "
    "with encoding_format=base64: 5.3 characters per number, exact, and cheaper for the router to read "
    "in batches. The same bounds apply (finite, within +-1e15)."
)


def b64_length(numbers: int) -> int:
    """Characters of the padded base64 of `numbers` float32 numbers."""
    return 4 * -(-4 * numbers // 3)


def _vector_b64(limits: Limits) -> Any:
    return Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=b64_length(limits.max_dimension), pattern=VECTOR_B64_PATTERN
        ),
    ]


MAX_WEIGHT = 1e6
"""Bound on the weight of a recent item (a rating, a dwell time, a count: anything positive)."""


class RecentItem(_Request):
    item_id: _ID = Field(description="An item the user interacted with lately.")  # type: ignore[valid-type]
    weight: Annotated[float, Field(gt=0, le=MAX_WEIGHT)] | None = Field(
        None,
        description=(
            "How strong the interaction was, on the scale of the training ratings (0 < weight <= 1e6); "
            "null or absent: the layout's default weight (the mean training rating)."
        ),
    )


def _recent_items(limits: Limits) -> Any:
    item = RecentItem if limits == DEFAULT_LIMITS else _recent_item_model(limits)
    return Annotated[list[item], Field(min_length=1, max_length=limits.max_recent_items)] | None  # type: ignore[valid-type]


@lru_cache(maxsize=16)
def _recent_item_model(limits: Limits) -> type[RecentItem]:
    return create_model("RecentItem", __base__=RecentItem, item_id=(_identifier(limits), ...))


RECENT_ITEMS_DOC = (
    "User fold-in: the user's latest interactions, newest or not (order does not matter). The router "
    "computes the user's vector from these items' vectors alone (implicit ALS: the closed-form fold-in; "
    "other models: the weighted mean) and never returns them. Without user_id it serves users the "
    "layout does not know (cold start); with a known user_id it replaces that user's stored vector "
    "(the router has the user's seen items but not their ratings, so it cannot re-solve over the whole "
    "history: send as much of it as matters), and exclude_seen still applies. Ids the layout does not "
    "hold are skipped; 404 unknown_items when none of them is held and there is no known user_id to "
    "fall back on; 409 fold_in_unavailable when the layout was built without fold-in."
)


class RecommendRequest(_Request):
    # A vector (numbers or base64), or a user_id and/or recent_items; stated in the schema too (null
    # counts as not given).
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["vector"], "properties": {"vector": {"type": "array"}}},
                {"required": ["vector_b64"], "properties": {"vector_b64": {"type": "string"}}},
                {
                    "anyOf": [
                        {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
                        {"required": ["recent_items"], "properties": {"recent_items": {"type": "array"}}},
                    ]
                },
            ]
        }
    )

    user_id: _ID | None = Field(  # type: ignore[valid-type]
        None, description="Recommend for this user (embedding from the active index version)."
    )
    vector: Annotated[list[_NUMBER], Field(min_length=1, max_length=DEFAULT_LIMITS.max_dimension)] | None = (
        Field(None, description="Or: a query vector of the index dimension (numbers within +-1e15).")
    )
    vector_b64: _vector_b64(DEFAULT_LIMITS) | None = Field(None, description=VECTOR_B64_DOC)  # type: ignore[valid-type]
    k: int = Field(DEFAULT_K, ge=1, le=DEFAULT_LIMITS.max_k, description="How many items.")
    exclude: Annotated[list[_ID], Field(max_length=DEFAULT_LIMITS.max_exclude)] | None = Field(  # type: ignore[valid-type]
        None, description="Item ids never to return (null: none)."
    )
    exclude_seen: bool = Field(
        True, description="With user_id: leave out the items the user has already seen."
    )
    recent_items: _recent_items(DEFAULT_LIMITS) = Field(  # type: ignore[valid-type]
        None, description=RECENT_ITEMS_DOC
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RecommendRequest:
        given = (self.user_id is not None or self.recent_items is not None) + (self.vector is not None)
        if given + (self.vector_b64 is not None) != 1:
            raise PydanticCustomError(
                "exactly_one",
                "give exactly one of user_id, vector and vector_b64 (or recent_items, not with a vector)",
            )
        return self


class BatchRequest(_Request):
    queries: list[RecommendRequest] = Field(
        min_length=1, max_length=DEFAULT_MAX_BATCH_SIZE, description="Up to router.maxBatchSize queries."
    )


class SimilarRequest(_Request):
    item_id: _ID = Field(  # type: ignore[valid-type]
        description="Items similar to this one (it is never in its own answer)."
    )
    k: int = Field(DEFAULT_K, ge=1, le=DEFAULT_LIMITS.max_k)
    exclude: Annotated[list[_ID], Field(max_length=DEFAULT_LIMITS.max_exclude)] | None = None  # type: ignore[valid-type]


@dataclass(frozen=True)
class RequestModels:
    recommend: type[RecommendRequest]
    batch: type[BatchRequest]
    similar: type[SimilarRequest]


@lru_cache(maxsize=16)
def request_models(limits: Limits, max_batch_size: int) -> RequestModels:
    """The request models with these bounds (the module's own for the defaults)."""
    if limits == DEFAULT_LIMITS and max_batch_size == DEFAULT_MAX_BATCH_SIZE:
        return RequestModels(RecommendRequest, BatchRequest, SimilarRequest)
    ident = _identifier(limits)
    ids: Any = (Annotated[list[ident], Field(max_length=limits.max_exclude)] | None, None)  # type: ignore[valid-type]
    k = (int, Field(DEFAULT_K, ge=1, le=limits.max_k))
    recommend = create_model(
        "RecommendRequest",
        __base__=RecommendRequest,
        user_id=(ident | None, None),
        vector=(Annotated[list[_NUMBER], Field(min_length=1, max_length=limits.max_dimension)] | None, None),
        vector_b64=(_vector_b64(limits) | None, Field(None, description=VECTOR_B64_DOC)),
        k=k,
        exclude=ids,
        recent_items=(_recent_items(limits), Field(None, description=RECENT_ITEMS_DOC)),
    )
    batch = create_model(
        "BatchRequest",
        __base__=BatchRequest,
        queries=(list[recommend], Field(min_length=1, max_length=max_batch_size)),
    )
    similar = create_model("SimilarRequest", __base__=SimilarRequest, item_id=(ident, ...), k=k, exclude=ids)
    return RequestModels(recommend, batch, similar)


class ScoredItem(_Doc):
    item_id: str
    score: float = Field(description="Higher is better for every metric.")


class Coverage(_Doc):
    answered: int = Field(description="Shards that answered.")
    total: int = Field(description="Shards of the layout.")


class RecommendResponse(_Doc):
    items: list[ScoredItem]
    index_version: str = Field(description="The one index version every item came from.")
    partial: bool = Field(description="True when a shard did not answer (consistency: available).")
    shards: Coverage
    cached: bool = Field(
        False,
        description=(
            "Present and true when the answer came from the router's result cache (router.cache): the "
            "answer the shards gave for the same query on the same layout. Absent otherwise."
        ),
    )
    fallback: Literal["cached"] | None = Field(
        None,
        description=(
            "Present when the router answered instead of a 503 (router.fallback): cached = from the "
            "result cache, possibly older than its TTL. Absent for regular answers."
        ),
    )


class BatchResult(_Doc):
    items: list[ScoredItem]


class BatchResponse(_Doc):
    results: list[BatchResult] = Field(description="One per query, in request order.")
    index_version: str
    partial: bool
    shards: Coverage


class ErrorDetail(_Doc):
    code: str
    message: str


class ErrorResponse(_Doc):
    error: ErrorDetail
