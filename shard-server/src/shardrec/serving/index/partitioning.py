"""The one partition function: which shard holds an item.

`shard_of(item_id, S)` = JumpConsistentHash(item_key(item_id), S) where `item_key` is the first
8 bytes of BLAKE2b-512 of the UTF-8 id read as a little-endian uint64 (docs/partitioning.md).
Jump hash moves only ~1/S of the items when S grows to S+1, needs no ring state, and is the same
in every process and release; BLAKE2b (not Python's `hash`) keeps it independent of PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_MASK64 = (1 << 64) - 1
_JUMP_MULTIPLIER = 2862933555777941757
_TWO_POW_31 = float(1 << 31)
MAX_SHARDS = 1 << 31


def item_key(item_id: str) -> int:
    """First 8 bytes of BLAKE2b-512(item_id, UTF-8), little-endian, as an unsigned 64-bit int."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8")).digest()[:8], "little")


def item_keys(item_ids: Sequence[str]) -> npt.NDArray[np.uint64]:
    """`item_key` of every id, as one uint64 array."""
    blob = b"".join(hashlib.blake2b(item_id.encode("utf-8")).digest()[:8] for item_id in item_ids)
    return np.frombuffer(blob, dtype="<u8").astype(np.uint64)


def _check_shards(shards: int) -> None:
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be in 1..{MAX_SHARDS}, got {shards}")


def jump_hash(key: int, shards: int) -> int:
    """Jump Consistent Hash (Lamping & Veach, 2014) of a uint64 key into `shards` buckets."""
    _check_shards(shards)
    bucket, jump = -1, 0
    while jump < shards:
        bucket = jump
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        jump = int((bucket + 1) * (_TWO_POW_31 / float((key >> 33) + 1)))
    return bucket


def jump_hash_many(keys: npt.NDArray[np.uint64], shards: int) -> npt.NDArray[np.int64]:
    """`jump_hash` of every key; the same float64 arithmetic as the scalar form, vectorised."""
    _check_shards(shards)
    state = np.array(keys, dtype=np.uint64, copy=True)
    bucket = np.full(state.shape, -1, dtype=np.int64)
    jump = np.zeros(state.shape, dtype=np.int64)
    active = np.ones(state.shape, dtype=bool)
    multiplier, one, shift = np.uint64(_JUMP_MULTIPLIER), np.uint64(1), np.uint64(33)
    while active.any():
        bucket[active] = jump[active]
        # uint64 arrays wrap on overflow like C's unsigned arithmetic, which the algorithm needs.
        state[active] = state[active] * multiplier + one
        divisor = (state[active] >> shift).astype(np.float64) + 1.0
        jump[active] = ((bucket[active] + 1).astype(np.float64) * (_TWO_POW_31 / divisor)).astype(np.int64)
        active &= jump < shards
    return bucket


def shard_of(item_id: str, shards: int) -> int:
    """The shard (0-based) that holds `item_id` when the index has `shards` shards."""
    return jump_hash(item_key(item_id), shards)


def assign_shards(item_ids: Sequence[str], shards: int) -> npt.NDArray[np.int64]:
    """`shard_of` for every id at once (vectorised jump hash)."""
    return jump_hash_many(item_keys(item_ids), shards)
