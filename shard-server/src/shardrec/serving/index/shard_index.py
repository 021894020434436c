"""One loaded, verified shard of a layout and its search: the engine inside a shard server.

Kept free of web frameworks so the in-process benchmark baseline runs exactly this code. The
hnswlib index holds the only copy of the vectors; ids live once as a list (JSON answers), once as
a fixed-width bytes array (vectorised gather for binary answers) and in a dict (exclusions).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt

from shardrec.api.commands import DEFAULT_EF_SEARCH
from shardrec.serving.index.layout import LayoutError, read_layout_manifest, read_shard_manifest
from shardrec.serving.index.manifest import INDEX_FILE, SHARD_IDS_FILE, LayoutManifest, ShardManifest
from shardrec.serving.index.scoring import Metric, hnsw_space, scores_from_distances
from shardrec.serving.index.write_log import SequenceGapError, WriteRecord

Floats = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
_WARMUP_QUERIES = 64
NO_LABEL = -1


@dataclass(frozen=True)
class Expectation:
    """What a caller requires of a layout it loads (e.g. a swap must keep the dimension)."""

    dimension: int | None = None
    metric: Metric | None = None
    shards: int | None = None


@dataclass(frozen=True)
class SearchResult:
    """Per query the k best labels (NO_LABEL padding) and scores (-inf padding), best first."""

    labels: Labels
    scores: Floats
    counts: npt.NDArray[np.int64]


def _read_ids(path: Path, count: int) -> list[str]:
    ids = path.read_text(encoding="utf-8").split("\n")
    if ids and ids[-1] == "":
        ids.pop()
    if len(ids) != count:
        raise LayoutError(f"{path}: {len(ids)} ids, but the manifest says {count}")
    return ids


class ShardIndex:
    """A verified shard held in memory. Thread-safe for concurrent `search` calls (hnswlib allows
    concurrent knn_query; ef is set once here and never changed)."""

    def __init__(  # noqa: PLR0917 - built only by load()
        self,
        layout_dir: Path,
        layout: LayoutManifest,
        manifest: ShardManifest,
        index: hnswlib.Index,
        ids: list[str],
        ef_search: int,
        load_seconds: float,
    ) -> None:
        self.layout_dir = layout_dir
        self.layout = layout
        self.manifest = manifest
        self.index = index
        self.ids = ids
        self.ef_search = ef_search
        self.default_ef_search = ef_search
        self.load_seconds = load_seconds
        self.count = manifest.count
        self.dimension = manifest.dimension
        self.metric: Metric = manifest.metric
        encoded = [item_id.encode("utf-8") for item_id in ids]
        self.ids_ascii = all(len(raw) == len(text) for raw, text in zip(encoded, ids, strict=True))
        self.id_width = max(len(raw) for raw in encoded)
        self.ids_wire = np.array(encoded, dtype=f"S{self.id_width}")
        self.label_of = {item_id: label for label, item_id in enumerate(ids)}
        self.base_sequence = manifest.base_sequence
        self.applied_sequence = manifest.base_sequence
        """The last write-log sequence applied (the layout's base sequence until a write arrives)."""
        self.next_label = len(ids)
        self.vacant = 0
        """Deleted slots hnswlib will reuse for new items before it needs to grow."""
        self.writes_applied = 0

    @property
    def version(self) -> str:
        return self.layout.version

    @property
    def layout_name(self) -> str:
        return self.layout.layout

    @property
    def shard(self) -> int:
        return self.manifest.shard

    @property
    def index_bytes(self) -> int:
        return self.manifest.file(INDEX_FILE).bytes

    @classmethod
    def load(
        cls,
        layout_dir: Path,
        shard: int,
        *,
        ef_search: int = DEFAULT_EF_SEARCH,
        expect: Expectation | None = None,
    ) -> ShardIndex:
        """Verify (manifests, numbering, sha256 of this shard's files) and load shard `shard`."""
        started = time.monotonic()
        layout = read_layout_manifest(layout_dir, verify_shards=False)
        _check_expectation(layout_dir, layout, expect or Expectation())
        manifest = read_shard_manifest(layout_dir, layout, shard, verify_files=True)
        folder = layout_dir / layout.shard_entries[shard].directory
        ids = _read_ids(folder / SHARD_IDS_FILE, manifest.count)
        index = hnswlib.Index(space=hnsw_space(manifest.metric), dim=manifest.dimension)
        try:
            index.load_index(
                str(folder / INDEX_FILE), max_elements=manifest.count, allow_replace_deleted=True
            )
        except RuntimeError as exc:
            raise LayoutError(f"{folder / INDEX_FILE}: hnswlib cannot load it ({exc})") from exc
        if index.get_current_count() != manifest.count:
            raise LayoutError(
                f"{folder / INDEX_FILE}: holds {index.get_current_count()} items, "
                f"manifest says {manifest.count}"
            )
        index.set_ef(max(1, ef_search))
        loaded = cls(layout_dir, layout, manifest, index, ids, ef_search, 0.0)
        loaded.warm_up()
        loaded.load_seconds = time.monotonic() - started
        return loaded

    def warm_up(self) -> None:
        """Search with stored vectors so first requests do not pay first-touch costs."""
        labels = np.linspace(0, self.count - 1, num=min(_WARMUP_QUERIES, self.count)).astype(np.int64)
        vectors = np.asarray(self.index.get_items(labels), dtype=np.float32)
        self.search(vectors, min(10, self.count))

    def apply_writes(self, records: Sequence[WriteRecord]) -> int:
        """Apply write-log records in order (skipping those at or below `applied_sequence`; a gap
        raises SequenceGapError before anything is applied). How many were applied.

        Not safe beside running searches (hnswlib's resize_index is not, and the id arrays a
        search reads change): the engine calls it while no search runs.

        Labels: a live item keeps its label (its vector is updated in place); a new id, or one
        deleted earlier, gets a fresh label, and hnswlib reuses a deleted slot for it
        (replace_deleted). A delete marks the label deleted and forgets the id, so it is neither
        returned nor excluded nor exported from then on."""
        fresh = [r for r in records if r.seq > self.applied_sequence]
        expected = self.applied_sequence + 1
        for record in fresh:
            if record.seq != expected:
                raise SequenceGapError(expected - 1, record.seq)
            if record.vector is not None and len(record.vector) != self.dimension:
                raise ValueError(
                    f"record {record.seq}: vector has {len(record.vector)} numbers, "
                    f"the index {self.dimension}"
                )
            expected += 1
        for record in fresh:
            if record.op == "upsert":
                assert record.vector is not None
                self._upsert(record.item_id, np.asarray(record.vector, dtype=np.float32))
            else:
                self._delete(record.item_id)
            self.applied_sequence = record.seq
        self.writes_applied += len(fresh)
        return len(fresh)

    def _upsert(self, item_id: str, vector: Floats) -> None:
        label = self.label_of.get(item_id)
        if label is not None:
            self.index.add_items(vector[None, :], np.array([label]), replace_deleted=False)
            return
        label = self.next_label
        self.next_label += 1
        if self.vacant:
            self.vacant -= 1  # hnswlib puts it in a deleted slot (replace_deleted)
        elif self.index.get_current_count() >= self.index.get_max_elements():
            self.index.resize_index(max(16, self.index.get_max_elements() * 2))
        self._set_id(label, item_id)
        self.index.add_items(vector[None, :], np.array([label]), replace_deleted=True)
        self.label_of[item_id] = label
        self.count += 1

    def _delete(self, item_id: str) -> None:
        label = self.label_of.pop(item_id, None)
        if label is None:
            return  # deleting an unknown item is a no-op (idempotent)
        self.index.mark_deleted(label)
        self.vacant += 1
        self.count -= 1

    def _set_id(self, label: int, item_id: str) -> None:
        """Record `item_id` at `label` in the id list and the fixed-width wire array (grown by
        doubling, widened for a longer id)."""
        raw = item_id.encode("utf-8")
        if label == len(self.ids):
            self.ids.append(item_id)
        else:
            self.ids[label] = item_id
        width = max(self.id_width, len(raw))
        if width != self.id_width or label >= len(self.ids_wire):
            grown = np.zeros(max(len(self.ids_wire) * 2, label + 1), dtype=f"S{width}")
            grown[: len(self.ids_wire)] = self.ids_wire
            self.ids_wire, self.id_width = grown, width
        self.ids_wire[label] = raw
        self.ids_ascii = self.ids_ascii and len(raw) == len(item_id)

    def use_ef(self, ef_search: int) -> None:
        """Search with HNSW ef `ef_search` from now on (0: the ef it was loaded with). hnswlib keeps
        one ef per index, read when a query starts: call this only while no search runs."""
        wanted = ef_search or self.default_ef_search
        if wanted != self.ef_search:
            self.index.set_ef(max(1, wanted))
            self.ef_search = wanted

    def labels_of(self, item_ids: Sequence[str]) -> Labels:
        """Labels of the ids held by this shard (others are ignored)."""
        found = [label for label in map(self.label_of.get, item_ids) if label is not None]
        return np.array(found, dtype=np.int64)

    def _knn(self, queries: Floats, fetch: int, threads: int) -> tuple[Labels, Floats]:
        try:
            labels, distances = self.index.knn_query(queries, k=fetch, num_threads=threads)
            return labels.astype(np.int64, copy=False), distances
        except RuntimeError:
            # hnswlib refuses a whole batch when it finds fewer than `fetch` neighbours for any
            # query (tiny shards, tiny ef); redo query by query, shrinking `fetch` as needed.
            labels = np.full((len(queries), fetch), NO_LABEL, dtype=np.int64)
            distances = np.full((len(queries), fetch), np.inf, dtype=np.float32)
            for row, query in enumerate(queries):
                size = fetch
                while size > 0:
                    try:
                        found, dist = self.index.knn_query(query[None, :], k=size, num_threads=1)
                    except RuntimeError:
                        size //= 2
                        continue
                    labels[row, :size], distances[row, :size] = found[0], dist[0]
                    break
            return labels, distances

    def search(
        self,
        queries: Floats,
        k: int,
        exclude: Sequence[Sequence[str] | None] | None = None,
        *,
        threads: int = 1,
    ) -> SearchResult:
        """The k best items per query, skipping each query's excluded ids (over-fetching so that
        exclusions do not leave fewer than k when the shard has enough items)."""
        n = len(queries)
        excluded: list[Labels | None] = [None] * n
        extra = 0
        if exclude is not None:
            for row, ids in enumerate(exclude):
                if ids:
                    labels = self.labels_of(ids)
                    if len(labels):
                        excluded[row] = labels
                        extra = max(extra, len(labels))
        fetch = max(1, min(self.count, k + extra))
        labels, distances = self._knn(queries, fetch, threads)
        scores = scores_from_distances(self.metric, distances)
        scores[labels == NO_LABEL] = -np.inf
        if extra == 0 and fetch >= k:
            counts = (labels[:, :k] != NO_LABEL).sum(axis=1)
            return SearchResult(labels[:, :k], scores[:, :k], counts)
        out_labels = np.full((n, k), NO_LABEL, dtype=np.int64)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        for row in range(n):
            keep = labels[row] != NO_LABEL
            banned = excluded[row]
            if banned is not None:
                keep &= ~np.isin(labels[row], banned)
            chosen = np.flatnonzero(keep)[:k]
            counts[row] = len(chosen)
            out_labels[row, : len(chosen)] = labels[row, chosen]
            out_scores[row, : len(chosen)] = scores[row, chosen]
        return SearchResult(out_labels, out_scores, counts)

    def info(self) -> dict[str, object]:
        return {
            "layout": self.layout_name,
            "version": self.version,
            "shard": self.shard,
            "shards": self.layout.shards,
            "count": self.count,
            "dimension": self.dimension,
            "metric": self.metric,
            "hnsw": {
                **self.layout.hnsw.model_dump(),
                "ef_search": self.ef_search,
                "default_ef_search": self.default_ef_search,
            },
            "index_bytes": self.index_bytes,
            "layout_dir": str(self.layout_dir),
            "built_at": self.manifest.built_at,
            "load_seconds": round(self.load_seconds, 3),
            "base_sequence": self.base_sequence,
            "applied_sequence": self.applied_sequence,
        }


def _check_expectation(layout_dir: Path, layout: LayoutManifest, expect: Expectation) -> None:
    for field in ("dimension", "metric", "shards"):
        want, got = getattr(expect, field), getattr(layout, field)
        if want is not None and want != got:
            raise LayoutError(f"{layout_dir}/layout.json: {field} is {got!r}, but {want!r} is required")
