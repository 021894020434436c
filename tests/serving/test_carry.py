"""Carrying write logs into the next layout (serving/index/carry.py): re-partitioning by the new
shard count keeps what the old logs say, the carry folder round-trips, and the build folds the
carried records into the source (upserts in, deletes out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.carry import (
    Cut,
    apply_to_embeddings,
    carried_state,
    fold,
    read_carry,
    read_tail,
    repartition,
    write_carry,
)
from shardrec.serving.index.embeddings import load_embeddings
from shardrec.serving.index.layout import verify_layout
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.write_log import WriteLog, WriteLogError, WriteRecord, encode_record

IDS = [f"i{n}" for n in range(12)]
op_strategy = st.tuples(
    st.sampled_from(IDS), st.booleans(), st.floats(min_value=-4, max_value=4, allow_nan=False)
)


def _logs(ops: list[tuple[str, bool, float]], old_shards: int) -> dict[int, list[WriteRecord]]:
    """The ops as the old layout logged them: each on its owner's log, numbered per shard."""
    logs: dict[int, list[WriteRecord]] = {shard: [] for shard in range(old_shards)}
    for item, upsert, x in ops:
        log = logs[shard_of(item, old_shards)]
        vector = (x, 1.0) if upsert else None
        log.append(WriteRecord(len(log) + 1, "upsert" if upsert else "delete", item, vector))
    return logs


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(op_strategy, max_size=60),
    old_shards=st.integers(1, 4),
    new_shards=st.integers(1, 5),
    cut_fraction=st.floats(0, 1),
)
def test_repartitioned_records_give_the_state_of_the_old_logs(
    ops: list[tuple[str, bool, float]], old_shards: int, new_shards: int, cut_fraction: float
) -> None:
    logs = _logs(ops, old_shards)
    replayed = fold(op for shard in sorted(logs) for op in logs[shard])
    # in time order, too (the logs are per shard, the ops one stream)
    in_time = (WriteRecord(1, "upsert" if u else "delete", i, (x, 1.0) if u else None) for i, u, x in ops)
    assert fold(in_time) == replayed

    parts = repartition(logs, new_shards)
    assert len(parts) == new_shards
    for shard, records in enumerate(parts):
        assert [r.seq for r in records] == list(range(1, len(records) + 1))  # a log of its own
        assert all(shard_of(r.item_id, new_shards) == shard for r in records)  # the right owner
    carried: dict[str, tuple[float, ...] | None] = {}
    for records in parts:
        carried = fold(records, carried)
    assert carried == replayed
    # idempotent: applying the carried records again changes nothing
    again = carried
    for records in parts:
        again = fold(records, again)
    assert again == carried

    # a cut: the build folds in up to it, the rest is forwarded after it; together, the same state
    upto = {s: int(len(logs[s]) * cut_fraction) for s in logs}
    before = repartition(logs, new_shards, upto=upto)
    after = repartition(logs, new_shards, after=upto)
    state: dict[str, tuple[float, ...] | None] = {}
    for records in before:
        state = fold(records, state)
    for records in after:
        state = fold(records, state)
    assert state == replayed
    assert sum(map(len, before)) + sum(map(len, after)) == sum(map(len, logs.values()))


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(op_strategy, max_size=40), old_shards=st.integers(1, 3), cut_fraction=st.floats(0, 1))
def test_a_carry_folder_round_trips_up_to_its_cut(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, bool, float]],
    old_shards: int,
    cut_fraction: float,
) -> None:
    logs = _logs(ops, old_shards)
    cut = Cut("old", old_shards, tuple(int(len(logs[s]) * cut_fraction) for s in range(old_shards)))
    folder = tmp_path_factory.mktemp("carry")
    write_carry(folder, cut, logs)
    read_cut, read_logs = read_carry(folder)
    assert read_cut == cut
    assert read_logs == {s: logs[s][: cut.upto[s]] for s in range(old_shards)}


def test_a_cut_past_the_end_of_a_log_is_refused(tmp_path: Path) -> None:
    logs = {0: [WriteRecord(1, "delete", "a")]}
    write_carry(tmp_path, Cut("old", 1, (3,)), logs)
    with pytest.raises(WriteLogError, match="the cut says 3"):
        read_carry(tmp_path)


def _embeddings(folder: Path, items: int = 60, dim: int = 4) -> None:
    rng = np.random.default_rng(3)
    folder.mkdir()
    np.save(folder / "items.npy", rng.normal(size=(items, dim)).astype(np.float32))
    (folder / "item_ids.txt").write_text("".join(f"item-{i}\n" for i in range(items)))
    np.save(folder / "users.npy", rng.normal(size=(2, dim)).astype(np.float32))
    (folder / "user_ids.txt").write_text("u0\nu1\n")
    (folder / "seen.tsv").write_text("u0\titem-1\nu0\titem-2\n")


def test_apply_to_embeddings_replaces_appends_and_removes(tmp_path: Path) -> None:
    _embeddings(tmp_path / "emb")
    source = load_embeddings(tmp_path / "emb")
    state = {"item-1": None, "item-5": (1.0, 2.0, 3.0, 4.0), "new-a": (0.0, 0.0, 0.0, 1.0)}
    result = apply_to_embeddings(source, state)
    assert "item-1" not in result.item_ids and result.item_ids[-1] == "new-a"
    assert len(result.item_ids) == len(source.item_ids) == result.items.shape[0]
    assert result.items[result.item_ids.index("item-5")].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert result.seen[0] == ["item-2"] and result.seen_unknown_items == 1
    with pytest.raises(WriteLogError, match="numbers"):
        apply_to_embeddings(source, {"x": (1.0,)})


def test_a_layout_built_with_a_carry_holds_the_upserts_and_not_the_deletes(tmp_path: Path) -> None:
    _embeddings(tmp_path / "emb")
    old_shards, new_shards = 2, 3
    ops: list[tuple[str, bool, float]] = [("new-1", True, 0.5), ("item-7", False, 0), ("new-2", True, 1.0)]
    ops += [("new-2", False, 0), ("item-9", True, 2.0), ("new-3", True, 3.0), ("new-3", False, 0)]
    logs: dict[int, list[WriteRecord]] = {s: [] for s in range(old_shards)}
    for item, upsert, x in ops:
        log = logs[shard_of(item, old_shards)]
        vector = (x, 1.0, 0.0, 0.0) if upsert else None
        log.append(WriteRecord(len(log) + 1, "upsert" if upsert else "delete", item, vector))
    cut = Cut("v1", old_shards, tuple(len(logs[s]) for s in range(old_shards)))
    write_carry(tmp_path / "carry", cut, logs)
    assert carried_state(tmp_path / "carry")[0] == cut

    manifest = build_layout(
        tmp_path / "emb", tmp_path / "v2", version="v2", shards=new_shards, m=4, ef_construction=8,
        workers=1, progress=False, carry_dir=tmp_path / "carry",
    )  # fmt: skip
    verify_layout(tmp_path / "v2")
    assert manifest.carried is not None and manifest.carried.upto == list(cut.upto)
    assert manifest.carried.upserts == 2 and manifest.carried.deletes == 3
    held = set()
    for shard in range(new_shards):
        index = ShardIndex.load(tmp_path / "v2", shard)
        assert all(shard_of(item, new_shards) == shard for item in index.ids)
        held |= set(index.ids)
    assert {"new-1", "item-9"} <= held
    assert not {"item-7", "new-2", "new-3"} & held
    assert len(held) == 60 - 1 + 1


def test_a_chained_carry_folds_the_prior_state_first(tmp_path: Path) -> None:
    """v1 -> v2 -> v3: v2's logs start after v2's cut, so v3's carry holds what v2 had carried."""
    prior = {"a": (1.0, 0.0), "b": None, "c": (2.0, 0.0)}
    logs = {0: [WriteRecord(1, "delete", "a"), WriteRecord(2, "upsert", "b", (3.0, 0.0))]}
    write_carry(tmp_path, Cut("v2", 1, (2,)), logs, prior)
    assert carried_state(tmp_path)[1] == {"a": None, "b": (3.0, 0.0), "c": (2.0, 0.0)}


def test_a_growing_log_is_read_record_by_record_once(tmp_path: Path) -> None:
    path = tmp_path / "shard-0000.log"
    assert read_tail(path, 0) == ([], 0)
    log = WriteLog(path)
    log.append([WriteRecord(1, "delete", "a"), WriteRecord(2, "delete", "b")])
    first, offset = read_tail(path, 0)
    assert [r.seq for r in first] == [1, 2] and offset == path.stat().st_size
    log.append([WriteRecord(3, "delete", "c")])
    with path.open("ab") as handle:  # an append in progress: half a record
        handle.write(encode_record(WriteRecord(4, "delete", "d"))[:7])
    second, offset = read_tail(path, offset)
    assert [r.seq for r in second] == [3] and offset < path.stat().st_size
    with path.open("ab") as handle:
        handle.write(encode_record(WriteRecord(4, "delete", "d"))[7:])
    assert [r.seq for r in read_tail(path, offset)[0]] == [4]
    assert [r.seq for r in read_tail(path, 10**9)[0]] == [1, 2, 3, 4]  # replaced: from the start
    log.close()
