"""The planner's output: typed actions the hands execute, each with the reason it is taken.

Semantics every hand must honour:
- Ensure* actions are level-based: the planner repeats them on every pass while they hold;
  executing one whose effect is already in place must change nothing.
- The hands never remove or scale anything on their own: a layout not named by an action is
  left exactly as it is (that is how `paused` freezes the world).
- ReplaceShardPod deletes one named pod so its workload recreates it from the current template
  (a template roll step); the hands never replace pods on their own.
- StageRouter is level-based too: it asks every router to load a layout ahead of a switch.
- SwitchRouter and DeleteLayout are the disruptive steps; the planner emits them only after
  its safety predicates pass. Repeating one that already took effect is harmless.
- EnsureCarrier is level-based like Ensure*: the carrier runs, and its request annotations are
  exactly the action's (a request the action leaves out is withdrawn). DeleteCarrier removes it.
- Execute actions in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from shardrec.planning.layouts import LayoutSpec

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class EnsureBuild:
    """Make sure the layout's index build runs or has produced its artifact.

    Off the serving path (a Job, or a local subprocess). `attempt` identifies this build attempt:
    record it with the build and report it back in `ObservedBuild.attempt`; when an existing
    build failed under another attempt token, start a new build.

    `carry_from`: the layout whose logged item writes this build folds in, from the carry folder
    the layout's carrier cut (`--carry-dir`); None: built from its source alone. Hands that carry
    by themselves (`Observed.carries_writes`) may ignore it.
    """

    layout: LayoutSpec
    attempt: str
    reason: str
    carry_from: str | None = None

    @property
    def layout_id(self) -> str:
        return self.layout.id


@dataclass(frozen=True)
class EnsureShards:
    """Make sure every shard `0..layout.shards-1` of the layout runs `replicas` replicas, from the
    current pod template, and that its workload never replaces a pod on its own (StatefulSet
    `updateStrategy: OnDelete`: template rolls are `ReplaceShardPod` steps).

    Shards in `surge` run one replica more (`replicas_of`): a single-replica shard gets its new
    pod before its old one goes (`shardrec.planning.rolls`)."""

    layout: LayoutSpec
    replicas: int
    reason: str
    surge: frozenset[int] = frozenset()

    @property
    def layout_id(self) -> str:
        return self.layout.id

    def replicas_of(self, shard: int) -> int:
        """The replica count shard `shard` is given."""
        return self.replicas + 1 if shard in self.surge else self.replicas


@dataclass(frozen=True)
class ReplaceShardPod:
    """Delete pod `pod` of shard `shard`: it runs an older template, and its workload recreates it
    from the current one (same name and ordinal). The planner emits it only when the roll's
    predicates pass; repeating it for a pod already gone (or already replaced) changes nothing,
    so the hands must delete by name and uid of the pod they observed."""

    layout: LayoutSpec
    shard: int
    pod: str
    reason: str

    @property
    def layout_id(self) -> str:
        return self.layout.id


@dataclass(frozen=True)
class StageRouter:
    """Write the router topology so `layout` is staged (its active layout unchanged): every router
    loads its user table and opens its shard connections, and reports it prepared. The SwitchRouter
    that follows is then one assignment in each router (`Topology.staged`)."""

    layout: LayoutSpec
    reason: str

    @property
    def layout_id(self) -> str:
        return self.layout.id


@dataclass(frozen=True)
class SwitchRouter:
    """Write the router topology so its active layout is `layout`, in one step (with the
    endpoints of that layout's replicas). Every shard of the layout has a ready replica."""

    layout: LayoutSpec
    reason: str

    @property
    def layout_id(self) -> str:
        return self.layout.id


@dataclass(frozen=True)
class RetireLayout:
    """The layout no longer serves; it is kept running, unchanged, for instant rollback until
    `delete_after` (then a DeleteLayout follows). Repeated every pass while it is kept; the hands
    may drop protections that only serving layouts need (such as its PodDisruptionBudgets)."""

    layout: LayoutSpec
    delete_after: datetime
    reason: str

    @property
    def layout_id(self) -> str:
        return self.layout.id


@dataclass(frozen=True)
class DeleteLayout:
    """Stop and remove everything of the layout (build, shard workloads, services, disruption
    budgets). Its drain time has passed and the router does not point at it. Index artifacts in
    the store may be kept: a later rollout to the same layout then finds its build done."""

    layout: LayoutSpec
    reason: str

    @property
    def layout_id(self) -> str:
        return self.layout.id


@dataclass(frozen=True)
class DeleteArtifacts:
    """Delete one layout's artifacts from the index store (retention's garbage collection; on
    Kubernetes a Job running `recctl index delete`). The layout no longer runs anywhere, is not the
    target and is past its rollback window (`shardrec.planning.retention`). Level-based: repeated
    while the deletion runs; report it back in `Observed.artifact_deletions`."""

    layout_id: str
    version: str
    reason: str


@dataclass(frozen=True)
class RouteCanary:
    """Write the canary section of the router topology (`rollout.strategy: Canary`), level-based.

    With a `layout` (staged beside the active one by StageRouter): answer `weight` percent of
    users from it (sticky by hashed user id), mirror `sample_rate` of the active's queries to it in
    a shadow step (or compare that share of its answers with the active's in a weight step), at
    most `max_inflight` mirrored requests in flight per router, and report measurements under
    `step`. With `layout` None: no canary traffic; and when `unstage` names the staged layout (a
    rolled-back or aborted candidate), the routers drop it so it can be deleted."""

    layout: LayoutSpec | None
    step: int
    weight: int
    sample_rate: float
    max_inflight: int
    reason: str
    unstage: str | None = None


@dataclass(frozen=True)
class EnsureCarrier:
    """Make sure the carrier of `layout` runs (on Kubernetes: its ConfigMap and one-pod Deployment),
    carrying the item writes `source` logs into `layout`, with exactly these requests (ids the
    carrier reports back when it has carried one out; None: no such request):

    - `hand_over`: fence `source`'s leaders and forward the rest (right before the switch);
    - `open`: open `source`'s leaders again (the switch was abandoned after a hand-over);
    - `finish`: every router serves `layout`; end with a last pass and report done.

    `prior`: `source` was itself built with a carry (a chain): the carrier folds in that carry
    folder first. `back`: a carry back: `layout` is a kept layout `source` was carried from (a
    rollback); the carrier cuts nothing, opens `layout`'s leaders and forwards `source`'s logs from
    their first record. Level-based; repeating it with the same requests changes nothing."""

    layout: LayoutSpec
    source: LayoutSpec
    reason: str
    prior: bool = False
    hand_over: str | None = None
    open: str | None = None
    finish: str | None = None
    back: bool = False

    @property
    def layout_id(self) -> str:
        return self.layout.id


@dataclass(frozen=True)
class DeleteCarrier:
    """Remove the carrier of layout `layout_id`: it reported done, or its layout was abandoned
    before anything was fenced and no longer exists (a layout that exists takes its carrier with it
    in DeleteLayout). Its carry folder stays on the store; the status keeps what the carry was
    while the layout exists (`status.carries`)."""

    layout_id: str
    reason: str


@dataclass(frozen=True)
class RecordEvent:
    """Emit an Event on the RecommenderCluster (locally: a log line). `reason` is CamelCase."""

    type: EventType
    reason: str
    message: str


Action = (
    EnsureBuild
    | EnsureShards
    | ReplaceShardPod
    | StageRouter
    | SwitchRouter
    | RetireLayout
    | DeleteLayout
    | DeleteArtifacts
    | EnsureCarrier
    | DeleteCarrier
    | RouteCanary
    | RecordEvent
)
LayoutAction = (
    EnsureBuild
    | EnsureShards
    | ReplaceShardPod
    | StageRouter
    | SwitchRouter
    | RetireLayout
    | DeleteLayout
    | DeleteArtifacts
    | EnsureCarrier
    | DeleteCarrier
)
