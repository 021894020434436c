"""The local runtime's hands: observe processes and builds, ask the shared planner what to do,
do it, write status. Kubernetes is the operator's hands; these are the same moves with processes.

One pass (`reconcile_once`) is: reap builds and dead children -> probe readiness -> observe ->
`plan()` -> execute the actions in order -> write topology, status and the runtime table.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Literal

import httpx
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
from shardrec.api.cpu import cpu_threads
from shardrec.api.topology import CanaryRoute, LayoutTopology, ReplicaEndpoint, ShardEndpoints, Topology
from shardrec.api.v1alpha1 import CANARY_COMMAND_ANNOTATION, RecommenderCluster, RecommenderClusterStatus
from shardrec.planning import plan
from shardrec.planning.actions import (
    Action,
    DeleteArtifacts,
    DeleteLayout,
    EnsureBuild,
    EnsureShards,
    RecordEvent,
    RetireLayout,
    RouteCanary,
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
from shardrec.planning.timestamps import format_time
from shardrec.serving.index.write_log import WriteLogError
from shardrec.serving.shard.exit_codes import EXIT_PORT_IN_USE
from shardrec.serving.tls import client_context
from shardrec.tools.local.builds import LocalBuilds
from shardrec.tools.local.carry import CutError, LocalCarry, abandoned_back, wants_carry_back
from shardrec.tools.local.plan_preview import paused_preview
from shardrec.tools.local.ports import PortAllocator
from shardrec.tools.local.probes import ReadinessProber
from shardrec.tools.local.processes import (
    STATE_DIR_ENV,
    Adoption,
    ProcessIdentity,
    ProcessSpec,
    ProcessTable,
    adoption_decision,
    processes_of_state_dir,
    read_stat,
    spec_digest,
    stop_verified,
)
from shardrec.tools.local.state import ShardTls, StateDir, atomic_write_json, atomic_write_text, read_json

log = logging.getLogger("shardrec.local")

TICK_S = 0.2


def load_cluster_file(path: Path) -> RecommenderCluster:
    """Parse and validate a RecommenderCluster YAML with the same model the CRD comes from."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return RecommenderCluster.model_validate(data)


@dataclass(frozen=True)
class RecordedProcess:
    """One row of the process table a supervisor left in runtime.json."""

    name: str
    identity: ProcessIdentity
    digest: str | None
    restarts: int
    port: int | None
    replica: tuple[str, int, int] | None  # (layout, shard, replica) of a shard replica


def recorded_processes(state: StateDir) -> list[RecordedProcess]:
    """The process table of the last supervisor, without rows that do not name a process by pid
    and start time (tables written before start times were recorded, a damaged file)."""
    try:
        table = read_json(state.runtime_file).get("processes", [])
    except (OSError, ValueError, AttributeError):
        return []
    rows = []
    for entry in table if isinstance(table, list) else []:
        pid, start = entry.get("pid"), entry.get("start_time")
        if not isinstance(pid, int) or not isinstance(start, int):
            continue
        layout, shard, replica = entry.get("layout"), entry.get("shard"), entry.get("replica")
        where = (
            (layout, shard, replica)
            if isinstance(layout, str) and isinstance(shard, int) and isinstance(replica, int)
            else None
        )
        port = entry.get("port")
        rows.append(
            RecordedProcess(
                name=str(entry.get("name", "")),
                identity=ProcessIdentity(pid, start),
                digest=entry.get("digest") if isinstance(entry.get("digest"), str) else None,
                restarts=int(entry.get("restarts", 0) or 0),
                port=port if isinstance(port, int) else None,
                replica=where,
            )
        )
    return rows


def kill_recorded_children(state: StateDir, keep: frozenset[int] = frozenset()) -> int:
    """Stop what a killed supervisor left running: the processes of its last table, each only if
    its pid still has the recorded start time, and every process marked with this state folder
    (which finds children the table missed, a full disk having kept it from being rewritten).
    Processes in the sessions of `keep` (adopted children) are left alone. Returns how many."""
    stopped = 0
    for row in recorded_processes(state):
        if (
            row.identity.pid not in keep
            and adoption_decision(row.identity, read_stat(row.identity.pid), row.digest, None)
            is not Adoption.GONE
        ):
            stop_verified(row.identity)
            stopped += 1
    for identity, session in list(processes_of_state_dir(state.root)):
        if identity.pid != os.getpid() and session not in keep:
            stop_verified(identity)
            stopped += 1
    return stopped


def unsupervised_processes(state: StateDir) -> int:
    """How many processes of this state folder run (for `status` while no supervisor does)."""
    return sum(1 for _ in processes_of_state_dir(state.root))


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
    shard_tls: bool = True
    """Router -> shard over TLS with the cluster's own CA (`StateDir.shard_tls`); the default."""
    _tls: ShardTls | None = None
    _carry: LocalCarry | None = None

    def __post_init__(self) -> None:
        if self.shard_tls:
            self._tls = self.state.shard_tls(datetime.now(UTC))
            self._prober.trust(self._tls.ca)

    def _shard_url(self, port: int) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{port}"

    @property
    def carry(self) -> LocalCarry:
        """Fold-in at the next version (tools/local/carry.py): cuts, forwarding, the gate."""
        if self._carry is None:
            verify: ssl.SSLContext | bool = client_context(self._tls.ca) if self._tls is not None else True
            token = self.state.shard_token()
            self._carry = LocalCarry(self.state, lambda: httpx.Client(verify=verify), token)
        return self._carry

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
                if self.carry.holds_back(spec.id):
                    ready = frozenset()  # its old layout's writes are not all forwarded yet
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
            canary_reports=tuple(r for r in (self._prober.canary(self.router_url),) if r is not None),
            canary_command=_annotation(cluster, CANARY_COMMAND_ANNOTATION),
            carries_writes=True,  # cut, fold-in, forwarding and hand-over: tools/local/carry.py
        )

    def _url_of(self, name: str) -> str:
        return self._shard_url(self._replicas[name].port)

    # --- act -----------------------------------------------------------------------------

    def _execute(self, action: Action, cluster: RecommenderCluster, now_s: float) -> None:
        if isinstance(action, EnsureBuild):
            layout = action.layout
            try:
                self.builds.ensure(
                    layout, action.attempt, _object_store_flags(cluster), carry=lambda: self._take_cut(layout)
                )
            except CutError as exc:  # no build starts; the next pass tries again
                log.error("build of %s not started: %s", layout.id, exc)
        elif isinstance(action, EnsureShards):
            self._ensure_shards(action.layout, action.replicas, cluster, now_s)
        elif isinstance(action, StageRouter):
            topology = self._read_topology()
            active = topology.active.layout if topology and topology.active else None
            self._write_topology(self._known(active), action.layout)
        elif isinstance(action, SwitchRouter):
            if self._hand_over(action.layout):
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
        elif isinstance(action, RouteCanary):
            self._route_canary(action)

    def _take_cut(self, layout: LayoutSpec) -> Path | None:
        """The carry folder of a layout whose build starts: the active layout's writes up to now
        (None while no other layout serves)."""
        topology = self._read_topology()
        active = self._known(topology.active.layout if topology and topology.active else None)
        if active is None or active.id == layout.id:
            return None
        try:
            return self.carry.take_cut(layout, active)
        except (OSError, WriteLogError) as exc:
            raise CutError(f"cannot carry the writes of {active.id}: {exc}") from exc

    def _layout_urls(self, layout_id: str) -> dict[tuple[int, int], str]:
        """(shard, replica) -> base URL of every replica process of the layout."""
        return {
            (r.shard, r.replica): self._url_of(name)
            for name, r in self._replicas.items()
            if r.layout == layout_id
        }

    def _leaders(self, layout_id: str) -> dict[int, str]:
        """shard -> URL of replica 0 (the leader) of every shard of the layout that has one."""
        return {shard: url for (shard, replica), url in self._layout_urls(layout_id).items() if replica == 0}

    def _hand_over(self, layout: LayoutSpec) -> bool:
        """Before the router switches to `layout`: open its own leaders (fenced if it served before
        and is rolled back to), and, when it carries writes from another layout (forward, or back
        from the serving one), fence that one's leaders and forward the rest
        (tools/local/carry.py). False: do not switch this pass."""
        urls = self._layout_urls(layout.id)
        if layout.id in self.carry.fenced_layouts() and all(
            self.carry.fence(url, False) for (_, replica), url in urls.items() if replica == 0
        ):
            self.carry.mark_fenced(layout.id, False)
        serving = self._serving()
        back_from = serving.id if serving and (layout.id, serving.id) in self._backs_running() else None
        source = back_from or self.carry.source(layout.id)
        if source is None:
            return True
        old = self._leaders(source)
        live = {spec.id for spec in self.builds.known_layouts()}
        self.carry.mark_fenced(source, True)
        if not self.carry.hand_over(layout, old, urls, live, back_from=back_from):
            log.warning(
                "not switching to %s yet: the writes of %s are not all carried over", layout.id, source
            )
            return False
        return True

    def _open_active_leaders(self) -> None:
        """The serving layout's leaders must take writes: a hand-over that fenced them and then
        did not switch (it failed, the supervisor died in between, the rollout was abandoned) is
        undone here, at the end of every pass."""
        topology = self._read_topology()
        active = topology.active.layout if topology and topology.active else None
        if active is None or active not in self.carry.fenced_layouts():
            return
        leaders = [url for (_, replica), url in self._layout_urls(active).items() if replica == 0]
        if all(self.carry.fence(url, False) for url in leaders):
            self.carry.mark_fenced(active, False)

    def _serving(self) -> LayoutSpec | None:
        """The layout of the topology's active section (what the router serves or is told to)."""
        topology = self._read_topology()
        return self._known(topology.active.layout if topology and topology.active else None)

    def _backs_running(self) -> set[tuple[str, str]]:
        """(to, source) of every carry back that has not ended."""
        return {(to, source) for to, source, progress in self.carry.backs() if not progress.done}

    def _carry_back(self, cluster: RecommenderCluster) -> None:
        """A rollback (or a roll forward) to a kept layout while another one serves: the writes the
        serving layout holds are carried back into the kept one before it serves
        (tools/local/carry.py, "The carry back"). One step per pass: hold the kept layout back,
        end what still forwards into the serving layout, open the kept layout's leaders, then let
        the forwarding run (`_forward_carried_writes`); the hand-over is `_hand_over`'s. A carry
        back whose switch did not happen and that lost its reason is dropped and its destination's
        leaders fenced again."""
        serving = self._serving()
        target = LayoutSpec.from_spec(cluster.spec)
        for to, source in sorted(self._backs_running()):
            if abandoned_back(to, source, target.id, serving.id if serving else None):
                log.info("carry back from %s into %s abandoned: %s does not serve", source, to, to)
                self.carry.mark_fenced(to, True)
                for url in self._leaders(to).values():
                    self.carry.fence(url, True)  # best effort: no router sends it writes anyway
                self.carry.drop_back(to, source)
        if cluster.spec.paused:
            return  # no new step while paused, as no build (and so no cut) starts then
        built = target.id in {spec.id for spec in self.builds.known_layouts()} and (
            self.builds.observe(target.id).state == "Succeeded"
        )
        if serving is None or not wants_carry_back(
            target.id, serving.id, built, self.carry.source(target.id)
        ):
            return
        self.carry.start_back(target.id, serving.id)
        if self.carry.back_begun(target.id, serving.id):
            return
        feeding = self.carry.running_into(serving.id)
        if feeding:
            ready, report = self._prober.router(self.router_url)
            if not ready or report is None or report.layout != serving.id:
                return  # a router that may still send writes to the source: not yet
            urls = self._layout_urls(serving.id)
            live = {spec.id for spec in self.builds.known_layouts()}
            for forwarding in feeding:
                sources = list(self._leaders(forwarding.source).values())
                self.carry.finish(forwarding, serving, sources, urls, live)
            return
        leaders = self._leaders(target.id)
        if len(leaders) < target.shards or not all(self.carry.fence(url, False) for url in leaders.values()):
            return  # every leader must take the forwarded writes; the next pass tries again
        self.carry.mark_fenced(target.id, False)
        self.carry.begin_back(target.id, serving)

    def _forward_carried_writes(self) -> None:
        """Forward the writes their old layout logged after the cut to layouts whose every replica
        is ready (before the gate opens, and after it until the old layout is deleted), and the
        writes of carry backs that began (`_carry_back`)."""
        known = self.builds.known_layouts()
        live = {spec.id for spec in known}
        for spec in known:
            names = [n for n, r in self._replicas.items() if r.layout == spec.id]
            urls = {(self._replicas[n].shard, self._replicas[n].replica): self._url_of(n) for n in names}
            if len({shard for shard, _ in urls}) < spec.shards or not all(
                self._prober.is_ready(url) for url in urls.values()
            ):
                continue
            self.carry.forward(spec, urls, live)
        self.carry.collect(live)

    def _route_canary(self, action: RouteCanary) -> None:
        """The topology's canary section (kept by every other write until the next RouteCanary)."""
        topology = self._read_topology()
        active = self._known(topology.active.layout if topology and topology.active else None)
        staged = self._known(topology.staged.layout if topology and topology.staged else None)
        if action.layout is None:
            if staged is not None and staged.id == action.unstage:
                staged = None
            self._write_topology(active, staged, canary=None)
            return
        route = CanaryRoute(
            layout=action.layout.id,
            step=action.step,
            weight=action.weight,
            sample_rate=action.sample_rate,
            max_inflight=action.max_inflight,
        )
        self._write_topology(active, action.layout, canary=route)

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
                write_log_dir=str(self.state.write_log_dir(entry.layout, entry.replica)),
            ),
        )  # fmt: skip
        env: tuple[tuple[str, str], ...] = (
            (env_name(ShardFlags.PROCESS, ShardFlags.ADMIN_TOKEN), self.state.shard_token()),
            (STATE_DIR_ENV, str(self.state.root)),
        )
        if self._tls is not None:
            env += (
                (env_name(ShardFlags.PROCESS, ShardFlags.TLS_CERT), str(self._tls.cert)),
                (env_name(ShardFlags.PROCESS, ShardFlags.TLS_KEY), str(self._tls.key)),
            )
        return ProcessSpec(name, argv, self.state.logs_dir / f"{name}.log", env=env, port=entry.port)

    def _remove_replica(self, name: str) -> None:
        self._prober.drop_connections()  # else the replica waits out its grace for their TLS close
        if self._carry is not None:
            self._carry.drop_connections()  # the same for the carry's connections to the shards
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

    def _write_topology(
        self,
        active: LayoutSpec | None,
        staged: LayoutSpec | None,
        canary: CanaryRoute | Literal["keep"] | None = "keep",
    ) -> None:
        """Write the document that serves `active` and prepares `staged`, continuing the revision
        from the file or, if the file was lost, from the status (`fleet.topology_document`). The
        canary section is kept unless given (it goes with its staged layout)."""
        current = self._read_topology()
        if canary == "keep":
            canary = current.canary if current is not None else None
        status = self._read_status()
        floor = (status.topology_epoch, status.topology_revision) if status.topology_revision else None
        topology = topology_document(
            current,
            active=self._layout_topology(active) if active is not None else None,
            staged=self._layout_topology(staged) if staged is not None else None,
            floor=floor,
            now_ms=int(time.time() * 1000),
            canary=canary,
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
        table = []
        for name, proc in self.processes.items():
            row: dict[str, object] = {
                "name": name,
                "pid": proc.pid,
                # pid and start time name the process: a new supervisor adopts it only if both match
                "start_time": proc.identity.start_time if proc.identity is not None else None,
                "digest": spec_digest(proc.spec),
                "port": proc.spec.port,
                "restarts": proc.restarts,
                "ready": self._is_process_ready(name, proc.spec.port),
            }
            replica = self._replicas.get(name)
            if replica is not None:
                row.update(layout=replica.layout, shard=replica.shard, replica=replica.replica)
            table.append(row)
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
        return port is not None and self._prober.is_ready(self._shard_url(port))

    # --- loop ----------------------------------------------------------------------------

    def _router_spec(self, cluster: RecommenderCluster) -> ProcessSpec:
        """The router process, and its config file written. The router reads the config and the
        API keys once at start, so the spec's revision digests both: `recctl apply` of router or
        auth settings (or a new keys file) restarts the router, which then serves with them."""
        config = {
            "router": cluster.spec.router.model_dump(by_alias=True, mode="json"),
            "auth": cluster.spec.auth.model_dump(by_alias=True, mode="json"),
            # Local shards always keep a write log (so a cluster that had writes on keeps replaying
            # and carrying them after they are turned off), but the router takes new writes only
            # while spec.writes.enabled says so: off, a PUT/DELETE is 403 writes_disabled, as on
            # Kubernetes (where a writes-off layout's shards keep no log).
            "writes": {"ack": cluster.spec.writes.ack, "enabled": cluster.spec.writes.enabled},
        }
        atomic_write_json(self.state.router_config_file, config)
        keys_file = cluster.spec.auth.api_keys_file
        revision = hashlib.sha256(self.state.router_config_file.read_bytes())
        if keys_file is not None:
            try:
                revision.update(Path(keys_file).read_bytes())
            except OSError as exc:
                revision.update(repr(exc).encode())  # the router reports it and exits
        argv = (
            sys.executable, "-m", ROUTER_MODULE,
            *router_arguments(
                topology_file=str(self.state.topology_file),
                router_config=str(self.state.router_config_file),
                host=self.router_host,
                port=self.router_port,
                api_keys_file=keys_file,
                # resources.router's CPU (limit, else request), as the operator passes it; one
                # worker without it: locally the router shares the machine with every shard.
                workers=cpu_threads(cluster.spec.resources.router) or 1,
            ),
        )  # fmt: skip
        env: tuple[tuple[str, str], ...] = (
            (env_name(RouterFlags.PROCESS, RouterFlags.SHARD_TOKEN), self.state.shard_token()),
            (STATE_DIR_ENV, str(self.state.root)),
        )
        if self._tls is not None:
            env += ((env_name(RouterFlags.PROCESS, RouterFlags.SHARD_CA), str(self._tls.ca)),)
        return ProcessSpec(
            "router",
            argv,
            self.state.logs_dir / "router.log",
            env=env,
            port=self.router_port,
            revision=revision.hexdigest(),
        )

    def _ensure_router(self, cluster: RecommenderCluster, now_s: float) -> None:
        spec = self._router_spec(cluster)
        if not self.state.topology_file.exists():
            self._write_topology(None, None)
        self.processes.ensure(spec, now_s)

    def adopt_or_clean_up(self, cluster: RecommenderCluster) -> list[str]:
        """Take over what a dead supervisor of this state folder left running. A recorded process
        whose pid still has its recorded start time and that runs what this supervisor would run
        is adopted (supervised, restarted if it dies); one that runs something else is stopped; a
        pid that now names another process is left alone. Every other process marked with this
        state folder (an orphaned build, a child the stale table missed) is stopped. Returns the
        names adopted."""
        now_s = time.monotonic()
        adopted: list[str] = []
        for row in recorded_processes(self.state):
            wanted: ProcessSpec | None = None
            replica: _Replica | None = None
            if row.name == "router":
                wanted = self._router_spec(cluster)
            elif row.replica is not None and row.port is not None:
                layout, shard, number = row.replica
                replica = _Replica(layout, shard, number, row.port)
                wanted = self._replica_spec(row.name, replica, cluster)
            decision = adoption_decision(
                row.identity,
                read_stat(row.identity.pid),
                row.digest,
                spec_digest(wanted) if wanted is not None else None,
            )
            if decision is Adoption.ADOPT and wanted is not None:
                self.processes.adopt(wanted, row.identity, row.restarts, now_s)
                if replica is not None:
                    self._replicas[row.name] = replica
                    self.ports.claim(replica.port)
                adopted.append(row.name)
            elif decision is Adoption.REPLACE:
                log.info("stopping %s (pid %d): it does not run the current spec", row.name, row.identity.pid)
                stop_verified(row.identity)
        keep = frozenset(proc.pid for _, proc in self.processes.items() if proc.pid is not None)
        stray = kill_recorded_children(self.state, keep)
        if adopted or stray:
            log.info("adopted %s; stopped %d stray processes", ", ".join(adopted) or "nothing", stray)
        return adopted

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
        self._prober.probe([self._shard_url(r.port) for r in self._replicas.values()], self.router_url)
        self._carry_back(cluster)
        self._forward_carried_writes()
        observed = self._observe(cluster, datetime.now(UTC))
        decision = plan(cluster.metadata.name, cluster.spec, observed)
        switching = {action.layout_id for action in decision.of_type(SwitchRouter)}
        for action in decision.actions:
            if isinstance(action, StageRouter) and action.layout_id in switching:
                continue  # staged and switched in one pass: one write does both
            self._execute(action, cluster, now_s)
        self._refresh_serving_endpoints()
        self._open_active_leaders()
        status = decision.status
        if self._written is not None:
            status = with_topology_written(status, self._written)
        if cluster.spec.paused:
            status = status.model_copy(
                update={"plan_preview": paused_preview(cluster, observed.previous_status)}
            )
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
        cluster = load_cluster_file(self.state.spec_file)
        self.adopt_or_clean_up(cluster)
        self._restart_rollout_clocks()
        try:
            while not self._stopping:
                try:
                    self.reconcile_once()
                except Exception:
                    log.exception("reconcile pass failed; retrying")
                time.sleep(TICK_S)
        finally:
            self.shutdown()

    def _restart_rollout_clocks(self) -> None:
        status = self._read_status()
        restarted = restart_rollout_clocks(status, datetime.now(UTC))
        if restarted != status:
            atomic_write_json(self.state.status_file, restarted.model_dump(by_alias=True, mode="json"))

    def shutdown(self) -> None:
        # The HTTP clients first: a shard's graceful stop waits for the TLS close of their kept-alive
        # connections, which nobody answers while this thread waits in stop_all.
        self._prober.close()
        if self._carry is not None:
            self._carry.close()
        self.builds.stop_all()
        self.processes.stop_all()
        self._write_runtime()


def _annotation(cluster: RecommenderCluster, name: str) -> str | None:
    """One of the cluster file's metadata.annotations, or None."""
    annotations = (cluster.metadata.model_extra or {}).get("annotations")
    value = annotations.get(name) if isinstance(annotations, dict) else None
    return str(value) if value is not None else None


def restart_rollout_clocks(status: RecommenderClusterStatus, now: datetime) -> RecommenderClusterStatus:
    """A layout still on its way (Building, Starting) when a supervisor starts gets its rollout
    clock (`createdAt`, which `rollout.timeoutSeconds` counts from) set to now: nothing worked on
    it while no supervisor ran, so a stop, a long pause and an `up` must not fail it as timed out.
    Layouts in any other state keep their records."""
    stamp = format_time(now)
    layouts = [
        entry.model_copy(update={"created_at": stamp}) if entry.state in ("Building", "Starting") else entry
        for entry in status.layouts
    ]
    if layouts == status.layouts:
        return status
    return status.model_copy(update={"layouts": layouts})


def _object_store_flags(cluster: RecommenderCluster) -> ObjectStoreFlags | None:
    """`--s3-*` flags from `spec.index.objectStore` for a build with an s3:// source (credentials:
    the AWS_* variables of this process's environment, which the build inherits)."""
    settings = cluster.spec.index.object_store
    if settings is None:
        return None
    return ObjectStoreFlags(
        endpoint=settings.endpoint, region=settings.region, path_style=settings.path_style
    )
