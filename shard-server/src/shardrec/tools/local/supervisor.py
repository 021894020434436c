"""The local runtime's hands: observe processes and builds, ask the shared planner what to do,
do it, write status. Kubernetes is the operator's hands; these are the same moves with processes.

One pass (`reconcile_once`) is: reap builds and dead children -> probe readiness -> observe ->
`plan()` -> execute the actions in order -> write topology, status and the runtime table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import yaml

from shardrec.api.commands import (
    ROUTER_MODULE,
    SHARD_MODULE,
    ObjectStoreFlags,
    RouterFlags,
    ShardFlags,
    env_name,
    router_arguments,
    shard_arguments,
)
from shardrec.api.topology import LayoutTopology, ReplicaEndpoint, ShardEndpoints, Topology
from shardrec.api.v1alpha1 import RecommenderCluster, RecommenderClusterStatus
from shardrec.planning import plan
from shardrec.planning.actions import (
    Action,
    DeleteArtifacts,
    DeleteLayout,
    EnsureBuild,
    EnsureShards,
    RecordEvent,
    RetireLayout,
    StageRouter,
    SwitchRouter,
)
from shardrec.planning.fleet import (
    RouterObservation,
    confirmed_layout,
    topology_document,
    with_topology_written,
)
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import Observed, ObservedLayout, ObservedRouter, ObservedShard
from shardrec.serving.shard.exit_codes import EXIT_PORT_IN_USE
from shardrec.tools.local.builds import LocalBuilds
from shardrec.tools.local.ports import PortAllocator
from shardrec.tools.local.probes import ReadinessProber
from shardrec.tools.local.processes import ProcessSpec, ProcessTable
from shardrec.tools.local.state import StateDir, atomic_write_json, atomic_write_text, read_json

log = logging.getLogger("shardrec.local")

TICK_S = 0.2


def load_cluster_file(path: Path) -> RecommenderCluster:
    """Parse and validate a RecommenderCluster YAML with the same model the CRD comes from."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return RecommenderCluster.model_validate(data)


def kill_recorded_children(state: StateDir) -> None:
    """Stop children a killed supervisor left behind, from its last process table. A pid is
    signalled only while its command line still names shardrec, so a reused pid is left alone."""
    if not state.runtime_file.exists():
        return
    for entry in read_json(state.runtime_file).get("processes", []):
        pid = entry.get("pid")
        if not isinstance(pid, int):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"shardrec" in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def replica_name(layout: str, shard: int, replica: int) -> str:
    return f"shard-{layout}-{shard}-{replica}"


@dataclass
class _Replica:
    layout: str
    shard: int
    replica: int
    port: int


@dataclass
class LocalSupervisor:
    """Supervises one local RecommenderCluster from its state folder."""

    state: StateDir
    router_port: int
    router_host: str = "127.0.0.1"
    # Names this run of the supervisor in runtime.json, so `recctl up --wait` never mistakes the
    # files of an earlier run in the same state folder for this one's.
    run_id: str = ""
    processes: ProcessTable = field(default_factory=ProcessTable)
    ports: PortAllocator = field(default_factory=PortAllocator)
    _replicas: dict[str, _Replica] = field(default_factory=dict)
    _builds: LocalBuilds | None = None
    _prober: ReadinessProber = field(default_factory=ReadinessProber)
    _stopping: bool = False
    _written: Topology | None = None
    # spec.index.hnsw.efSearch, published in the topology (routers send it with every query): a
    # change rewrites the topology in the next pass and restarts no process.
    _ef_search: int | None = None

    @property
    def builds(self) -> LocalBuilds:
        if self._builds is None:
            self._builds = LocalBuilds(self.state)
        return self._builds

    @property
    def router_url(self) -> str:
        return f"http://{self.router_host}:{self.router_port}"

    # --- observe -------------------------------------------------------------------------

    def _observe(self, cluster: RecommenderCluster, now: datetime) -> Observed:
        previous = self._read_status()
        layouts = []
        for spec in self.builds.known_layouts():
            shards = []
            for number in range(spec.shards):
                names = [n for n, r in self._replicas.items() if r.layout == spec.id and r.shard == number]
                if not names:
                    continue
                ready = frozenset(
                    self._replicas[n].replica for n in names if self._prober.is_ready(self._url_of(n))
                )
                shards.append(ObservedShard(number, len(names), len(ready), ready))
            layouts.append(
                ObservedLayout(spec=spec, build=self.builds.observe(spec.id), shards=tuple(shards))
            )
        topology = self._read_topology()
        written = topology.active.layout if topology and topology.active else None
        router_ready, serving = self._prober.router(self.router_url)
        routers = (RouterObservation("router", router_ready, serving),)
        confirmed = confirmed_layout(
            routers,
            written=written,
            stored=written,
            previous=previous.active_layout or None,
            document_missing=topology is None,
        )
        return Observed(
            generation=cluster.metadata.generation,
            now=now,
            layouts=tuple(layouts),
            router=ObservedRouter(written_layout=written, confirmed_layout=confirmed, routers=routers),
            previous_status=previous,
            router_endpoint=self.router_url,
            artifact_deletions=self.builds.deletions(),
        )

    def _url_of(self, name: str) -> str:
        return f"http://127.0.0.1:{self._replicas[name].port}"

    # --- act -----------------------------------------------------------------------------

    def _execute(self, action: Action, cluster: RecommenderCluster, now_s: float) -> None:
        if isinstance(action, EnsureBuild):
            self.builds.ensure(action.layout, action.attempt, _object_store_flags(cluster))
        elif isinstance(action, EnsureShards):
            self._ensure_shards(action.layout, action.replicas, cluster, now_s)
        elif isinstance(action, StageRouter):
            topology = self._read_topology()
            active = topology.active.layout if topology and topology.active else None
            self._write_topology(self._known(active), action.layout)
        elif isinstance(action, SwitchRouter):
            self._write_topology(action.layout, None)
        elif isinstance(action, DeleteLayout):
            for name in [n for n, r in self._replicas.items() if r.layout == action.layout_id]:
                self._remove_replica(name)
            self.builds.forget(action.layout_id)
        elif isinstance(action, RecordEvent):
            self._record_event(action)
        elif isinstance(action, RetireLayout):
            pass  # kept running unchanged for rollback until its DeleteLayout
        elif isinstance(action, DeleteArtifacts):
            self.builds.delete_artifacts(action.layout_id)

    def _ensure_shards(
        self, layout: LayoutSpec, replicas: int, cluster: RecommenderCluster, now_s: float
    ) -> None:
        for shard in range(layout.shards):
            for replica in range(replicas):
                name = replica_name(layout.id, shard, replica)
                entry = self._replicas.get(name) or _Replica(layout.id, shard, replica, self.ports.allocate())
                self._replicas[name] = entry
                self.processes.ensure(self._replica_spec(name, entry, cluster), now_s)
            for name in [
                n
                for n, r in self._replicas.items()
                if r.layout == layout.id and r.shard == shard and r.replica >= replicas
            ]:
                self._remove_replica(name)

    def _replica_spec(self, name: str, entry: _Replica, cluster: RecommenderCluster) -> ProcessSpec:
        argv = (
            sys.executable, "-m", SHARD_MODULE,
            *shard_arguments(
                layout_dir=str(self.state.layout_dir(entry.layout)),
                shard=entry.shard,
                host="127.0.0.1",
                port=entry.port,
            ),
        )  # fmt: skip
        env = ((env_name(ShardFlags.PROCESS, ShardFlags.ADMIN_TOKEN), self.state.shard_token()),)
        return ProcessSpec(name, argv, self.state.logs_dir / f"{name}.log", env=env, port=entry.port)

    def _remove_replica(self, name: str) -> None:
        self.processes.remove(name)
        self.ports.release(self._replicas.pop(name).port)

    def _move_replicas_off_taken_ports(
        self, died: list[str], cluster: RecommenderCluster, now_s: float
    ) -> None:
        """A replica that exited because its port was taken gets a new port at once: restarting it on
        the same port would fail for as long as the other socket lives. The serving topology picks up
        the new endpoint in the same pass (`_refresh_serving_endpoints`)."""
        for name in died:
            proc, entry = self.processes.get(name), self._replicas.get(name)
            if proc is None or entry is None or proc.last_exit_code != EXIT_PORT_IN_USE:
                continue
            taken, entry.port = entry.port, self.ports.allocate()
            log.warning(
                "replica %s could not listen on port %d; moving it to port %d", name, taken, entry.port
            )
            self.processes.ensure(self._replica_spec(name, entry, cluster), now_s)

    def _layout_topology(self, layout: LayoutSpec) -> LayoutTopology:
        endpoints = []
        for shard in range(layout.shards):
            names = sorted(
                (r.replica, n)
                for n, r in self._replicas.items()
                if r.layout == layout.id and r.shard == shard
            )
            endpoints.append(
                ShardEndpoints(
                    shard=shard,
                    replicas=[ReplicaEndpoint(name=n, url=self._url_of(n)) for _, n in names],
                )
            )
        return LayoutTopology(
            layout=layout.id,
            version=layout.version,
            shards=layout.shards,
            dimension=layout.dimension,
            metric=layout.metric,
            artifact_dir=str(self.state.layout_dir(layout.id)),
            endpoints=endpoints,
            ef_search=self._ef_search,
        )

    def _known(self, layout_id: str | None) -> LayoutSpec | None:
        return next((spec for spec in self.builds.known_layouts() if spec.id == layout_id), None)

    def _write_topology(self, active: LayoutSpec | None, staged: LayoutSpec | None) -> None:
        """Write the document that serves `active` and prepares `staged`, continuing the revision
        from the file or, if the file was lost, from the status (`fleet.topology_document`)."""
        current = self._read_topology()
        status = self._read_status()
        floor = (status.topology_epoch, status.topology_revision) if status.topology_revision else None
        topology = topology_document(
            current,
            active=self._layout_topology(active) if active is not None else None,
            staged=self._layout_topology(staged) if staged is not None else None,
            floor=floor,
            now_ms=int(time.time() * 1000),
        )
        if topology is None:
            return
        atomic_write_text(self.state.topology_file, topology.model_dump_json(indent=2) + "\n")
        self._written = topology
        log.info(
            "router topology revision %d (epoch %d): active %s, staged %s",
            topology.revision,
            topology.epoch,
            active.id if active else None,
            staged.id if staged else None,
        )

    def _refresh_serving_endpoints(self) -> None:
        """Replicas of the active or staged layout changed (scale): rewrite their endpoints."""
        current = self._read_topology()
        if current is None or current.active is None:
            return
        active = self._known(current.active.layout)
        if active is not None:
            staged = self._known(current.staged.layout) if current.staged is not None else None
            self._write_topology(active, staged)

    def _record_event(self, event: RecordEvent) -> None:
        line = (
            f"{datetime.now(UTC).isoformat(timespec='seconds')} {event.type} {event.reason}: {event.message}"
        )
        with (self.state.root / "events.log").open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        log.info("event %s %s: %s", event.type, event.reason, event.message)

    # --- files ---------------------------------------------------------------------------

    def _read_topology(self) -> Topology | None:
        if not self.state.topology_file.exists():
            return None
        return Topology.model_validate_json(self.state.topology_file.read_text(encoding="utf-8"))

    def _read_status(self) -> RecommenderClusterStatus:
        if not self.state.status_file.exists():
            return RecommenderClusterStatus()
        return RecommenderClusterStatus.model_validate(read_json(self.state.status_file))

    def _write_runtime(self) -> None:
        table = [
            {
                "name": name,
                "pid": proc.pid,
                "port": proc.spec.port,
                "restarts": proc.restarts,
                "ready": self._is_process_ready(name, proc.spec.port),
            }
            for name, proc in self.processes.items()
        ]
        atomic_write_json(
            self.state.runtime_file,
            {
                "supervisor_pid": os.getpid(),
                "run_id": self.run_id,
                "router_url": self.router_url,
                "processes": table,
            },
        )

    def _is_process_ready(self, name: str, port: int | None) -> bool:
        if name == "router":
            return self._prober.router(self.router_url)[0]
        return port is not None and self._prober.is_ready(f"http://127.0.0.1:{port}")

    # --- loop ----------------------------------------------------------------------------

    def _ensure_router(self, cluster: RecommenderCluster, now_s: float) -> None:
        config = {
            "router": cluster.spec.router.model_dump(by_alias=True, mode="json"),
            "auth": cluster.spec.auth.model_dump(by_alias=True, mode="json"),
        }
        atomic_write_json(self.state.router_config_file, config)
        if not self.state.topology_file.exists():
            self._write_topology(None, None)
        argv = (
            sys.executable, "-m", ROUTER_MODULE,
            *router_arguments(
                topology_file=str(self.state.topology_file),
                router_config=str(self.state.router_config_file),
                host=self.router_host,
                port=self.router_port,
            ),
        )  # fmt: skip
        env = ((env_name(RouterFlags.PROCESS, RouterFlags.SHARD_TOKEN), self.state.shard_token()),)
        self.processes.ensure(
            ProcessSpec("router", argv, self.state.logs_dir / "router.log", env=env, port=self.router_port),
            now_s,
        )

    def reconcile_once(self) -> RecommenderClusterStatus:
        now_s = time.monotonic()
        self._written = None
        cluster = load_cluster_file(self.state.spec_file)
        self._ef_search = cluster.spec.index.hnsw.ef_search
        self.builds.reap()
        died = self.processes.tick(now_s)
        for name in died:
            log.warning("process %s died; restarting with backoff", name)
        self._move_replicas_off_taken_ports(died, cluster, now_s)
        self._ensure_router(cluster, now_s)
        self._prober.probe([f"http://127.0.0.1:{r.port}" for r in self._replicas.values()], self.router_url)
        observed = self._observe(cluster, datetime.now(UTC))
        decision = plan(cluster.metadata.name, cluster.spec, observed)
        switching = {action.layout_id for action in decision.of_type(SwitchRouter)}
        for action in decision.actions:
            if isinstance(action, StageRouter) and action.layout_id in switching:
                continue  # staged and switched in one pass: one write does both
            self._execute(action, cluster, now_s)
        self._refresh_serving_endpoints()
        status = decision.status
        if self._written is not None:
            status = with_topology_written(status, self._written)
        if status != observed.previous_status:
            atomic_write_json(self.state.status_file, status.model_dump(by_alias=True, mode="json"))
        self._write_runtime()
        return decision.status

    def run(self) -> None:
        """Reconcile until SIGTERM/SIGINT, then stop every child."""

        def stop(signum: int, frame: FrameType | None) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        kill_recorded_children(self.state)
        try:
            while not self._stopping:
                try:
                    self.reconcile_once()
                except Exception:
                    log.exception("reconcile pass failed; retrying")
                time.sleep(TICK_S)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.builds.stop_all()
        self.processes.stop_all()
        self._prober.close()
        self._write_runtime()


def _object_store_flags(cluster: RecommenderCluster) -> ObjectStoreFlags | None:
    """`--s3-*` flags from `spec.index.objectStore` for a build with an s3:// source (credentials:
    the AWS_* variables of this process's environment, which the build inherits)."""
    settings = cluster.spec.index.object_store
    if settings is None:
        return None
    return ObjectStoreFlags(
        endpoint=settings.endpoint, region=settings.region, path_style=settings.path_style
    )
