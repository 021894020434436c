"""Applies topology documents: builds serving snapshots, switches the active one atomically, probes
replica health, and retires old snapshots once their requests are done.

Switch order for a new layout: verify and load its user table (off the event loop), build its shard
channels and clients, then replace `current` in one assignment. Requests admitted before keep the
old snapshot; its clients close only when none of them is still in flight (or after a grace).
An endpoint-only change (replica added, removed or moved) updates the channels in place.

A `staged` layout is loaded the same way but kept aside (`prepared`); when a later document makes
it active, the switch is just the assignment. Documents are ordered by `(epoch, revision)`: an
older one is ignored, a newer epoch is taken even with a lower revision (the writer lost its count).
What the manager serves is reported by `serving()` (`/readyz`, and the pod annotation on Kubernetes).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from shardrec.api.topology import LayoutTopology, RouterServing, Topology
from shardrec.serving.index.users import UserTable
from shardrec.serving.router.canary import CanaryRouter
from shardrec.serving.router.config import RouterSettings
from shardrec.serving.router.dispatch import DispatchPolicy, ShardChannel
from shardrec.serving.router.hedging import HedgeBudget
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.replicas import EjectionPolicy, Replica
from shardrec.serving.router.shard_protocol import ErrorKinds, ShardClientLike
from shardrec.serving.router.snapshot import Snapshot
from shardrec.serving.storage.layouts import forget_artifact_users, load_artifact_users

log = logging.getLogger("shardrec.router")


ClientFactory = Callable[[str], ShardClientLike]
UserTableLoader = Callable[[str], UserTable]
"""Loads the user table of a topology's `artifact_dir`: a folder or an s3:// layout URL."""
UserTableForgetter = Callable[[str], object]
"""Removes what loading an `artifact_dir` left on this router's disk (its cached s3:// copy)."""
ServingListener = Callable[[RouterServing], Awaitable[None]]


class TopologyRejectedError(ValueError):
    """A topology the router will not switch to; the message says why."""


@dataclass(frozen=True)
class ManagerDeps:
    client_factory: ClientFactory
    errors: ErrorKinds
    load_users: UserTableLoader = load_artifact_users
    forget_users: UserTableForgetter = forget_artifact_users


class TopologyManager:
    def __init__(self, settings: RouterSettings, metrics: RouterMetrics, deps: ManagerDeps) -> None:
        self.settings = settings
        self.metrics = metrics
        self.deps = deps
        self.current: Snapshot | None = None
        self.prepared: Snapshot | None = None
        self.revision = -1
        self.epoch = 0
        self.switched_at = 0.0
        self._applying = (0, -1)
        self.last_error = ""
        self._listeners: list[ServingListener] = []
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._loaded: list[str] = []  # artifact dirs this router loaded (or tried to), oldest first
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
        self.after_probe: Callable[[ShardChannel], Coroutine[Any, Any, None]] | None = None
        """Called per shard after each probe round (the item writer's catch-up), in the background."""
        self._catching_up: set[asyncio.Task[None]] = set()
        self.canary = CanaryRouter(metrics)

    # --- applying topologies ---------------------------------------------------------------------

    def on_serving_change(self, listener: ServingListener) -> None:
        """Call `listener` with `serving()` after every document applied or rejected."""
        self._listeners.append(listener)

    def serving(self) -> RouterServing:
        """What this router serves, as it reports it to the operator or the local runtime."""
        current, prepared = self.current, self.prepared
        return RouterServing(
            layout=current.layout if current is not None else None,
            version=current.version if current is not None else None,
            revision=self.revision,
            epoch=self.epoch,
            prepared=prepared.layout if prepared is not None else None,
            error=self.last_error[:1024],
            switched_at=self.switched_at,
            canary=self.canary.report(),
        )

    async def apply(self, topology: Topology) -> None:
        """Make `topology` the serving state. Raises TopologyRejectedError and keeps the current one."""
        async with self._lock:
            if topology.order < (self.epoch, self.revision):
                self.metrics.topology_updates.labels("stale").inc()
                return
            self._applying = topology.order
            try:
                staging_error = await self._apply(topology)
            except TopologyRejectedError as exc:
                self.last_error = str(exc)
                self.metrics.topology_updates.labels("rejected").inc()
                await self._notify()
                raise
            self.revision, self.epoch = topology.revision, topology.epoch
            self.last_error = staging_error
            # Canary traffic only to a candidate this router holds prepared.
            prepared = self.prepared
            route = topology.canary
            held = route is not None and prepared is not None and prepared.layout == route.layout
            self.canary.apply(route if held else None)
            self.metrics.topology_updates.labels("applied").inc()
            await self._forget_unused()
        await self._notify()

    async def _forget_unused(self) -> None:
        """Remove the on-disk copies of user tables this router loaded for layouts that are neither
        active nor staged now (a router fetches every s3:// layout's table into its cache folder;
        without this, every daily version stays on the pod's volume). Under the apply lock, so no load
        runs meanwhile; a failure is logged and retried after the next applied document."""
        keep = {snapshot.topology.artifact_dir for snapshot in (self.current, self.prepared) if snapshot}
        for artifact_dir in [a for a in self._loaded if a not in keep]:
            try:
                await asyncio.to_thread(self.deps.forget_users, artifact_dir)
            except Exception:
                log.warning("cannot remove the cached user table of %s", artifact_dir, exc_info=True)
                continue
            self._loaded.remove(artifact_dir)

    async def _notify(self) -> None:
        report = self.serving()
        for listener in self._listeners:
            try:
                await listener(report)
            except Exception:  # a report that cannot be delivered must not stop serving
                log.warning("reporting what the router serves failed", exc_info=True)

    async def _apply(self, topology: Topology) -> str:
        """Apply `active` (raising TopologyRejectedError if it cannot be), then prepare `staged`;
        returns why staging failed ("" if it did not): the active part still took effect."""
        active = topology.active
        current = self.current
        if active is None:
            if current is not None:
                self._switch(None)
            return await self._stage(topology.staged)
        if current is not None and _same_layout(current.topology, active):
            self._update_endpoints(current, active)
            return await self._stage(topology.staged)
        prepared = self.prepared
        if prepared is not None and _same_layout(prepared.topology, active):
            # Loaded while staged: the switch is one assignment.
            self.prepared = None
            self._update_endpoints(prepared, active)
            self._switch(prepared)
            return ""
        self._switch(await self._load(active))
        return await self._stage(topology.staged)

    async def _stage(self, staged: LayoutTopology | None) -> str:
        """Load `staged` aside (or drop what was prepared when nothing, or something else, is).
        Returns why it could not be loaded, or ""."""
        prepared = self.prepared
        if prepared is not None and staged is not None and _same_layout(prepared.topology, staged):
            self._update_endpoints(prepared, staged, publish=False)
            return ""
        if prepared is not None:
            self.prepared = None
            self._close_later(prepared.clients(), snapshot=None)
        if staged is None or (self.current is not None and _same_layout(self.current.topology, staged)):
            return ""
        try:
            self.prepared = await self._load(staged)
        except TopologyRejectedError as exc:
            log.warning("cannot prepare staged layout %s: %s", staged.layout, exc)
            return f"staged {exc}"
        log.info("prepared layout %s version %s (staged)", staged.layout, staged.version)
        return ""

    async def _load(self, active: LayoutTopology) -> Snapshot:
        """A snapshot of `active`: its user table loaded and checked, its shard channels built."""
        started = time.perf_counter()
        if active.artifact_dir not in self._loaded:
            self._loaded.append(active.artifact_dir)
        try:
            users = await asyncio.to_thread(self.deps.load_users, active.artifact_dir)
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
        return self._build(active, users)

    def _build(self, active: LayoutTopology, users: UserTable) -> Snapshot:
        channels = []
        for entry in sorted(active.endpoints, key=lambda e: e.shard):
            replicas = [self._replica(e.name, e.url, e.zone) for e in entry.replicas]
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
            channels[-1].ef_search = active.ef_search or 0
            channels[-1].zone = self.settings.zone
        return Snapshot(topology=active, users=users, channels=channels)

    def _replica(self, name: str, url: str, zone: str | None) -> Replica[ShardClientLike]:
        client = self.deps.client_factory(url)
        return Replica(name=name, url=url, client=client, policy=self._ejection, zone=zone)

    def _update_endpoints(self, snapshot: Snapshot, active: LayoutTopology, *, publish: bool = True) -> None:
        removed: list[Replica[ShardClientLike]] = []
        for entry in active.endpoints:
            channel = snapshot.channels[entry.shard]
            existing: dict[tuple[str, str], Replica[ShardClientLike]] = {
                (r.name, r.url): r for r in channel.replicas
            }
            wanted = []
            for e in entry.replicas:
                kept = existing.pop((e.name, e.url), None)
                if kept is not None:
                    kept.zone = e.zone  # a rescheduled pod keeps its name and may change zone
                wanted.append(kept if kept is not None else self._replica(e.name, e.url, e.zone))
            channel.replicas = wanted  # one assignment: a retry sees the old list or the new one
            channel.ef_search = active.ef_search or 0  # efSearch applies live, to later batches
            removed.extend(existing.values())
        snapshot.topology = active
        if removed:
            self._close_later([r.client for r in removed], snapshot=None)
        if publish:
            self._publish_live(snapshot)

    def _switch(self, new: Snapshot | None) -> None:
        if new is not None:
            new.order = self._applying
            new.order_header = f"{new.order[0]}.{new.order[1]}".encode()
        old, self.current = self.current, new
        self.switched_at = time.time()
        if old is not None:
            # Zero first: with several workers the value lives in a file clear() does not reach.
            self.metrics.active_version.labels(old.layout, old.version).set(0)
        if self.metrics.directory is None:  # (published files keep every series they held)
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
            if ready:
                _note_applied(replica)
        self._publish_live(snapshot)
        self._publish_write_lag(snapshot)
        if self.after_probe is not None and not self._catching_up:
            for channel in snapshot.channels:
                task = asyncio.get_running_loop().create_task(self.after_probe(channel))
                self._catching_up.add(task)
                task.add_done_callback(self._catching_up.discard)

    def _publish_write_lag(self, snapshot: Snapshot) -> None:
        for channel in snapshot.channels:
            newest = max((r.applied_sequence for r in channel.replicas), default=0)
            for replica in channel.replicas:
                lag = newest - replica.applied_sequence
                self.metrics.write_lag.labels(str(channel.shard), replica.name).set(lag)

    async def close(self) -> None:
        await self.canary.close()
        prepared, self.prepared = self.prepared, None
        if prepared is not None:
            for client in prepared.clients():
                await client.close()
        snapshot, self.current = self.current, None
        if snapshot is not None:
            for channel in snapshot.channels:
                await channel.drain()
            for client in snapshot.clients():
                await client.close()
        for task in list(self._retiring):
            await task
        for catching_up in list(self._catching_up):
            catching_up.cancel()


def _note_applied(replica: Replica[ShardClientLike]) -> None:
    """Take the applied write sequence the replica's /readyz reported. A probe answered before a
    write but read after it must not lower what the write's acknowledgement taught (the highest
    wins), unless the process restarted (a new instance): then its report is the truth, lower or not."""
    applied = getattr(replica.client, "applied_sequence", None)
    if not isinstance(applied, int):
        return
    instance = getattr(replica.client, "instance", None)
    if instance != replica.instance:
        replica.instance = instance
        replica.applied_sequence = applied
    else:
        replica.applied_sequence = max(replica.applied_sequence, applied)


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
