"""Expectations: what this process last wrote to a router topology, until the API shows it.

FAQ (after ECK's `expectations.go`):

- What? A per-cluster, in-memory record of the layout named by our most recent topology write.
- Why? Switching the router and deleting a layout are the disruptive steps. The planner must not
  take either while an earlier switch is not yet visible: it would reason about a world that
  is about to change under it. The planner reads this as `ObservedRouter.written_layout` and
  compares it with what the API shows (`confirmed_layout`).
- Isn't every read straight from the API? Yes, so after a successful write the next pass sees it
  and the two agree. They differ when a write failed half-way, or when someone else rewrote the
  ConfigMap: then the operator re-asserts its own last write rather than deleting a layout or
  switching again on the strength of a topology it did not write.
- And after a restart? The record is empty and the stored topology counts as both written and
  confirmed, which is the truth the new process can see. Nothing else is needed: children are
  never read from a cache, so there is no stale view of our own writes to wait out.
- Anything else? `warn_once` keeps a persistent problem (a missing ServiceMonitor CRD) from
  becoming an Event on every pass; the times of the last minute's force deletes feed failover's
  rate limit (a restarted process starts a fresh minute: at most one extra burst).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

FORCE_DELETE_MEMORY = timedelta(minutes=1)


class Expectations:
    """Thread-safe: the kopf timer and change handlers of different clusters share one instance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topology: dict[str, str | None] = {}
        self._warned: dict[str, set[str]] = {}
        self._force_deletes: dict[str, list[datetime]] = {}

    def record_topology_write(self, cluster_uid: str, layout_id: str | None) -> None:
        with self._lock:
            self._topology[cluster_uid] = layout_id

    def written_layout(self, cluster_uid: str, *, default: str | None) -> str | None:
        """Our last write for this cluster, or `default` (the stored topology) when we have none."""
        with self._lock:
            return self._topology.get(cluster_uid, default)

    def warn_once(self, cluster_uid: str, key: str) -> bool:
        """True the first time `key` is seen for this cluster in this process."""
        with self._lock:
            seen = self._warned.setdefault(cluster_uid, set())
            if key in seen:
                return False
            seen.add(key)
            return True

    def record_force_delete(self, cluster_uid: str, when: datetime) -> None:
        with self._lock:
            recent = [t for t in self._force_deletes.get(cluster_uid, []) if when - t < FORCE_DELETE_MEMORY]
            self._force_deletes[cluster_uid] = [*recent, when]

    def force_deletes(self, cluster_uid: str) -> tuple[datetime, ...]:
        """When this process force-deleted pods of this cluster (the last minute or so)."""
        with self._lock:
            return tuple(self._force_deletes.get(cluster_uid, ()))

    def forget(self, cluster_uid: str) -> None:
        """Drop everything about a deleted cluster."""
        with self._lock:
            self._topology.pop(cluster_uid, None)
            self._warned.pop(cluster_uid, None)
            self._force_deletes.pop(cluster_uid, None)
