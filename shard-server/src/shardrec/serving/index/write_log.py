"""The per-shard write log: an ordered, durable record of item upserts and deletes.

One file per shard replica, appended to and fsynced before a write is acknowledged. Each record
is framed as

    magic b"SRW1" | u32 payload length (LE) | u32 CRC-32 of the payload (LE) | payload (JSON)

and the payload names its sequence number, the operation and the item: `{"seq": 7, "op":
"upsert", "id": "m42", "vector": [...], "metadata": {...}}` or `{"seq": 8, "op": "delete", "id":
"m7"}`. Sequences of one shard are contiguous (1, 2, 3, ...): the log refuses a gap or a repeat.

A crash between the append and its fsync (or in the middle of a record) leaves a torn tail: a
short header, a short payload or a payload whose CRC does not match, at the END of the file. Opening
the log cuts such a tail off (those writes were never acknowledged, since a write is acknowledged
only after its fsync). A bad record followed by more bytes than it declares is corruption, not a
torn tail, and opening refuses the file instead of silently dropping acknowledged writes.

Replay is pure (`LogState.apply`): a record whose sequence is at or below the applied one is
skipped, so replaying twice, or replaying a prefix and then the whole log, gives the same state as
applying every operation once in order (idempotent by id and sequence).

A layout says from which sequence its shards need the log (`base_sequence`, 0 for a layout built
from the source alone): a replica loads the layout, then replays every record after that.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

MAGIC = b"SRW1"
_HEADER = struct.Struct("<4sII")
HEADER_BYTES = _HEADER.size
MAX_RECORD_BYTES = 16 << 20
MAX_ID_BYTES = 512

Op = Literal["upsert", "delete"]


class WriteLogError(ValueError):
    """The log file is corrupt (not a torn tail), or a record does not fit the log."""


class SequenceGapError(WriteLogError):
    """A record's sequence is not the next one: the replica missed records and must catch up."""

    def __init__(self, applied: int, got: int) -> None:
        super().__init__(f"sequence {got} does not follow {applied}: {applied + 1}..{got - 1} missing")
        self.applied = applied
        self.got = got


@dataclass(frozen=True)
class WriteRecord:
    """One logged operation. `vector` is set for an upsert only."""

    seq: int
    op: Op
    item_id: str
    vector: tuple[float, ...] | None = None
    metadata: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        problem = record_problem(self)
        if problem is not None:
            raise WriteLogError(problem)

    def payload(self) -> bytes:
        body: dict[str, Any] = {"seq": self.seq, "op": self.op, "id": self.item_id}
        if self.vector is not None:
            body["vector"] = list(self.vector)
        if self.metadata is not None:
            body["metadata"] = dict(self.metadata)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.payload())  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> WriteRecord:
        try:
            seq, op, item_id = body["seq"], body["op"], body["id"]
        except KeyError as exc:
            raise WriteLogError(f"record misses {exc.args[0]!r}") from exc
        if not isinstance(seq, int) or isinstance(seq, bool) or op not in ("upsert", "delete"):
            raise WriteLogError(f"record has a bad seq or op: seq={seq!r} op={op!r}")
        if not isinstance(item_id, str):
            raise WriteLogError("record id must be a string")
        raw_vector = body.get("vector")
        vector = None
        if raw_vector is not None:
            if not isinstance(raw_vector, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw_vector
            ):
                raise WriteLogError("record vector must be a list of numbers")
            vector = tuple(float(x) for x in raw_vector)
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise WriteLogError("record metadata must be an object")
        return cls(seq, op, item_id, vector, metadata)


def id_problem(item_id: str) -> str | None:
    """Why `item_id` cannot be an item id (None: it can). Ids are one line of ids.txt, as the
    router's reads take them: not empty, no C0 control character nor DEL, at most MAX_ID_BYTES of
    UTF-8."""
    if not item_id:
        return "item id must not be empty"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in item_id):
        return "item id must not contain control characters (TAB, CR, LF, NUL, ...)"
    if len(item_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"item id longer than {MAX_ID_BYTES} bytes"
    try:
        item_id.encode("utf-8")
    except UnicodeEncodeError:
        return "item id is not valid UTF-8 text"
    return None


def record_problem(record: WriteRecord) -> str | None:
    if record.seq < 1:
        return f"sequence must be >= 1, got {record.seq}"
    problem = id_problem(record.item_id)
    if problem is not None:
        return problem
    if record.op == "upsert":
        if not record.vector:
            return "an upsert needs a non-empty vector"
        if not all(math.isfinite(x) for x in record.vector):
            return "vector contains NaN or inf"
    elif record.vector is not None:
        return "a delete carries no vector"
    return None


def encode_record(record: WriteRecord) -> bytes:
    payload = record.payload()
    if len(payload) > MAX_RECORD_BYTES:
        raise WriteLogError(f"record {record.seq} is {len(payload)} bytes, more than {MAX_RECORD_BYTES}")
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Scan:
    """What reading a log's bytes found: the whole records, where they end, and whether a torn
    tail (bytes after `valid_bytes`) was seen."""

    records: list[WriteRecord]
    valid_bytes: int
    torn_bytes: int


def scan(data: bytes, source: str = "write log") -> Scan:
    """Parse every whole record of `data`; a damaged last record is a torn tail, a damaged record
    with more bytes after it than it declares is corruption (WriteLogError)."""
    records: list[WriteRecord] = []
    offset = 0
    size = len(data)
    while offset < size:
        problem, declared = _record_at(data, offset)
        if problem is None:
            payload = data[offset + HEADER_BYTES : offset + HEADER_BYTES + declared]
            record = _decode_payload(payload, source, offset)
            if records and record.seq != records[-1].seq + 1:
                raise WriteLogError(
                    f"{source}: record at byte {offset} has sequence {record.seq} after {records[-1].seq}"
                )
            records.append(record)
            offset += HEADER_BYTES + declared
            continue
        zero_fill = problem in ("bad magic", "bad length") and not data[offset:].strip(b"\0")
        if offset + HEADER_BYTES + declared < size and problem != "short" and not zero_fill:
            raise WriteLogError(f"{source}: corrupt record at byte {offset} ({problem}) with data after it")
        return Scan(records, offset, size - offset)
    return Scan(records, offset, 0)


def _record_at(data: bytes, offset: int) -> tuple[str | None, int]:
    if offset + HEADER_BYTES > len(data):
        return "short", 0
    magic, length, crc = _HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        return "bad magic", 0
    if length > MAX_RECORD_BYTES:
        return "bad length", 0
    end = offset + HEADER_BYTES + length
    if end > len(data):
        return "short", length
    if zlib.crc32(data[offset + HEADER_BYTES : end]) != crc:
        return "checksum mismatch", length
    return None, length


def _decode_payload(payload: bytes, source: str, offset: int) -> WriteRecord:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WriteLogError(f"{source}: record at byte {offset} is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise WriteLogError(f"{source}: record at byte {offset} is not an object")
    return WriteRecord.from_dict(body)


@dataclass
class LogState:
    """Items written since the layout (upserted vectors; None marks a delete) and the last applied
    sequence. `apply` is the whole replay semantics: skip what is applied, refuse a gap."""

    applied: int = 0
    items: dict[str, tuple[float, ...] | None] = field(default_factory=dict)

    def apply(self, record: WriteRecord) -> bool:
        """Apply `record`; False when it was already applied (idempotent replay)."""
        if record.seq <= self.applied:
            return False
        if record.seq != self.applied + 1:
            raise SequenceGapError(self.applied, record.seq)
        self.items[record.item_id] = record.vector if record.op == "upsert" else None
        self.applied = record.seq
        return True

    def apply_all(self, records: Iterable[WriteRecord]) -> int:
        return sum(self.apply(record) for record in records)


class WriteLog:
    """A shard replica's log file: open (cutting a torn tail), append + fsync, read from a sequence.

    Not thread-safe: one owner (the shard server's event loop) appends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes() if path.exists() else b""
        found = scan(data, str(path))
        self.torn_bytes = found.torn_bytes
        if found.torn_bytes:
            with path.open("r+b") as handle:
                handle.truncate(found.valid_bytes)
                os.fsync(handle.fileno())
        self._records = found.records
        self._file = path.open("ab")
        _fsync_dir(path.parent)

    @property
    def last_sequence(self) -> int:
        return self._records[-1].seq if self._records else self.first_sequence - 1

    @property
    def first_sequence(self) -> int:
        return self._records[0].seq if self._records else 1

    def __len__(self) -> int:
        return len(self._records)

    def append(self, records: list[WriteRecord]) -> None:
        """Append `records` (contiguous after the last one) and fsync: durable when it returns."""
        expected = self.last_sequence + 1
        for record in records:
            if record.seq != expected:
                raise SequenceGapError(expected - 1, record.seq)
            expected += 1
        if not records:
            return
        self._file.write(b"".join(encode_record(record) for record in records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._records.extend(records)

    def since(self, after: int, limit: int | None = None) -> list[WriteRecord]:
        """The records with a sequence above `after`, in order (at most `limit`)."""
        start = max(0, after + 1 - self.first_sequence)
        stop = None if limit is None else start + limit
        return self._records[start:stop]

    def __iter__(self) -> Iterator[WriteRecord]:
        return iter(list(self._records))

    def close(self) -> None:
        self._file.close()


def log_path(write_log_dir: Path, shards: int, shard: int) -> Path:
    """Where a replica whose logs live in `write_log_dir` keeps the log of `shard` of a
    `shards`-shard partitioning."""
    return write_log_dir / f"shards-{shards}" / f"shard-{shard:04d}.log"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
