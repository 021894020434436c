"""What the hands report to the planner: the world as observed at the start of a pass.

The planner keeps no memory of its own. Everything it needs comes from here: the layouts that
exist (their build, their shard workloads and readiness), what the router topology names, the
previous status (where the state machine's clocks and verdicts live, so a restarted process
resumes), the object's generation and the current time.

Conventions for the hands:
- Report every layout of this cluster that exists in any form (a build, an artifact, a shard
  workload), with its LayoutSpec (store `LayoutSpec.canonical_json()` on what you create and
  read it back). A layout not reported is taken as gone.
- `ObservedBuild.state == "Succeeded"` means a verified artifact exists (a valid `layout.json`),
  whether or not the build Job or process is still around.
- `ObservedLayout.shards` lists only shards whose workload (StatefulSet, or supervised processes
  locally) exists; a shard that is not listed is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from shardrec.api.canary import CanaryStats
from shardrec.api.carry import CarryProgress
from shardrec.api.v1alpha1 import LayoutQualityStatus, RecommenderClusterStatus
from shardrec.planning.fleet import RouterObservation
from shardrec.planning.layouts import LayoutSpec

BuildState = Literal["Absent", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class OfflineQuality:
    """The model's offline metrics as the built layout records them (layout.json `quality`)."""

    ndcg_at_10: float
    hit_rate_at_10: float | None = None
    split: str = ""  # "test" (leave-last-n-out) or "validation" (the tuning's)

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> OfflineQuality | None:
        """From a layout manifest's `quality` block; None when absent or without NDCG@10."""
        if not record or not isinstance(record.get("ndcg_at_10"), int | float):
            return None
        hit = record.get("hit_rate_at_10")
        return cls(
            ndcg_at_10=float(record["ndcg_at_10"]),
            hit_rate_at_10=float(hit) if isinstance(hit, int | float) else None,
            split=str(record.get("split", "")),
        )

    @classmethod
    def from_status(cls, record: LayoutQualityStatus | None) -> OfflineQuality | None:
        """From a layout's `status.layouts[].quality` (what an earlier pass saw)."""
        if record is None:
            return None
        return cls(ndcg_at_10=record.ndcg_at10, hit_rate_at_10=record.hit_rate_at10, split=record.split)

    def to_status(self) -> LayoutQualityStatus:
        """As `status.layouts[].quality`."""
        return LayoutQualityStatus(
            ndcg_at10=min(max(self.ndcg_at_10, 0.0), 1.0),
            hit_rate_at10=None if self.hit_rate_at_10 is None else min(max(self.hit_rate_at_10, 0.0), 1.0),
            split=self.split[:64],
        )

    def describe(self) -> str:
        """e.g. `NDCG@10 0.0363 (test split)`."""
        where = f" ({self.split} split)" if self.split else ""
        return f"NDCG@10 {self.ndcg_at_10:.4f}{where}"


@dataclass(frozen=True)
class ObservedBuild:
    """The index build of one layout.

    `attempt` is the token of the `EnsureBuild` that started this build (store it with the build
    Job or process). A failure counts against the current attempt only when the tokens match,
    so a stale failure seen right after a retry is not mistaken for a new one. `None` means
    the hands do not track attempts: every failure counts.

    `quality`: the offline metrics the built artifact records, None when it records none (or the
    hands cannot read them); `spec.index.qualityGate` judges a layout by them.
    """

    state: BuildState = "Absent"
    message: str = ""
    attempt: str | None = None
    quality: OfflineQuality | None = None


@dataclass(frozen=True)
class ObservedPod:
    """One replica of a shard workload, for template rolls (`shardrec.planning.rolls`).

    `updated`: it runs the workload's current template (on Kubernetes its
    `controller-revision-hash` label equals the StatefulSet's `status.updateRevision`).
    `terminating`: its deletion has begun (it no longer counts as a replica to keep).
    `ready_since`: when its Ready condition last turned True (None where the hands do not know:
    the local runtime's routers reach a replica as soon as it is ready).
    """

    name: str
    ordinal: int
    ready: bool
    updated: bool
    terminating: bool = False
    ready_since: datetime | None = None

    def settled(self, now: datetime, settle_seconds: float) -> bool:
        """Ready for at least `settle_seconds`, or ready with no known transition time."""
        if not self.ready:
            return False
        return self.ready_since is None or (now - self.ready_since).total_seconds() >= settle_seconds


@dataclass(frozen=True)
class ObservedShard:
    """One shard workload of a layout.

    `desired_replicas` is what the workload currently asks for (StatefulSet spec.replicas, or
    processes the local supervisor keeps), `ready_replicas` how many pass readiness (index loaded
    and warm). `ready_ordinals` names the ready replicas by ordinal when known; it lets a
    scale-down prove a ready replica survives (ordinals >= the new count are removed first).

    `pods` lists the replicas with their template revision when the hands can tell (None: they
    do not roll templates, e.g. the local runtime restarts processes itself). `template_settled`
    is False while the workload's controller has not yet observed its latest spec (StatefulSet
    `status.observedGeneration` behind `metadata.generation`): `ObservedPod.updated` is then stale
    and no pod is replaced.
    """

    shard: int
    desired_replicas: int
    ready_replicas: int
    ready_ordinals: frozenset[int] | None = None
    pods: tuple[ObservedPod, ...] | None = None
    template_settled: bool = True

    def live_pods(self) -> tuple[ObservedPod, ...]:
        """The pods not being deleted (empty when pods are not reported)."""
        return tuple(pod for pod in self.pods or () if not pod.terminating)

    def serving_replicas(self) -> int:
        """Ready replicas that are not being deleted (`ready_replicas` when pods are not reported)."""
        if self.pods is None:
            return self.ready_replicas
        return sum(1 for pod in self.live_pods() if pod.ready)

    def at_rest(self, replicas: int) -> bool:
        """Asked for `replicas`, running exactly that many pods, all Ready, none being deleted."""
        if self.pods is None:
            return self.desired_replicas == replicas and self.ready_replicas >= replicas
        return (
            self.desired_replicas == replicas
            and len(self.pods) == replicas
            and all(pod.ready and not pod.terminating for pod in self.pods)
        )

    def outdated_pods(self) -> tuple[ObservedPod, ...]:
        """Live pods that run an older template, highest ordinal first (the StatefulSet order)."""
        old = [pod for pod in self.live_pods() if not pod.updated]
        return tuple(sorted(old, key=lambda pod: pod.ordinal, reverse=True))


@dataclass(frozen=True)
class ObservedLayout:
    """One layout that exists in the world."""

    spec: LayoutSpec
    build: ObservedBuild = field(default_factory=ObservedBuild)
    shards: tuple[ObservedShard, ...] = ()

    @property
    def id(self) -> str:
        """The layout id."""
        return self.spec.id

    def shard(self, number: int) -> ObservedShard | None:
        """The workload of shard `number`, or None when it does not exist."""
        for entry in self.shards:
            if entry.shard == number:
                return entry
        return None

    def missing_shards(self) -> list[int]:
        """Shards of this layout with no workload or no ready replica."""
        missing = []
        for number in range(self.spec.shards):
            entry = self.shard(number)
            if entry is None or entry.ready_replicas < 1:
                missing.append(number)
        return missing

    def shards_short_of(self, replicas: int) -> list[int]:
        """Shards with fewer than `replicas` ready replicas (or no workload)."""
        short = []
        for number in range(self.spec.shards):
            entry = self.shard(number)
            if entry is None or entry.ready_replicas < replicas:
                short.append(number)
        return short


@dataclass(frozen=True)
class ObservedCarrier:
    """The carrier of one carrying layout (on Kubernetes the Deployment `<cluster>-carry-<layout>`
    and its pod): the requests the hands last wrote to it, and what it last reported.

    `progress` None: no report yet (the pod is starting, or its annotation is unreadable). A
    request counts as carried out only when the report names its id: the carrier may still be
    working on an older request, or on none."""

    layout: str
    """The layout the writes are carried into."""
    source: str
    """The layout whose logged writes are carried."""
    hand_over_requested: str | None = None
    open_requested: str | None = None
    finish_requested: str | None = None
    progress: CarryProgress | None = None
    back: bool = False
    """A carry back: `layout` is a kept layout `source` was carried from (a rollback)."""

    @property
    def cut_taken(self) -> bool:
        """The carry folder exists on the store: the build may fold it in."""
        return self.progress is not None and self.progress.cut is not None

    @property
    def caught_up(self) -> bool:
        return self.progress is not None and self.progress.caught_up

    @property
    def handed_over(self) -> bool:
        """The current hand-over request succeeded: the old leaders are fenced, everything forwarded."""
        request = self.hand_over_requested
        return request is not None and self.progress is not None and self.progress.handed_over == request

    @property
    def hand_over_failed(self) -> bool:
        """The current hand-over request failed (the carrier opened the old leaders again)."""
        request = self.hand_over_requested
        return request is not None and self.progress is not None and self.progress.hand_over_failed == request

    @property
    def opened(self) -> bool:
        """The current open request was carried out: the old leaders take writes again."""
        request = self.open_requested
        return request is not None and self.progress is not None and self.progress.opened == request

    @property
    def fenced(self) -> bool:
        """The old layout's leaders are fenced by this carrier and not opened again."""
        return self.handed_over and not self.opened

    @property
    def done(self) -> bool:
        return self.progress is not None and self.progress.done


@dataclass(frozen=True)
class ObservedRouter:
    """Which layout the router topology names — as written and as confirmed (ECK expectations).

    `written_layout`: the layout of the hands' most recent committed topology write (their own
    record, or the stored topology when they have none). `confirmed_layout`: the layout the router
    fleet is seen to serve: `shardrec.planning.fleet.confirmed_layout` over the routers' own
    reports (or the topology read back where no router reports). While the two differ a switch is
    in flight and no disruptive step (another switch, a deletion) is taken.

    `routers`: every router the hands know, with what it reports (empty where the hands have no
    per-router view). Acknowledgement rules apply when at least one of them reports.
    """

    written_layout: str | None = None
    confirmed_layout: str | None = None
    routers: tuple[RouterObservation, ...] = ()

    @property
    def switch_in_flight(self) -> bool:
        """True while the last write is not yet confirmed."""
        return self.written_layout is not None and self.written_layout != self.confirmed_layout


@dataclass(frozen=True)
class Observed:
    """The planner's whole input besides the spec."""

    generation: int
    now: datetime
    layouts: tuple[ObservedLayout, ...] = ()
    router: ObservedRouter = field(default_factory=ObservedRouter)
    previous_status: RecommenderClusterStatus = field(default_factory=RecommenderClusterStatus)
    router_endpoint: str = ""
    artifact_deletions: Mapping[str, BuildState] = field(default_factory=dict)
    """Artifact deletions (DeleteArtifacts) the hands have started, by layout id: Running,
    Succeeded (the artifacts are gone) or Failed. Absent: none started or none remembered."""
    canary_reports: tuple[CanaryStats, ...] = ()
    """Each router's canary measurements (`GET /canary`), as reported; the planner sums those
    about the running candidate and step (`api.canary.merged`)."""
    canary_command: str | None = None
    """The `shardrec.io/canary-command` annotation's value (None when unset)."""
    carries_writes: bool = False
    """The hands carry a layout's logged item writes into the next layout at a cutover (cut,
    fold-in at the build, forwarding, fence and hand-over: the local runtime does,
    tools/local/carry.py) by themselves: the planner does not drive it (the local runtime).
    False with `runs_carriers` False: nobody carries, so the planner refuses to move off a layout
    that logs writes while writes are on (`predicates.writes_carried_to_new_layout`)."""
    runs_carriers: bool = False
    """The hands run a carrier per carrying layout as the planner asks (`EnsureCarrier`,
    `DeleteCarrier`) and report them in `carriers` (the operator): the planner drives the carry
    step by step (`shardrec.planning.carrying`)."""
    carriers: tuple[ObservedCarrier, ...] = ()
    """Every carrier that exists, with its requests and its last report."""

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("Observed.now must be timezone-aware (use datetime.now(UTC))")
        ids = [layout.id for layout in self.layouts]
        if len(ids) != len(set(ids)):
            raise ValueError(f"Observed.layouts lists a layout twice: {sorted(ids)}")

    def layout(self, layout_id: str | None) -> ObservedLayout | None:
        """The observed layout with this id, or None."""
        for entry in self.layouts:
            if entry.id == layout_id:
                return entry
        return None

    def carrier(self, layout_id: str | None) -> ObservedCarrier | None:
        """The carrier carrying writes into `layout_id`, or None."""
        for entry in self.carriers:
            if entry.layout == layout_id:
                return entry
        return None

    def quality(self, layout_id: str | None) -> OfflineQuality | None:
        """A layout's offline metrics: as its build reports them now, else as an earlier pass
        recorded them in the status (on Kubernetes the build pod that reported them may be gone;
        the serving layout's metrics must outlive it for a relative quality gate)."""
        observed = self.layout(layout_id)
        if observed is not None and observed.build.quality is not None:
            return observed.build.quality
        for entry in self.previous_status.layouts:
            if entry.name == layout_id:
                return OfflineQuality.from_status(entry.quality)
        return None
