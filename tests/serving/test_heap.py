"""serving/heap.py: a serving process freezes its import-time heap and spaces young collections out,
and reference cycles made afterwards are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shardrec.serving.heap import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_heap_freezes_what_exists_and_spaces_young_collections(restored_gc: None) -> None:
    before = gc.get_threshold()
    settle_heap()
    assert gc.get_freeze_count() > 1000, "the import-time heap is frozen"
    assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])


def test_a_cycle_made_after_settling_is_still_collected(restored_gc: None) -> None:
    settle_heap()
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    gc.collect()
    assert gone() is None
