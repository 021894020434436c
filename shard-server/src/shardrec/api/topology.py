"""The topology a router serves from: which layout is active and which replicas serve each shard.

Written by the operator (into a ConfigMap the router watches through the API) or by the local
runtime (into a file the router watches). One model for both, so the router has a single reader.
A router swaps to a new `active` layout in one step: every request is answered from one layout.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TOPOLOGY_CONFIGMAP_KEY = "topology.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplicaEndpoint(_Model):
    """One shard-server replica."""

    name: str = Field(min_length=1, description="Stable replica name (pod name locally or in-cluster).")
    url: str = Field(pattern=r"^https?://\S+$", description="Base URL, e.g. http://127.0.0.1:9101.")


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

    @model_validator(mode="after")
    def _every_shard_listed_once(self) -> LayoutTopology:
        numbers = sorted(entry.shard for entry in self.endpoints)
        if numbers != list(range(self.shards)):
            raise ValueError(
                f"layout {self.layout}: endpoints must list shards 0..{self.shards - 1} exactly once, "
                f"got {numbers}"
            )
        return self


class Topology(_Model):
    """What a router reads. `revision` increases with every write so stale reads are detectable."""

    revision: int = Field(ge=0)
    active: LayoutTopology | None = Field(None, description="The layout that answers requests.")
