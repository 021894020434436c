"""Applies topology documents: builds serving snapshots, switches the active one atomically, probes
replica health, and retires old snapshots once their requests are done.

Switch order for a new layout: verify and load its user table (off the event loop), build its shard
channels and clients, then replace `current` in one assignment. Requests admitted before keep the
old snapshot; its clients close only when none of them is still in flight (or after a grace).
An endpoint-only change (replica added, removed or moved) updates the channels in place.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shardrec.api.topology import LayoutTopology, Topology
from shardrec.serving.index.users import UserTable, load_user_table
from shardrec.serving.router.config import RouterSettings
from shardrec.serving.router.dispatch import DispatchPolicy, ShardChannel
from shardrec.serving.router.hedging import HedgeBudget
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.replicas import EjectionPolicy, Replica
from shardrec.serving.router.shard_protocol import ErrorKinds, ShardClientLike
from shardrec.serving.router.snapshot import Snapshot

log = logging.getLogger("shardrec.router")


ClientFactory = Callable[[str], ShardClientLike]
UserTableLoader = Callable[[Path], UserTable]


class TopologyRejectedError(ValueError):
    """A topology the router will not switch to; the message says why."""


@dataclass(frozen=True)
class ManagerDeps:
    client_factory: ClientFactory
    errors: ErrorKinds
    load_users: UserTableLoader = load_user_table


class TopologyManager:
    def __init__(self, settings: RouterSettings, metrics: RouterMetrics, deps: ManagerDeps) -> None:
        self.settings = settings
        self.metrics = metrics
        self.deps = deps
        self.current: Snapshot | None = None
        self.revision = -1
        self.last_error = ""
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        spec = settings.config.router
        self._policy = DispatchPolicy(
            max_retries=spec.max_retries,
            hedging_enabled=spec.hedging.enabled,
            hedge_after_s=spec.hedging.after_ms / 1000.0,
            max_batches_in_flight=settings.tuning.max_batches_in_flight_per_replica,
            max_queries_per_batch=settings.tuning.max_queries_per_batch,
        )
        self._budget_percent = spec.hedging.budget_percent
        self._ejection = EjectionPolicy()
        self._rng = random.Random()

    # --- applying topologies ---------------------------------------------------------------------

    async def apply(self, topology: Topology) -> None:
        """Make `topology` the serving state. Raises TopologyRejectedError and keeps the current one."""
        async with self._lock:
            if topology.revision < self.revision:
                self.metrics.topology_updates.labels("stale").inc()
                return
            try:
                await self._apply(topology)
            except TopologyRejectedError as exc:
                self.last_error = str(exc)
                self.metrics.topology_updates.labels("rejected").inc()
                raise
            self.revision = topology.revision
            self.last_error = ""
            self.metrics.topology_updates.labels("applied").inc()

    async def _apply(self, topology: Topology) -> None:
        active = topology.active
        current = self.current
        if active is None:
            if current is not None:
                self._switch(None)
            return
        if current is not None and _same_layout(current.topology, active):
            self._update_endpoints(current, active)
            return
        started = time.perf_counter()
        try:
            users = await asyncio.to_thread(self.deps.load_users, Path(active.artifact_dir))
        except Exception as exc:  # any load failure keeps the old layout serving
            raise TopologyRejectedError(
                f"layout {active.layout}: cannot load the user table from {active.artifact_dir}: {exc}"
            ) from exc
        self.metrics.user_table_load_seconds.observe(time.perf_counter() - started)
        found = (users.version, users.layout, users.dimension)
        if found != (active.version, active.layout, active.dimension):
            raise TopologyRejectedError(
                f"layout {active.layout}: artifact {active.artifact_dir} holds layout {users.layout} "
                f"version {users.version} dimension {users.dimension}, the topology says layout "
                f"{active.layout} version {active.version} dimension {active.dimension}"
            )
        self._switch(self._build(active, users))

    def _build(self, active: LayoutTopology, users: UserTable) -> Snapshot:
        channels = []
        for entry in sorted(active.endpoints, key=lambda e: e.shard):
            replicas = [self._replica(endpoint.name, endpoint.url) for endpoint in entry.replicas]
            channels.append(
                ShardChannel(
                    shard=entry.shard,
                    layout=active.layout,
                    version=active.version,
                    replicas=replicas,
                    policy=self._policy,
                    budget=HedgeBudget(self._budget_percent),
                    errors=self.deps.errors,
                    metrics=self.metrics,
                    rng=self._rng,
                )
            )
        return Snapshot(topology=active, users=users, channels=channels)

    def _replica(self, name: str, url: str) -> Replica[ShardClientLike]:
        return Replica(name=name, url=url, client=self.deps.client_factory(url), policy=self._ejection)

    def _update_endpoints(self, snapshot: Snapshot, active: LayoutTopology) -> None:
        removed: list[Replica[ShardClientLike]] = []
        for entry in active.endpoints:
            channel = snapshot.channels[entry.shard]
            existing: dict[tuple[str, str], Replica[ShardClientLike]] = {
                (r.name, r.url): r for r in channel.replicas
            }
            wanted = [
                existing.pop((e.name, e.url)) if (e.name, e.url) in existing else self._replica(e.name, e.url)
                for e in entry.replicas
            ]
            channel.replicas = wanted  # one assignment: a retry sees the old list or the new one
            removed.extend(existing.values())
        snapshot.topology = active
        if removed:
            self._close_later([r.client for r in removed], snapshot=None)
        self._publish_live(snapshot)

    def _switch(self, new: Snapshot | None) -> None:
        old, self.current = self.current, new
        self.metrics.active_version.clear()
        if new is not None:
            self.metrics.active_version.labels(new.layout, new.version).set(1)
            self._publish_live(new)
            log.info("serving layout %s version %s (%d shards)", new.layout, new.version, new.shards)
        if old is not None:
            self.metrics.topology_switches.inc()
            self._close_later(old.clients(), snapshot=old)

    def _close_later(self, clients: list[ShardClientLike], snapshot: Snapshot | None) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(clients, snapshot))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, clients: list[ShardClientLike], snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            # Requests bound to it finish within their deadline; never cut one short.
            timeout_s = self.settings.config.router.timeout_ms / 1000.0
            await snapshot.wait_idle(max(self.settings.tuning.retire_grace_s, timeout_s + 1.0))
            for channel in snapshot.channels:
                await channel.drain()
        for client in clients:
            try:
                await client.close()
            except Exception:  # closing a dead connection must not stop closing the others
                log.debug("closing a shard client failed", exc_info=True)

    def _publish_live(self, snapshot: Snapshot) -> None:
        for channel in snapshot.channels:
            self.metrics.live_replicas.labels(str(channel.shard)).set(channel.live_replicas())

    # --- health probing ------------------------------------------------------------------------

    async def probe_forever(self) -> None:
        interval = self.settings.tuning.probe_interval_s
        while True:
            snapshot = self.current
            if snapshot is not None:
                await self.probe(snapshot)
            await asyncio.sleep(interval)

    async def probe(self, snapshot: Snapshot) -> None:
        timeout = self.settings.tuning.probe_timeout_s
        replicas = [(channel, r) for channel in snapshot.channels for r in channel.replicas]
        results = await asyncio.gather(
            *(_ready(r.client, timeout) for _, r in replicas), return_exceptions=False
        )
        now = time.monotonic()
        for (channel, replica), ready in zip(replicas, results, strict=True):
            if replica.probed(ready, now):
                self.metrics.ejections.labels(str(channel.shard), replica.name).inc()
        self._publish_live(snapshot)

    async def close(self) -> None:
        snapshot, self.current = self.current, None
        if snapshot is not None:
            for channel in snapshot.channels:
                await channel.drain()
            for client in snapshot.clients():
                await client.close()
        for task in list(self._retiring):
            await task


async def _ready(client: ShardClientLike, timeout_s: float) -> bool:
    try:
        return bool(await client.ready(timeout_s))
    except Exception:
        return False


def _same_layout(a: LayoutTopology, b: LayoutTopology) -> bool:
    return (a.layout, a.version, a.shards, a.artifact_dir, a.dimension, a.metric) == (
        b.layout,
        b.version,
        b.shards,
        b.artifact_dir,
        b.dimension,
        b.metric,
    )
