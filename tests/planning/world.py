"""Test helpers: spec and observation builders, and a fake world the planner's actions act on.

`FakeWorld` plays the hands: builds take a few ticks, replicas become ready a tick after they
are asked for, a router switch is confirmed a tick after it is written, deletions are immediate.
It persists the status the way the API server would (as JSON), so every pass can start from what
a freshly started process would read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shardrec.api.v1alpha1 import RecommenderClusterSpec, RecommenderClusterStatus
from shardrec.planning import (
    Action,
    DeleteArtifacts,
    DeleteLayout,
    EnsureBuild,
    EnsureShards,
    LayoutSpec,
    Observed,
    ObservedBuild,
    ObservedLayout,
    ObservedRouter,
    ObservedShard,
    OfflineQuality,
    Plan,
    RecordEvent,
    RetireLayout,
    SwitchRouter,
    plan,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CLUSTER = "demo"


def make_spec(**changes: Any) -> RecommenderClusterSpec:
    """A valid spec (v1, 2 shards x 2 replicas) with camelCase or nested dict overrides."""
    body: dict[str, Any] = {
        "shards": 2,
        "replicasPerShard": 2,
        "index": {"version": "v1", "source": "/data/emb", "dimension": 8},
        "rollout": {"timeoutSeconds": 600, "keepPreviousLayouts": 1, "rollbackWindowSeconds": 300},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return RecommenderClusterSpec.model_validate(body)


def with_version(spec: RecommenderClusterSpec, version: str) -> RecommenderClusterSpec:
    return spec.model_copy(update={"index": spec.index.model_copy(update={"version": version})})


def ready_layout(spec: RecommenderClusterSpec, replicas: int | None = None) -> ObservedLayout:
    """The spec's layout, built, every shard with `replicas` (default: the spec's) ready."""
    count = spec.replicas_per_shard if replicas is None else replicas
    layout = LayoutSpec.from_spec(spec)
    shards = tuple(
        ObservedShard(shard=i, desired_replicas=count, ready_replicas=count) for i in range(layout.shards)
    )
    return ObservedLayout(spec=layout, build=ObservedBuild("Succeeded"), shards=shards)


@dataclass
class FakeShard:
    desired: int
    ready: int = 0


@dataclass
class FakeLayout:
    spec: LayoutSpec
    build_state: str = "Absent"
    build_attempt: str | None = None
    build_ticks_left: int = 0
    shards: dict[int, FakeShard] = field(default_factory=dict)


@dataclass
class FakeWorld:
    """The hands and the world they act on."""

    build_ticks: int = 2
    tick_seconds: float = 10.0
    failing_versions: set[str] = field(default_factory=set)
    stuck_versions: set[str] = field(default_factory=set)  # replicas never become ready
    ndcg_by_version: dict[str, float] = field(default_factory=dict)  # offline metrics a build records
    router_lag_ticks: int = 1
    now: datetime = T0
    generation: int = 1
    layouts: dict[str, FakeLayout] = field(default_factory=dict)
    written: str | None = None
    confirmed: str | None = None
    switch_ticks_left: int = 0
    status_json: dict[str, Any] = field(default_factory=dict)
    events: list[RecordEvent] = field(default_factory=list)
    executed: list[Action] = field(default_factory=list)
    artifacts: set[str] = field(default_factory=set)  # layouts whose artifacts are in the store
    deletions: dict[str, str] = field(default_factory=dict)  # artifact deletions: layout -> state
    carries_writes: bool = False  # the hands carry logged item writes at a cutover (local runtime)

    # --- what the planner sees ---------------------------------------------------------------

    def stored_status(self) -> RecommenderClusterStatus:
        """The status as a fresh process reads it back from the API (JSON round trip)."""
        return RecommenderClusterStatus.model_validate(self.status_json)

    def observe(self) -> Observed:
        layouts = []
        for layout in self.layouts.values():
            shards = tuple(
                ObservedShard(
                    shard=number,
                    desired_replicas=shard.desired,
                    ready_replicas=shard.ready,
                    ready_ordinals=frozenset(range(shard.ready)),
                )
                for number, shard in sorted(layout.shards.items())
            )
            ndcg = self.ndcg_by_version.get(layout.spec.version)
            build = ObservedBuild(
                layout.build_state,  # type: ignore[arg-type]
                "exit code 1" if layout.build_state == "Failed" else "",
                layout.build_attempt,
                OfflineQuality(ndcg, split="test")
                if ndcg is not None and layout.build_state == "Succeeded"
                else None,
            )
            layouts.append(ObservedLayout(spec=layout.spec, build=build, shards=shards))
        return Observed(
            generation=self.generation,
            now=self.now,
            layouts=tuple(layouts),
            router=ObservedRouter(written_layout=self.written, confirmed_layout=self.confirmed),
            previous_status=self.stored_status(),
            router_endpoint="http://127.0.0.1:8080",
            artifact_deletions=dict(self.deletions),  # type: ignore[arg-type]
            carries_writes=self.carries_writes,
        )

    # --- the hands ---------------------------------------------------------------------------

    def execute(self, action: Action) -> None:
        self.executed.append(action)
        if isinstance(action, RecordEvent):
            self.events.append(action)
        elif isinstance(action, EnsureBuild):
            layout = self.layouts.setdefault(action.layout_id, FakeLayout(action.layout))
            failed_elsewhere = layout.build_state == "Failed" and layout.build_attempt != action.attempt
            if layout.build_state == "Absent" or failed_elsewhere:
                assert self.deletions.get(action.layout_id) != "Running", "built while being deleted"
                self.deletions.pop(action.layout_id, None)  # the hands drop the finished deletion
                layout.build_state, layout.build_attempt = "Running", action.attempt
                # A build that finds verifying artifacts reuses them: one tick instead of many.
                layout.build_ticks_left = 1 if action.layout_id in self.artifacts else self.build_ticks
        elif isinstance(action, EnsureShards):
            layout = self.layouts[action.layout_id]
            assert layout.build_state == "Succeeded", "shards started before the build succeeded"
            for number in range(action.layout.shards):
                shard = layout.shards.setdefault(number, FakeShard(desired=0))
                shard.desired = action.replicas
                shard.ready = min(shard.ready, shard.desired)
        elif isinstance(action, SwitchRouter):
            if self.written != action.layout_id:
                self.written = action.layout_id
                self.switch_ticks_left = self.router_lag_ticks
                if self.router_lag_ticks == 0:
                    self.confirmed = self.written
        elif isinstance(action, DeleteLayout):
            assert action.layout_id not in (self.written, self.confirmed), "deleted a serving layout"
            self.layouts.pop(action.layout_id, None)
        elif isinstance(action, RetireLayout):
            assert action.layout_id != self.confirmed
        elif isinstance(action, DeleteArtifacts):
            assert action.layout_id not in self.layouts, "deleted the artifacts of a layout that exists"
            assert action.layout_id not in (self.written, self.confirmed), "deleted serving artifacts"
            self.deletions.setdefault(action.layout_id, "Running")

    def tick(self) -> None:
        """Time passes: builds progress, replicas become ready, the router catches up."""
        self.now += timedelta(seconds=self.tick_seconds)
        for layout in self.layouts.values():
            if layout.build_state == "Running":
                layout.build_ticks_left -= 1
                if layout.build_ticks_left <= 0:
                    failing = layout.spec.version in self.failing_versions
                    layout.build_state = "Failed" if failing else "Succeeded"
                    if not failing:
                        self.artifacts.add(layout.spec.id)
            if layout.spec.version in self.stuck_versions:
                continue
            for shard in layout.shards.values():
                shard.ready = shard.desired  # one tick to become ready
        for layout_id, state in self.deletions.items():
            if state == "Running":
                self.deletions[layout_id] = "Succeeded"
                self.artifacts.discard(layout_id)
        if self.written != self.confirmed:
            self.switch_ticks_left -= 1
            if self.switch_ticks_left <= 0:
                self.confirmed = self.written

    def kill_shard(self, layout_id: str, shard: int) -> None:
        """Every replica of a shard dies (its workload remains and recreates them)."""
        self.layouts[layout_id].shards[shard].ready = 0

    # --- a reconcile pass --------------------------------------------------------------------

    def step(
        self,
        spec: RecommenderClusterSpec,
        check: Callable[[FakeWorld, Plan], None] | None = None,
    ) -> Plan:
        """One pass: observe, plan, check invariants, execute, persist the status, tick."""
        result = plan(CLUSTER, spec, self.observe())
        if check is not None:
            check(self, result)
        for action in result.actions:
            self.execute(action)
        self.status_json = result.status.model_dump(by_alias=True, mode="json")
        self.tick()
        return result

    def serving_version(self) -> str | None:
        layout = self.layouts.get(self.confirmed) if self.confirmed else None
        return layout.spec.version if layout is not None else None


def assert_invariants(world: FakeWorld, result: Plan) -> None:
    """Safety invariants of every pass (checked before the actions are executed)."""
    observed_ids = set(world.layouts)
    for action in result.actions:
        if isinstance(action, SwitchRouter):
            layout = world.layouts.get(action.layout_id)
            assert layout is not None and layout.build_state == "Succeeded"
            assert len(layout.shards) == action.layout.shards, "switch to a layout with a missing shard"
            assert all(shard.ready >= 1 for shard in layout.shards.values()), "switch to unready shard"
            assert world.written == world.confirmed, "switch while another is in flight"
        if isinstance(action, DeleteLayout):
            assert action.layout_id in observed_ids
            assert action.layout_id not in (world.written, world.confirmed), "deleted the serving layout"
    if world.confirmed is not None:
        assert world.confirmed in world.layouts, "the router serves a layout that does not exist"
    switches = [a for a in result.actions if isinstance(a, SwitchRouter)]
    assert len(switches) <= 1, "two switches in one pass"


def run_until_settled(
    world: FakeWorld,
    spec: RecommenderClusterSpec,
    max_steps: int = 200,
    check: Callable[[FakeWorld, Plan], None] = assert_invariants,
) -> list[Plan]:
    """Step until a pass asks for nothing to be awaited (a fixed point), bounded in steps."""
    plans = []
    for _ in range(max_steps):
        result = world.step(spec, check)
        plans.append(result)
        if result.requeue_after_seconds is None:
            return plans
    raise AssertionError(f"no fixed point within {max_steps} steps: {plans[-1].waiting_reason}")
