"""Request and response bodies as pydantic models, for the OpenAPI document at /docs only.

The hot path validates by hand (`shardrec.serving.router.parsing`); these models describe the same bodies
and are checked against it by tests, so the docs cannot drift from what the router accepts.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shardrec.api.commands import MAX_K


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Doc):
    user_id: str | None = Field(
        None, description="Recommend for this user (embedding from the active index version)."
    )
    vector: list[float] | None = Field(
        None, description="Or: a query vector of the index dimension (finite numbers)."
    )
    k: int = Field(10, ge=1, le=MAX_K, description="How many items.")
    exclude: list[str] = Field(default_factory=list, description="Item ids never to return.")
    exclude_seen: bool = Field(
        True, description="With user_id: leave out the items the user has already seen."
    )


class BatchRequest(_Doc):
    queries: list[RecommendRequest] = Field(description="Up to router.maxBatchSize queries.")


class SimilarRequest(_Doc):
    item_id: str = Field(description="Items similar to this one (it is never in its own answer).")
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[str] = Field(default_factory=list)


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
