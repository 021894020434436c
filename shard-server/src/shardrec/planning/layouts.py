"""What defines an index layout, and its short stable id.

A layout is one immutable, servable arrangement of the index: an index version built from one
embeddings source, split into `shards` partitions by one scheme, with one set of build
parameters. Anything that changes the bytes of a shard's index makes a new layout (and so a
blue/green rollout); anything that can change on running processes does not: replicasPerShard
(scale) and efSearch (a query-time knob) are deliberately left out.

The id names child objects (`<cluster>-<layoutid>-<shard>`), artifact folders and router
topologies, so it must be stable across processes and releases: it hashes a canonical JSON
document whose keys never change meaning.

The write log (`spec.writes`) is part of a layout although it changes no index byte: on
Kubernetes each shard of a layout is a StatefulSet, and a StatefulSet's volumeClaimTemplates
cannot change, so whether its replicas keep a write-log claim (and its size and class) is fixed
when the layout is created. Turning writes on or off, or changing the log volume, therefore makes
a new layout, rolled out blue/green like any other (the build runs again). The write-log fields
are left out of the canonical JSON while writes are off, so the id of every layout planned
without writes (every layout before they existed) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from shardrec.api.v1alpha1 import RecommenderClusterSpec

LAYOUT_ID_LENGTH = 10
"""Hex characters of the layout id: 40 bits, collision-free in practice for the few layouts of a
cluster, and short enough that `<cluster>-<layoutid>-<shard>` fits a 63-character DNS label."""

Metric = Literal["ip", "cosine", "l2"]

_OPTIONAL = frozenset({"write_log_size", "write_log_storage_class"})
"""Fields absent from the canonical JSON while empty."""


@dataclass(frozen=True)
class LayoutSpec:
    """Everything that defines a layout's artifacts. Two equal LayoutSpecs are one layout."""

    version: str
    source: str
    shards: int
    partitioning: str
    dimension: int
    metric: Metric
    hnsw_m: int
    hnsw_ef_construction: int
    write_log_size: str = ""
    """Each replica's write-log claim (spec.writes.logVolume.size); "" while writes are off."""
    write_log_storage_class: str = ""
    """Its StorageClass; "" for the cluster's default (and while writes are off)."""

    @property
    def write_log(self) -> bool:
        """Whether this layout's replicas keep a durable write log (spec.writes.enabled)."""
        return self.write_log_size != ""

    @classmethod
    def from_spec(cls, spec: RecommenderClusterSpec) -> LayoutSpec:
        """The layout a cluster spec asks for."""
        return cls(
            version=spec.index.version,
            source=spec.index.source,
            shards=spec.shards,
            partitioning=spec.partitioning.scheme,
            dimension=spec.index.dimension,
            metric=spec.index.metric,
            hnsw_m=spec.index.hnsw.m,
            hnsw_ef_construction=spec.index.hnsw.ef_construction,
            write_log_size=spec.writes.log_volume.size if spec.writes.enabled else "",
            write_log_storage_class=(
                (spec.writes.log_volume.storage_class_name or "") if spec.writes.enabled else ""
            ),
        )

    @property
    def id(self) -> str:
        """The layout id (see `layout_id`)."""
        return layout_id(self)

    def canonical_json(self) -> str:
        """Sorted-key compact JSON: the hashed form, also fit to store in an annotation or a
        state file so the hands can report the LayoutSpec of what they find (`from_json`). The
        write-log fields appear only when set (see the module docstring: ids stay pinned)."""
        document = {k: v for k, v in asdict(self).items() if k not in _OPTIONAL or v != ""}
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LayoutSpec:
        """Parse `canonical_json()` output; raises ValueError naming what is wrong."""
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"layout spec is not JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError("layout spec must be a JSON object")
        known = set(cls.__dataclass_fields__)
        missing, unknown = sorted(known - _OPTIONAL - set(data)), sorted(set(data) - known)
        if missing or unknown:
            raise ValueError(f"layout spec fields: missing {missing}, unknown {unknown}")
        for name in _OPTIONAL & set(data):
            if not isinstance(data[name], str) or not data[name]:
                raise ValueError(f"layout spec field {name} must be a non-empty string when present")
        if "write_log_storage_class" in data and "write_log_size" not in data:
            raise ValueError("layout spec field write_log_storage_class needs write_log_size")
        for name in ("shards", "dimension", "hnsw_m", "hnsw_ef_construction"):
            if not isinstance(data[name], int) or data[name] < 1:
                raise ValueError(f"layout spec field {name} must be a positive integer")
        if data["metric"] not in ("ip", "cosine", "l2"):
            raise ValueError(f"layout spec field metric must be ip, cosine or l2, got {data['metric']!r}")
        return cls(**data)


def layout_spec_of(spec: RecommenderClusterSpec) -> LayoutSpec:
    """The layout a cluster spec asks for (same as `LayoutSpec.from_spec`)."""
    return LayoutSpec.from_spec(spec)


def layout_id(layout: LayoutSpec | RecommenderClusterSpec) -> str:
    """Short, stable, DNS-label-safe id of a layout: the first 10 hex characters of the SHA-256
    of its canonical JSON. Accepts a cluster spec for convenience (its target layout)."""
    if isinstance(layout, RecommenderClusterSpec):
        layout = LayoutSpec.from_spec(layout)
    digest = hashlib.sha256(layout.canonical_json().encode("utf-8")).hexdigest()
    return digest[:LAYOUT_ID_LENGTH]
