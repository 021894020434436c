"""Fold-in at the next version: carry the write logs of one layout into the next one.

A new layout (a new version, or a new shard count) is built from its source plus the current
layout's write logs up to a named sequence per old shard: the *cut*. What the logs say about each
item (its last upsert, or a delete) is applied to the source before partitioning, so upserted items
are in the built index and deleted ones are out of it. The records after the cut are re-partitioned
by the NEW layout's partitioning (`shard_of(item_id, new_shards)`) and forwarded, in order, to the new
layout's shards before it takes traffic (tools/local/carry.py does it in the local runtime).

Why re-partitioning is sound: an item's records all sit in ONE old shard's log (the old layout's
partitioning names one owner per id), in that log's order. Splitting each old log by new owner and
concatenating keeps every item's records in their order, so applying the per-new-shard lists gives
the same item state as replaying the old logs (property-tested in tests/serving/test_carry.py).

A carry folder (what the build reads, `--carry-dir`) holds `carry.json` (`Cut`) and one log file
per old shard, `shard-NNNN.log`, in the write-log format (write_log.py), holding the records up to
the cut; and `prior.log`, what the OLD layout's own build had carried (one record per item, in
the same format), so a chain v1 -> v2 -> v3 keeps v1's writes in v3 although v2's logs start after
v2's cut. `prior.log` is folded first: every record of the old logs is later than it. The folder
is a copy: the build never reads a live log, and deleting the old layout (or its logs) cannot take
records from a build that already has its cut.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from shardrec.serving.index.embeddings import Embeddings
from shardrec.serving.index.files import fsync_dir, publish_atomically, write_durably
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.write_log import WriteLogError, WriteRecord, encode_record, scan

CARRY_FILE = "carry.json"
PRIOR_FILE = "prior.log"
PROGRESS_FILE = "forwarded.json"
"""The forwarding's progress next to the carry (tools/local/carry.py, serving/carry/carrier.py)."""

ItemState = dict[str, tuple[float, ...] | None]
"""What a run of records leaves per item id: its last upserted vector, or None (deleted)."""


@dataclasses.dataclass(frozen=True)
class Cut:
    """The layout whose logs are carried, its shard count, and per old shard the last sequence
    folded into the build (0: nothing of that shard)."""

    from_layout: str
    from_shards: int
    upto: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.from_shards < 1 or len(self.upto) != self.from_shards or min(self.upto) < 0:
            raise WriteLogError(f"a cut needs one sequence >= 0 per old shard, got {self.upto!r}")

    def as_dict(self) -> dict[str, object]:
        return {"from_layout": self.from_layout, "from_shards": self.from_shards, "upto": list(self.upto)}

    @classmethod
    def from_dict(cls, body: Mapping[str, object]) -> Cut:
        upto = body.get("upto")
        layout, shards = body.get("from_layout"), body.get("from_shards")
        if not isinstance(layout, str) or not isinstance(shards, int) or not isinstance(upto, list):
            raise WriteLogError(f"{CARRY_FILE}: expected from_layout, from_shards and upto")
        return cls(layout, shards, tuple(int(seq) for seq in upto))


def log_file_name(shard: int) -> str:
    return f"shard-{shard:04d}.log"


def read_records(path: Path) -> list[WriteRecord]:
    """The whole records of a log file, read-only (a torn tail, e.g. an append in progress by the
    process that owns the log, is left out; the file is never changed). A missing file: none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return scan(data, str(path)).records


def read_tail(path: Path, offset: int) -> tuple[list[WriteRecord], int]:
    """The whole records from byte `offset` (a record boundary an earlier call returned) on, and
    the offset after the last whole one: a reader that follows a growing log reads each record
    once. A file shorter than `offset` (replaced) is read from its start. A missing file: none."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            start = offset if offset <= size else 0
            handle.seek(start)
            data = handle.read()
    except FileNotFoundError:
        return [], 0
    found = scan(data, str(path))
    return found.records, start + found.valid_bytes


def in_range(records: Iterable[WriteRecord], after: int, upto: int | None = None) -> list[WriteRecord]:
    """The records with `after < seq <= upto` (no upper bound: None), in order."""
    return [r for r in records if r.seq > after and (upto is None or r.seq <= upto)]


def repartition(
    logs: Mapping[int, Sequence[WriteRecord]],
    new_shards: int,
    *,
    after: Mapping[int, int] | None = None,
    upto: Mapping[int, int] | None = None,
) -> list[list[WriteRecord]]:
    """Per NEW shard, the records of the old shards' logs with `after[s] < seq <= upto[s]` (missing
    keys: no bound) that the new partitioning gives it, renumbered 1, 2, ... in order: old shard by
    old shard, each in its log's order (an item's records all come from its one old shard, so each
    item keeps its order). Pure."""
    out: list[list[WriteRecord]] = [[] for _ in range(new_shards)]
    for old in sorted(logs):
        low = (after or {}).get(old, 0)
        high = (upto or {}).get(old)
        for record in in_range(logs[old], low, high):
            target = out[shard_of(record.item_id, new_shards)]
            target.append(dataclasses.replace(record, seq=len(target) + 1))
    return out


def fold(records: Iterable[WriteRecord], state: ItemState | None = None) -> ItemState:
    """Apply records in order: an upsert sets the item's vector, a delete sets None. Applying the
    same records twice gives the same state (last writer per id wins). Pure: `state` is copied."""
    result: ItemState = dict(state or {})
    for record in records:
        result[record.item_id] = record.vector if record.op == "upsert" else None
    return result


# --- the carry folder -----------------------------------------------------------------------------


def state_records(state: ItemState) -> list[WriteRecord]:
    """An item state as records (one per item, numbered 1, 2, ...): folding them gives it back."""
    return [
        WriteRecord(n, "upsert" if vector is not None else "delete", item_id, vector)
        for n, (item_id, vector) in enumerate(sorted(state.items()), start=1)
    ]


def write_carry(
    folder: Path, cut: Cut, logs: Mapping[int, Sequence[WriteRecord]], prior: ItemState | None = None
) -> None:
    """Write `prior` and the records up to the cut of every old shard, then `carry.json` last (its
    presence means the folder is complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_durably(folder / PRIOR_FILE, b"".join(encode_record(r) for r in state_records(prior or {})))
    for shard in range(cut.from_shards):
        kept = in_range(logs.get(shard, ()), 0, cut.upto[shard])
        write_durably(folder / log_file_name(shard), b"".join(encode_record(r) for r in kept))
    fsync_dir(folder)
    publish_atomically(folder / CARRY_FILE, json.dumps(cut.as_dict(), indent=2).encode())


def read_carry(folder: Path) -> tuple[Cut, dict[int, list[WriteRecord]]]:
    """The cut and the carried records of every old shard (up to the cut)."""
    try:
        cut = Cut.from_dict(json.loads((folder / CARRY_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise WriteLogError(f"{folder / CARRY_FILE}: {exc}") from exc
    logs = {}
    for shard in range(cut.from_shards):
        records = read_records(folder / log_file_name(shard))
        logs[shard] = in_range(records, 0, cut.upto[shard])
        last = logs[shard][-1].seq if logs[shard] else 0
        if last != cut.upto[shard]:
            raise WriteLogError(
                f"{folder / log_file_name(shard)}: ends at sequence {last}, the cut says {cut.upto[shard]}"
            )
    return cut, logs


def carried_state(folder: Path) -> tuple[Cut, ItemState]:
    """The cut, and what the carried records leave per item."""
    cut, logs = read_carry(folder)
    state = fold(read_records(folder / PRIOR_FILE))
    for shard in sorted(logs):
        state = fold(logs[shard], state)
    return cut, state


def apply_to_embeddings(embeddings: Embeddings, state: ItemState) -> Embeddings:
    """The source with the carried writes applied: deleted items removed (also from users' seen
    lists), upserted ones replaced in place or appended in id order. The result is in memory."""
    if not state:
        return embeddings
    dimension = embeddings.dimension
    for item_id, vector in state.items():
        if vector is not None and len(vector) != dimension:
            raise WriteLogError(f"carried item {item_id!r}: {len(vector)} numbers, the source {dimension}")
    position = {item_id: n for n, item_id in enumerate(embeddings.item_ids)}
    items = np.array(embeddings.items, dtype=np.float32, copy=True)
    for item_id, vector in state.items():
        if vector is not None and item_id in position:
            items[position[item_id]] = np.asarray(vector, dtype=np.float32)
    deleted = {item_id for item_id, vector in state.items() if vector is None}
    keep = np.array([item_id not in deleted for item_id in embeddings.item_ids], dtype=bool)
    added = sorted(i for i, v in state.items() if v is not None and i not in position)
    ids = [item_id for item_id, kept in zip(embeddings.item_ids, keep.tolist(), strict=True) if kept] + added
    extra = np.array([state[i] for i in added], dtype=np.float32).reshape(len(added), dimension)
    matrix = np.concatenate([items[keep], extra]) if added else items[keep]
    seen = [[item for item in row if item not in deleted] for row in embeddings.seen]
    dropped = sum(len(a) - len(b) for a, b in zip(embeddings.seen, seen, strict=True))
    return dataclasses.replace(
        embeddings,
        items=matrix,
        item_ids=ids,
        seen=seen,
        seen_unknown_items=embeddings.seen_unknown_items + dropped,
    )
