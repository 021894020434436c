"""The partition function is stable (golden values), matches the published algorithm, balanced,
and consistent (growing S by one moves only the items that land on the new shard)."""

from __future__ import annotations

import numpy as np
import pytest

from shardrec.serving.index.partitioning import (
    assign_shards,
    item_key,
    item_keys,
    jump_hash,
    jump_hash_many,
    shard_of,
)

# Reference values of Jump Consistent Hash as published with the algorithm and used by other
# implementations (e.g. ClickHouse's jumpConsistentHash tests): (key, buckets) -> bucket.
JUMP_REFERENCE = [
    (1, 1, 0),
    (42, 57, 43),
    (256, 1024, 520),
    (3735883980, 1, 0),
    (3735883980, 666, 361),
    (16045690984833335023, 255, 237),
]

# Golden values of THIS project's partitioning. If one changes, every built layout is served from
# the wrong shards: do not update these without a migration plan (docs/partitioning.md).
GOLDEN_KEYS = {
    "1": 11971653999726161180,
    "movie-42": 1228147353960286237,
}
GOLDEN_SHARDS = {
    ("1", 4): 2,
    ("2", 4): 1,
    ("356", 4): 0,
    ("movie-42", 4): 3,
    ("Ünïcode", 4): 2,
}


@pytest.mark.parametrize(("key", "buckets", "bucket"), JUMP_REFERENCE)
def test_jump_hash_matches_reference_values(key: int, buckets: int, bucket: int) -> None:
    assert jump_hash(key, buckets) == bucket
    assert jump_hash_many(np.array([key], dtype=np.uint64), buckets).tolist() == [bucket]


def test_item_key_and_shard_golden_values() -> None:
    for item_id, key in GOLDEN_KEYS.items():
        assert item_key(item_id) == key
    for (item_id, shards), shard in GOLDEN_SHARDS.items():
        assert shard_of(item_id, shards) == shard
    assert item_keys(list(GOLDEN_KEYS)).tolist() == list(GOLDEN_KEYS.values())


def test_vectorised_equals_scalar() -> None:
    ids = [f"item-{i}" for i in range(3000)] + ["", "é", "a\u4e2d", "x" * 300]
    for shards in (1, 2, 3, 7, 64, 1000):
        expected = [shard_of(item_id, shards) for item_id in ids]
        assert assign_shards(ids, shards).tolist() == expected


def test_balanced() -> None:
    ids = [str(i) for i in range(80_000)]
    for shards in (4, 8):
        counts = np.bincount(assign_shards(ids, shards), minlength=shards)
        mean = len(ids) / shards
        assert counts.min() > 0.97 * mean
        assert counts.max() < 1.03 * mean


def test_growing_by_one_shard_moves_only_items_to_the_new_shard() -> None:
    ids = [f"u{i}" for i in range(20_000)]
    before = assign_shards(ids, 5)
    after = assign_shards(ids, 6)
    moved = before != after
    assert (after[moved] == 5).all()
    assert 0.13 < moved.mean() < 0.20  # about 1/6


def test_rejects_bad_shard_counts() -> None:
    with pytest.raises(ValueError, match="shards must be in"):
        shard_of("a", 0)
    with pytest.raises(ValueError, match="shards must be in"):
        assign_shards(["a"], -1)
