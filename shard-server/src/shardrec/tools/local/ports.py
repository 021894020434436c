"""TCP ports on 127.0.0.1 for child processes, chosen outside the kernel's ephemeral range.

Why not "bind port 0 and hand the number on": that gives a port from the ephemeral range
(`net.ipv4.ip_local_port_range`, 32768-60999 by default), the same range the kernel draws from for
every *outgoing* connection. Between the check and the child's bind, or at any later restart, an
outgoing connection of any process may hold that port, and the child then fails with EADDRINUSE
(seen in a benchmark: a shard died four times on one port while the router answered 503 for it).
Ports below the ephemeral range are never handed out for outgoing connections, so only a listener
can hold them. That can still race, so a child that cannot bind exits with `EXIT_PORT_IN_USE` and
the supervisor gives it another port (`LocalSupervisor`).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)
# Below this, ports are commonly assigned to well-known services (and below 1024 need privileges).
LOWEST_PORT = 20000
# Ports of the range below the ephemeral one at least this wide, or the allocator refuses to run.
MIN_POOL = 1000


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (inclusive), or Linux's default where it cannot be read."""
    try:
        low, high = (int(part) for part in path.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE
    return low, high


def port_pool(ephemeral: tuple[int, int]) -> range:
    """The ports the allocator draws from: between LOWEST_PORT and the ephemeral range's start, or
    above its end when a widened ephemeral range leaves too little room below."""
    low, high = ephemeral
    below = range(LOWEST_PORT, min(low, 65536))
    above = range(max(high + 1, LOWEST_PORT), 65536)
    pool = below if len(below) >= len(above) else above
    if len(pool) < MIN_POOL:
        raise RuntimeError(
            f"no room for local ports outside the ephemeral range {low}-{high} "
            f"(net.ipv4.ip_local_port_range): narrow it to leave {MIN_POOL} ports free"
        )
    return pool


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a listener could bind `host:port` now (with SO_REUSEADDR, as the children do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class PortAllocator:
    """Hands out distinct free ports outside the ephemeral range.

    `candidates` and `is_free` are for tests: a test can offer a port it occupies and a check that
    misses it, which is exactly the race the supervisor must survive.
    """

    def __init__(
        self,
        candidates: Iterable[int] | None = None,
        is_free: Callable[[int], bool] = port_is_free,
        rng: random.Random | None = None,
    ) -> None:
        self._candidates: Iterator[int] = (
            iter(candidates) if candidates is not None else self._random_candidates(rng or random.Random())
        )
        self._is_free = is_free
        self._given: set[int] = set()

    @staticmethod
    def _random_candidates(rng: random.Random) -> Iterator[int]:
        pool = port_pool(ephemeral_range())
        while True:
            yield pool[rng.randrange(len(pool))]

    def allocate(self, max_tries: int = 200) -> int:
        for _, port in zip(range(max_tries), self._candidates, strict=False):
            if port not in self._given and self._is_free(port):
                self._given.add(port)
                return port
        raise RuntimeError(f"no free local port found in {max_tries} tries")

    def claim(self, port: int) -> None:
        """`port` is in use by a process this allocator's owner adopted: never hand it out."""
        self._given.add(port)

    def release(self, port: int) -> None:
        """`port` is no longer used by this allocator's owner: it may be handed out again."""
        self._given.discard(port)


_DEFAULT = PortAllocator()


def free_port() -> int:
    """A free port outside the ephemeral range, distinct from every other this process got."""
    return _DEFAULT.allocate()
