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
# Most-seen items of the layout (item id TAB count, most first): the router's popular fallback
# answers. Optional: layouts built before it, or without interactions, have none.
POPULAR_FILE = "popular.tsv"
USER_IDS_FILE = "user_ids.txt"
SEEN_INDPTR_FILE = "seen_indptr.npy"
SEEN_ITEMS_FILE = "seen_items.txt"
ITEM_GRAM_FILE = "item_gram.npy"
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
    base_sequence: int = Field(
        0,
        ge=0,
        description="The last write-log sequence of this shard folded into the index (0: built from the "
        "source alone); a replica replays the log records after it when it loads the shard.",
    )

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


class FoldInPart(_Model):
    """How the router folds in a user from recent items (serving/index/foldin.py): the model family
    metadata.json names, the method it allows, and the ALS parameters. For `als` the Gram matrix of
    the stored item vectors (float64, d x d) is `item_gram.npy` among the users part's files."""

    family: Literal["als", "bpr", "unknown"]
    method: Literal["als", "mean"]
    regularization: float = Field(0.0, ge=0)
    alpha: float = Field(1.0, gt=0)
    default_weight: float = Field(1.0, gt=0, description="Weight of a recent item sent without one.")
    bias_last: bool = False
    gram_file: str | None = Field(None, description="The Gram matrix's file in the users part (als).")


class UsersPart(_Model):
    """The router's part: user embeddings, ids and seen items (CSR: indptr over seen_items.txt)."""

    directory: str = USERS_DIR
    count: int = Field(ge=0)
    seen_pairs: int = Field(ge=0)
    seen_unknown_items: int = Field(
        0, ge=0, description="Pairs of seen.tsv naming items absent from the catalogue (dropped)."
    )
    files: list[FileEntry]
    fold_in: FoldInPart | None = Field(
        None, description="Fold-in of recent items (absent in layouts built before it: no fold-in)."
    )


class CarriedPart(_Model):
    """The write logs folded into this layout's build (serving/index/carry.py): the layout they
    came from, its shard count, and per old shard the last sequence folded in (the cut). Records
    after the cut are forwarded to this layout's shards, re-partitioned, before it takes traffic."""

    layout: str = Field(min_length=1)
    shards: int = Field(ge=1)
    upto: list[int]
    upserts: int = Field(0, ge=0, description="Items whose last carried record is an upsert.")
    deletes: int = Field(0, ge=0, description="Items whose last carried record is a delete.")


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
    carried: CarriedPart | None = Field(
        None, description="Write logs of an earlier layout folded into this build (None: the source alone)."
    )
