"""Manifest models of a layout artifact folder (docs/embeddings-format.md#what-the-build-makes-of-it).

<layout>/layout.json              LayoutManifest, written last: its presence means "built"
<layout>/shard-0000/manifest.json ShardManifest
<layout>/shard-0000/index.bin     hnswlib index, labels 0..count-1 = line numbers of ids.txt
<layout>/shard-0000/ids.txt       item ids of the shard, one a line
<layout>/users/...                user embeddings, ids and seen items for the router
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1
LAYOUT_FILE = "layout.json"
SHARD_MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.bin"
SHARD_IDS_FILE = "ids.txt"
USERS_DIR = "users"
USER_VECTORS_FILE = "users.npy"
USER_IDS_FILE = "user_ids.txt"
SEEN_INDPTR_FILE = "seen_indptr.npy"
SEEN_ITEMS_FILE = "seen_items.txt"
PARTITIONING = "jump-hash-item-id"

Metric = Literal["ip", "cosine", "l2"]
Sha256 = str


def shard_dir_name(shard: int) -> str:
    return f"shard-{shard:04d}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Model):
    """One file of the artifact, relative to its folder."""

    name: str = Field(min_length=1)
    bytes: int = Field(ge=0)
    sha256: Sha256 = Field(pattern=r"^[0-9a-f]{64}$")


class HnswParams(_Model):
    m: int = Field(ge=2)
    ef_construction: int = Field(ge=1)


class ShardManifest(_Model):
    """What one shard folder holds; the shard server checks it against layout.json and its files."""

    format_version: Literal[1] = 1
    kind: Literal["shardrec-shard"] = "shardrec-shard"
    layout: str = Field(min_length=1)
    version: str = Field(min_length=1)
    shard: int = Field(ge=0)
    shards: int = Field(ge=1)
    partitioning: Literal["jump-hash-item-id"] = "jump-hash-item-id"
    count: int = Field(ge=1)
    dimension: int = Field(ge=1)
    metric: Metric
    hnsw: HnswParams
    files: list[FileEntry]
    built_at: str
    build_seconds: float = Field(ge=0)

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise KeyError(name)


class ShardEntry(_Model):
    """A shard as listed in layout.json: its folder, item count and the sha256 of its manifest."""

    shard: int = Field(ge=0)
    directory: str = Field(min_length=1)
    count: int = Field(ge=1)
    manifest_sha256: Sha256 = Field(pattern=r"^[0-9a-f]{64}$")


class UsersPart(_Model):
    """The router's part: user embeddings, ids and seen items (CSR: indptr over seen_items.txt)."""

    directory: str = USERS_DIR
    count: int = Field(ge=0)
    seen_pairs: int = Field(ge=0)
    seen_unknown_items: int = Field(
        0, ge=0, description="Pairs of seen.tsv naming items absent from the catalogue (dropped)."
    )
    files: list[FileEntry]


class LayoutManifest(_Model):
    """layout.json: the whole layout. Written last, so its presence means every other file is complete."""

    format_version: Literal[1] = 1
    kind: Literal["shardrec-layout"] = "shardrec-layout"
    layout: str = Field(min_length=1)
    version: str = Field(min_length=1)
    shards: int = Field(ge=1)
    partitioning: Literal["jump-hash-item-id"] = "jump-hash-item-id"
    dimension: int = Field(ge=1)
    metric: Metric
    hnsw: HnswParams
    item_count: int = Field(ge=1)
    shard_entries: list[ShardEntry]
    users: UsersPart | None = None
    built_at: str
    build_seconds: float = Field(ge=0)
    source: dict[str, Any] = Field(default_factory=dict, description="Embeddings dir and its metadata.json.")
    quality: dict[str, Any] | None = Field(
        None,
        description=(
            "The model's offline metrics (metadata.json `quality`: split, hit_rate_at_10, ndcg_at_10, ...), "
            "judged by spec.index.qualityGate; None when the embeddings record none."
        ),
    )
