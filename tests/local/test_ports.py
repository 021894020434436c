"""Local ports: outside the kernel's ephemeral range, distinct, and re-drawn when taken."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from shardrec.tools.local.ports import PortAllocator, ephemeral_range, port_is_free, port_pool


def test_the_pool_avoids_the_ephemeral_range() -> None:
    low, high = 32768, 60999
    pool = port_pool((low, high))
    assert pool.start >= 20000 and pool.stop <= low


def test_a_widened_ephemeral_range_uses_the_ports_above_it() -> None:
    pool = port_pool((1024, 50000))
    assert pool.start == 50001 and pool.stop == 65536


def test_no_room_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="ip_local_port_range"):
        port_pool((1024, 65000))


def test_ephemeral_range_reads_the_kernel_file(tmp_path: Path) -> None:
    path = tmp_path / "range"
    path.write_text("40000\t50000\n")
    assert ephemeral_range(path) == (40000, 50000)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)


def test_allocated_ports_are_outside_the_ephemeral_range_and_distinct() -> None:
    allocator = PortAllocator(rng=random.Random(7))
    low, high = ephemeral_range()
    ports = [allocator.allocate() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(not (low <= p <= high) for p in ports)


def test_a_taken_port_is_skipped_and_a_released_one_comes_back() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        assert not port_is_free(taken)
        allocator = PortAllocator(candidates=[taken, 23456, 23456, 23457])
        first = allocator.allocate()
        assert first != taken
        second = allocator.allocate()
        assert second not in (taken, first)
        allocator.release(first)
        assert PortAllocator(candidates=[first]).allocate() == first
