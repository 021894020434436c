"""Process-wide state shared by all handlers: the API, expectations, schedule, locks, metrics.

kopf runs a cluster's change handlers and its timer concurrently (sync handlers in a thread
pool), so a per-cluster lock keeps two passes of one cluster from interleaving; a timer tick
that finds the lock taken just skips (a pass is running anyway). The schedule turns the
planner's `requeue_after_seconds` into "due" times the cheap timer ticks consult; a watch event
on a child makes its cluster due at once (`wake`), so a burst of events costs one pass at the
next tick, not one pass each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from shardrec_operator.config import OperatorConfig
from shardrec_operator.metrics import OperatorMetrics
from shardrec_operator.reconcile.cluster_api import ClusterApi
from shardrec_operator.reconcile.expectations import Expectations


class KeyedLocks:
    """One lock per key (cluster uid), created on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, key: str, *, blocking: bool = True) -> Iterator[bool]:
        """Yields whether the lock was taken (always True when blocking)."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        taken = lock.acquire(blocking=blocking)
        try:
            yield taken
        finally:
            if taken:
                lock.release()


class Schedule:
    """When each cluster is next due for a timer pass (monotonic seconds)."""

    def __init__(self, resync_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._resync = resync_seconds
        self._clock = clock
        self._due: dict[str, float] = {}
        self._lock = threading.Lock()

    def is_due(self, key: str) -> bool:
        with self._lock:
            return self._clock() >= self._due.get(key, 0.0)

    def passed(self, key: str, requeue_after_seconds: float | None) -> None:
        """A pass just ran: due again after the planner's requeue, and at most after a resync."""
        wait = self._resync if requeue_after_seconds is None else min(requeue_after_seconds, self._resync)
        with self._lock:
            self._due[key] = self._clock() + wait

    def wake(self, key: str) -> None:
        """Something changed: due at the next tick."""
        with self._lock:
            if key in self._due:
                self._due[key] = self._clock()

    def forget(self, key: str) -> None:
        with self._lock:
            self._due.pop(key, None)


class ClusterKeys:
    """Cluster uid by (namespace, name): a child's watch event names its cluster by label only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uids: dict[tuple[str, str], str] = {}

    def remember(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            self._uids[(namespace, name)] = uid

    def uid(self, namespace: str, name: str) -> str | None:
        with self._lock:
            return self._uids.get((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._uids.pop((namespace, name), None)


@dataclass
class Runtime:
    api: ClusterApi
    config: OperatorConfig = field(default_factory=OperatorConfig)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    expectations: Expectations = field(default_factory=Expectations)
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    clusters: ClusterKeys = field(default_factory=ClusterKeys)
    schedule: Schedule = field(init=False)

    def __post_init__(self) -> None:
        self.schedule = Schedule(self.config.resync_seconds)

    def wake(self, namespace: str, cluster: str) -> bool:
        """A child of this cluster changed: its pass runs at the next timer tick. False when the
        cluster is not known yet (its first pass, from the resume or create handler, is coming)."""
        uid = self.clusters.uid(namespace, cluster)
        if uid is None:
            return False
        self.schedule.wake(uid)
        return True
