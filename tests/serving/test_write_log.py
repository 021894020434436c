"""The per-shard write log: framing, torn tails, durability across reopen, idempotent replay."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardrec.serving.index.write_log import (
    HEADER_BYTES,
    LogState,
    SequenceGapError,
    WriteLog,
    WriteLogError,
    WriteRecord,
    encode_record,
    scan,
)

_IDS = st.sampled_from([f"item-{n}" for n in range(8)])
_VECTORS = st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=3, max_size=3).map(tuple)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), _IDS, _VECTORS),
        st.tuples(st.just("delete"), _IDS, st.none()),
    ),
    min_size=0,
    max_size=40,
)
Ops = list[tuple[str, str, tuple[float, ...] | None]]
_TMP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _records(ops: Ops, start: int = 1) -> list[WriteRecord]:
    return [WriteRecord(start + n, op, item, vector) for n, (op, item, vector) in enumerate(ops)]  # type: ignore[arg-type]


def _expected(ops: Ops) -> dict[str, tuple[float, ...] | None]:
    """The oracle: the ops applied in order to a dict, with no log in between."""
    state: dict[str, tuple[float, ...] | None] = {}
    for op, item, vector in ops:
        state[item] = vector if op == "upsert" else None
    return state


@given(_OPS)
def test_replay_equals_applying_the_ops_in_order(ops: Ops) -> None:
    records = _records(ops)
    decoded = scan(b"".join(encode_record(r) for r in records)).records
    state = LogState()
    state.apply_all(decoded)
    assert decoded == records
    assert state.items == _expected(ops)
    assert state.applied == len(ops)


@given(_OPS, st.data())
def test_replay_is_idempotent_whatever_is_replayed_twice(ops: Ops, data: st.DataObject) -> None:
    records = _records(ops)
    prefix = data.draw(st.integers(0, len(records)))
    state = LogState()
    assert state.apply_all(records[:prefix]) == prefix
    assert state.apply_all(records) == len(records) - prefix  # the prefix again is skipped
    assert state.apply_all(records) == 0
    assert state.items == _expected(ops)


@given(_OPS.filter(lambda ops: len(ops) >= 2), st.data())
def test_replay_refuses_a_gap(ops: Ops, data: st.DataObject) -> None:
    records = _records(ops)
    skipped = data.draw(st.integers(0, len(records) - 2))
    state = LogState()
    state.apply_all(records[:skipped])
    with pytest.raises(SequenceGapError) as caught:
        state.apply(records[skipped + 1])
    assert caught.value.applied == skipped
    assert state.applied == skipped  # nothing applied past the gap


@_TMP
@given(_OPS.filter(bool), st.data())
def test_crash_between_write_and_ack_loses_only_the_unacknowledged_tail(
    tmp_path_factory: pytest.TempPathFactory,
    ops: Ops,
    data: st.DataObject,
) -> None:
    """Append some records durably (acknowledged), then a last batch whose bytes are cut anywhere
    (the crash came before its fsync returned): reopening keeps every acknowledged record, cuts
    the torn bytes, and the log takes the next sequence again."""
    path = tmp_path_factory.mktemp("log") / "shard-0000.log"
    records = _records(ops)
    acked = data.draw(st.integers(0, len(records) - 1))
    log = WriteLog(path)
    log.append(records[:acked])
    log.close()
    unacked = b"".join(encode_record(r) for r in records[acked:])
    cut = data.draw(st.integers(0, len(unacked) - 1))
    with path.open("ab") as handle:
        handle.write(unacked[:cut])
    reopened = WriteLog(path)
    kept = list(reopened)
    # Whole unacknowledged records that reached the disk may survive; the torn one never does.
    assert kept[:acked] == records[:acked]
    assert kept == records[: len(kept)]
    assert len(kept) < len(records)
    assert path.stat().st_size == sum(len(encode_record(r)) for r in kept)
    reopened.append([WriteRecord(len(kept) + 1, "delete", "again")])
    reopened.close()
    assert [r.seq for r in WriteLog(path)] == list(range(1, len(kept) + 2))


@_TMP
@given(_OPS.filter(bool), st.data())
def test_a_flipped_byte_in_the_last_record_is_a_torn_tail(
    tmp_path_factory: pytest.TempPathFactory,
    ops: Ops,
    data: st.DataObject,
) -> None:
    path = tmp_path_factory.mktemp("log") / "log"
    records = _records(ops)
    blob = bytearray(b"".join(encode_record(r) for r in records))
    last = len(encode_record(records[-1]))
    at = data.draw(st.integers(len(blob) - last + HEADER_BYTES, len(blob) - 1))
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))
    log = WriteLog(path)
    assert list(log) == records[:-1]
    assert log.torn_bytes == last


def test_a_damaged_record_with_records_after_it_is_corruption_not_a_tail(tmp_path: Path) -> None:
    records = _records([("upsert", "a", (1.0, 2.0)), ("delete", "a", None), ("delete", "b", None)])
    blob = bytearray(b"".join(encode_record(r) for r in records))
    blob[HEADER_BYTES + 2] ^= 0xFF  # inside the first payload
    path = tmp_path / "log"
    path.write_bytes(bytes(blob))
    with pytest.raises(WriteLogError, match="corrupt record at byte 0"):
        WriteLog(path)
    assert path.read_bytes() == bytes(blob)  # refused, not truncated


def test_a_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    record = WriteRecord(1, "upsert", "a", (1.0,))
    path = tmp_path / "log"
    path.write_bytes(encode_record(record) + b"\0" * 4096)
    assert list(WriteLog(path)) == [record]
    assert path.stat().st_size == len(encode_record(record))


def test_append_refuses_a_gap_or_a_repeat_and_writes_nothing(tmp_path: Path) -> None:
    log = WriteLog(tmp_path / "log")
    log.append([WriteRecord(1, "delete", "a")])
    for seq in (1, 3):
        with pytest.raises(SequenceGapError):
            log.append([WriteRecord(seq, "delete", "b")])
    with pytest.raises(SequenceGapError):
        log.append([WriteRecord(2, "delete", "b"), WriteRecord(4, "delete", "c")])
    assert [r.seq for r in log] == [1]
    assert log.since(0) == [WriteRecord(1, "delete", "a")]
    assert log.since(1) == []


def test_since_reads_from_a_sequence_with_a_limit(tmp_path: Path) -> None:
    log = WriteLog(tmp_path / "log")
    log.append(_records([("delete", f"i{n}", None) for n in range(10)]))
    assert [r.seq for r in log.since(3, limit=4)] == [4, 5, 6, 7]
    assert [r.seq for r in log.since(-5, limit=2)] == [1, 2]
    assert log.last_sequence == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq": 0, "op": "delete", "item_id": "a"}, "sequence must be >= 1"),
        ({"seq": 1, "op": "delete", "item_id": ""}, "must not be empty"),
        ({"seq": 1, "op": "delete", "item_id": "a\nb"}, "control characters"),
        ({"seq": 1, "op": "delete", "item_id": "a\tb"}, "control characters"),
        ({"seq": 1, "op": "upsert", "item_id": "a"}, "needs a non-empty vector"),
        ({"seq": 1, "op": "upsert", "item_id": "a", "vector": (float("nan"),)}, "NaN"),
        ({"seq": 1, "op": "delete", "item_id": "a", "vector": (1.0,)}, "carries no vector"),
    ],
)
def test_bad_records_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(WriteLogError, match=message):
        WriteRecord(**kwargs)  # type: ignore[arg-type]


def test_metadata_round_trips() -> None:
    record = WriteRecord(5, "upsert", "m1", (0.5, -0.25), {"title": "Héros", "year": 1999})
    assert scan(encode_record(record)).records == [record]
    assert WriteRecord.from_dict(record.as_dict()) == record
