"""The topology a router serves from: which layout is active and which replicas serve each shard.

Written by the operator (into a ConfigMap the router watches through the API) or by the local
runtime (into a file the router watches). One model for both, so the router has a single reader.
A router swaps to a new `active` layout in one step: every request is answered from one layout.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

TOPOLOGY_CONFIGMAP_KEY = "topology.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _without_unset_canary(handler: SerializerFunctionWrapHandler, model: BaseModel) -> dict[str, Any]:
    """The model's dict without `canary` when it is None: readers older than the canary (routers
    and operators, extra fields forbidden) keep accepting every document written without one."""
    data: dict[str, Any] = handler(model)
    if data.get("canary", 0) is None:
        del data["canary"]
    return data


class ReplicaEndpoint(_Model):
    """One shard-server replica."""

    name: str = Field(min_length=1, description="Stable replica name (pod name locally or in-cluster).")
    url: str = Field(pattern=r"^https?://\S+$", description="Base URL, e.g. http://127.0.0.1:9101.")
    zone: str | None = Field(
        None,
        max_length=253,
        # Left out of the document when unknown: routers from before zones (extra="forbid") still
        # read every topology that names none.
        exclude_if=lambda zone: zone is None,
        description="Zone of the replica's node (topology.kubernetes.io/zone), when known: a router "
        "prefers replicas in its own zone.",
    )


class ShardEndpoints(_Model):
    """All replicas of one shard."""

    shard: int = Field(ge=0)
    replicas: list[ReplicaEndpoint] = Field(default_factory=list)


class LayoutTopology(_Model):
    """A layout the router can serve: one index version split into `shards` partitions."""

    layout: str = Field(min_length=1, description="Layout id.")
    version: str = Field(min_length=1, description="Index version; every answer names it.")
    shards: int = Field(ge=1)
    dimension: int = Field(ge=1)
    metric: Literal["ip", "cosine", "l2"]
    artifact_dir: str = Field(
        description="Layout artifact folder; the router reads user embeddings and seen items from it."
    )
    endpoints: list[ShardEndpoints]
    ef_search: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=(
            "HNSW ef the router asks every shard to search with (spec.index.hnsw.efSearch), applied "
            "live to later queries; None: each shard's own default (its --ef-search)."
        ),
    )

    @model_validator(mode="after")
    def _every_shard_listed_once(self) -> LayoutTopology:
        numbers = sorted(entry.shard for entry in self.endpoints)
        if numbers != list(range(self.shards)):
            raise ValueError(
                f"layout {self.layout}: endpoints must list shards 0..{self.shards - 1} exactly once, "
                f"got {numbers}"
            )
        return self


class CanaryRoute(_Model):
    """The canary section (`rollout.strategy: Canary`): how the routers treat the staged layout.

    `weight` percent of users are answered by it, chosen by a hash of (user id, layout) so the same
    user gets the same version on every router for the whole step (and stays on the candidate as
    the weight grows); `sample_rate` of queries are also asked of the other layout off the request's
    path and the two answers compared; measurements are reported under `step` (`GET /canary`)."""

    layout: str = Field(min_length=1, description="The candidate: must be the staged layout.")
    step: int = Field(ge=0, description="Canary step the measurements belong to.")
    weight: int = Field(0, ge=0, le=100, description="Percent of users answered by the candidate.")
    sample_rate: float = Field(0.0, ge=0, le=1, description="Share of queries mirrored and compared.")
    max_inflight: int = Field(
        8, ge=1, le=1024, description="Mirrored requests in flight at most (per router)."
    )


class Topology(_Model):
    """What a router reads.

    Documents are ordered by `(epoch, revision)`: `revision` grows with every write, and `epoch`
    names the sequence it grows in. A writer that lost track of the last revision (the document
    and the record of it were both lost) starts a new epoch, and routers take a newer epoch even
    with a lower revision, so a reset never leaves routers ignoring every later switch.

    A switch has two steps (`shardrec.planning.fleet.next_topology`): the new layout is first
    `staged`, so every router loads its user table and opens its shard connections while still
    answering from `active`; once every ready router reports it prepared, `active` names it and
    the routers swap in one assignment each. That keeps the window in which two routers serve
    different layouts as short as a topology propagation.
    """

    revision: int = Field(ge=0)
    epoch: int = Field(
        0, ge=0, description="Start of this revision sequence (ms since the Unix epoch); 0 for the first."
    )
    active: LayoutTopology | None = Field(None, description="The layout that answers requests.")
    staged: LayoutTopology | None = Field(
        None, description="A layout to load ahead of a switch; it answers no request until it is active."
    )

    canary: CanaryRoute | None = Field(
        None, description="Canary traffic to the staged layout; None: every request goes to `active`."
    )

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_unset_canary(handler, self)

    @model_validator(mode="after")
    def _canary_is_the_staged_layout(self) -> Topology:
        if self.canary is not None and (self.staged is None or self.staged.layout != self.canary.layout):
            staged = self.staged.layout if self.staged is not None else None
            raise ValueError(f"canary layout {self.canary.layout} is not the staged layout ({staged})")
        return self

    @property
    def order(self) -> tuple[int, int]:
        """Sort key of documents: a router applies a document whose order is not below its own."""
        return (self.epoch, self.revision)


ROUTER_SERVING_ANNOTATION = "shardrec.io/router-serving"
"""Pod annotation in which a router reports `RouterServing` (JSON) on Kubernetes."""


class RouterServing(_Model):
    """What one router reports it serves: in `/readyz`, and on Kubernetes in its pod's
    `ROUTER_SERVING_ANNOTATION`. The operator and the local runtime confirm switches from these."""

    layout: str | None = Field(None, description="Layout answering requests; None before the first.")
    version: str | None = Field(None, description="Index version of `layout`.")
    revision: int = Field(-1, description="Revision of the last topology document applied.")
    epoch: int = Field(0, ge=0, description="Epoch of the last topology document applied.")
    prepared: str | None = Field(None, description="Staged layout loaded and ready to switch to.")
    error: str = Field("", max_length=1024, description="Why the last document was rejected, if it was.")
    switched_at: float = Field(0.0, description="Wall-clock time (Unix seconds) `layout` began to answer.")
    canary: dict[str, str | int | float | None] | None = Field(
        None,
        description=(
            "Canary measurements of the current step (as `GET /canary`: sums over this router, read "
            "by `shardrec.api.canary.CanaryStats.from_report`); None without a canary."
        ),
    )

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_unset_canary(handler, self)
