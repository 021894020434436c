"""Router acknowledgements: routers report what they serve, and the planner confirms a switch only
when every ready router serves it (`shardrec.planning.fleet`).

A fleet-aware fake world drives the real planner: each router stages, prepares and switches on its
own schedule, may reject a layout, or vanish. Checked on every pass: no layout is deleted while a
ready router serves or holds it, no switch commits before every ready router prepared the layout,
and the cluster settles on the spec's version.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from shardrec.api.topology import LayoutTopology, ReplicaEndpoint, RouterServing, ShardEndpoints, Topology
from shardrec.api.v1alpha1 import RecommenderClusterSpec, RecommenderClusterStatus
from shardrec.planning import (
    DeleteLayout,
    Observed,
    ObservedRouter,
    Plan,
    RouterObservation,
    StageRouter,
    SwitchRouter,
    layout_id,
)
from shardrec.planning.fleet import (
    LAGGING_DEADLINE_SECONDS,
    confirmed_layout,
    lagging_routers,
    layouts_in_use,
    topology_document,
    unprepared_routers,
    with_topology_written,
)
from tests.planning.world import FakeWorld, make_spec, run_until_settled, with_version


def _report(layout: str | None, prepared: str | None = None, error: str = "") -> RouterServing:
    return RouterServing(layout=layout, revision=3, prepared=prepared, error=error)


def _router(
    name: str, layout: str | None, *, ready: bool = True, prepared: str | None = None
) -> RouterObservation:
    return RouterObservation(name, ready, _report(layout, prepared))


# --- the pure rules ------------------------------------------------------------------------------


def test_no_router_reports_means_the_stored_topology_counts() -> None:
    silent = [RouterObservation("r0", True, None), RouterObservation("r1", True, None)]
    assert confirmed_layout(silent, written="new", stored="new", previous="old") == "new"
    # A deleted topology document proves nothing: what served still serves (it failed here
    # against the real API server: the status lost its active layout for a pass).
    gone = confirmed_layout(silent, written="new", stored=None, previous="old", document_missing=True)
    assert gone == "old"
    assert lagging_routers(silent, "new") == [] and unprepared_routers(silent, "new") == []


def test_a_switch_is_confirmed_only_when_every_ready_router_serves_it() -> None:
    mixed = [_router("r0", "new"), _router("r1", "old"), _router("r2", "new")]
    assert confirmed_layout(mixed, written="new", stored="new", previous="old") == "old"
    assert lagging_routers(mixed, "new") == ["r1"]
    done = [_router("r0", "new"), _router("r1", "new"), _router("r2", "old", ready=False)]
    assert confirmed_layout(done, written="new", stored="new", previous="old") == "new"
    assert lagging_routers(done, "new") == [], "an unready router receives no clients"


def test_a_silent_ready_router_lags_once_others_report() -> None:
    fleet = [_router("r0", "new"), RouterObservation("r1", True, None)]
    assert lagging_routers(fleet, "new") == ["r1"]
    assert confirmed_layout(fleet, written="new", stored="new", previous="old") == "old"


def test_no_ready_router_keeps_what_served() -> None:
    down = [_router("r0", "old", ready=False)]
    assert confirmed_layout(down, written="new", stored="new", previous="old") == "old"


def test_layouts_in_use_counts_served_and_prepared_of_ready_routers() -> None:
    fleet = [_router("r0", "a", prepared="b"), _router("r1", "c", ready=False)]
    assert layouts_in_use(fleet) == frozenset({"a", "b"})
    assert unprepared_routers([*fleet, _router("r2", "a")], "b") == ["r2"]


def _layout(name: str) -> LayoutTopology:
    endpoint = ReplicaEndpoint(name=f"{name}-0", url="http://127.0.0.1:1")
    return LayoutTopology(
        layout=name,
        version=name,
        shards=1,
        dimension=4,
        metric="ip",
        artifact_dir="/x",
        endpoints=[ShardEndpoints(shard=0, replicas=[endpoint])],
    )


def test_documents_continue_the_stored_revision_and_skip_no_op_writes() -> None:
    stored = Topology(epoch=5, revision=7, active=_layout("a"))
    assert topology_document(stored, active=_layout("a"), staged=None, floor=None, now_ms=9) is None
    staged = topology_document(stored, active=_layout("a"), staged=_layout("b"), floor=None, now_ms=9)
    assert staged is not None and (staged.epoch, staged.revision) == (5, 8) and staged.staged == _layout("b")
    switched = topology_document(staged, active=_layout("b"), staged=_layout("b"), floor=None, now_ms=9)
    assert switched is not None and switched.staged is None and switched.revision == 9


def test_a_lost_document_continues_from_the_status_and_a_total_loss_starts_a_new_epoch() -> None:
    again = topology_document(None, active=_layout("a"), staged=None, floor=(5, 7), now_ms=99)
    assert again is not None and again.order == (5, 8)
    fresh = topology_document(None, active=_layout("a"), staged=None, floor=None, now_ms=99)
    assert fresh is not None and fresh.order == (99, 0)
    assert fresh.order > (5, 7), "routers take a newer epoch even with a lower revision"
    status = with_topology_written(RecommenderClusterStatus(), again)
    assert (status.topology_epoch, status.topology_revision) == (5, 8)


# --- a fleet of routers in a fake world ----------------------------------------------------------


@dataclass
class FakeRouter:
    name: str
    prepare_ticks: int = 1
    switch_ticks: int = 1
    rejects: set[str] = field(default_factory=set)
    stuck: bool = False  # prepares what is staged, but never applies a new active layout
    ready: bool = True
    layout: str | None = None
    prepared: str | None = None
    error: str = ""
    _prepare_left: int = 0
    _switch_left: int = 0

    def report(self) -> RouterObservation:
        return RouterObservation(
            self.name, self.ready, RouterServing(layout=self.layout, prepared=self.prepared, error=self.error)
        )


@dataclass
class FleetWorld(FakeWorld):
    """FakeWorld whose router is a fleet: the topology holds `active` (written) and `staged`, and
    every router catches up on its own schedule."""

    routers: list[FakeRouter] = field(default_factory=list)
    staged: str | None = None

    def observe(self) -> Observed:
        base = super().observe()
        reports = tuple(router.report() for router in self.routers)
        previous = RecommenderClusterStatus.model_validate(self.status_json) if self.status_json else None
        confirmed = confirmed_layout(
            reports,
            written=self.written,
            stored=self.written,
            previous=(previous.active_layout or None) if previous else None,
        )
        self.confirmed = confirmed
        return replace(base, router=ObservedRouter(self.written, confirmed, reports))

    def execute(self, action: object) -> None:
        if isinstance(action, StageRouter):
            self.executed.append(action)
            self.staged = action.layout_id
            return
        if isinstance(action, SwitchRouter):
            self.staged = None
        if isinstance(action, DeleteLayout):
            users = [r.name for r in self.routers if r.ready and action.layout_id in (r.layout, r.prepared)]
            assert not users, f"deleted layout {action.layout_id} while routers {users} use it"
        super().execute(action)  # type: ignore[arg-type]

    def tick(self) -> None:
        super().tick()
        for router in self.routers:
            if self.staged is not None and self.staged not in (router.prepared, router.layout):
                if self.staged in router.rejects:
                    router.error = f"staged layout {self.staged}: cannot load the user table"
                else:
                    router._prepare_left += 1
                    if router._prepare_left >= router.prepare_ticks:
                        router.prepared, router._prepare_left, router.error = self.staged, 0, ""
            if self.written is not None and router.layout != self.written and not router.stuck:
                if self.written in router.rejects:
                    router.error = f"layout {self.written}: cannot load the user table"
                    continue
                router._switch_left += 1
                if router._switch_left >= router.switch_ticks or router.prepared == self.written:
                    router.layout, router._switch_left = self.written, 0
                    if router.prepared == self.written:
                        router.prepared = None


def _check(world: FleetWorld, result: Plan) -> None:
    for action in result.of_type(SwitchRouter):
        waiting = [
            r.name for r in world.routers if r.ready and action.layout_id not in (r.layout, r.prepared)
        ]
        assert not waiting, f"switched to {action.layout_id} before routers {waiting} prepared it"


FAST = {
    "rollout": {
        "timeoutSeconds": 3600,
        "keepPreviousLayouts": 0,
        "rollbackWindowSeconds": 60,
        "drainSeconds": 0,
    }
}


def _fleet(*routers: FakeRouter) -> FleetWorld:
    world = FleetWorld(router_lag_ticks=0, routers=list(routers))
    return world


def _serving_v1_asked_for_v2(
    *routers: FakeRouter,
) -> tuple[FleetWorld, RecommenderClusterSpec, RecommenderClusterSpec]:
    """A fleet serving v1, settled; then the spec asks for v2 (a new generation). Returns the
    world and both specs; the test steps the world itself."""
    world = _fleet(*routers)
    v1 = make_spec(**FAST)
    run_until_settled(world, v1, check=_check)
    world.generation += 1
    return world, v1, with_version(v1, "v2")


def test_routers_prepare_then_switch_together_and_the_old_layout_goes_after() -> None:
    world = _fleet(FakeRouter("r0"), FakeRouter("r1", prepare_ticks=3), FakeRouter("r2"))
    v1 = make_spec(**FAST)
    run_until_settled(world, v1, check=_check)
    assert {r.layout for r in world.routers} == {layout_id(v1)}
    world.generation += 1
    v2 = with_version(v1, "v2")
    plans = run_until_settled(world, v2, check=_check)
    assert {r.layout for r in world.routers} == {layout_id(v2)}
    assert set(world.layouts) == {layout_id(v2)}
    held = [
        p
        for p in plans
        if any(b.predicate == "switch_only_when_every_router_prepared" for b in p.status.blocked_by)
    ]
    assert held and "r1" in held[0].status.blocked_by[0].reason, "the slow router held the switch"
    assert any(p.status.routers.replicas for p in plans)


def test_a_lagging_router_holds_retirement_and_stalls_with_an_event() -> None:
    world, v1, v2 = _serving_v1_asked_for_v2(FakeRouter("r0"), FakeRouter("r1"))
    world.routers[1].prepare_ticks = 1000  # it never finishes loading: the switch waits for it
    for _ in range(12):  # 120 s of fake time
        world.step(v2, check=_check)
    status = world.stored_status()
    assert layout_id(v1) in world.layouts, "the old layout still serves r1: kept"
    assert status.active_layout == layout_id(v1)
    assert any(b.predicate == "switch_only_when_every_router_prepared" for b in status.blocked_by)


def test_a_router_that_rejects_the_new_layout_blocks_and_says_why() -> None:
    world, v1, v2 = _serving_v1_asked_for_v2(FakeRouter("r0"), FakeRouter("r1"))
    world.routers[1].rejects = {layout_id(v2)}
    for _ in range(10):
        world.step(v2, check=_check)
    status = world.stored_status()
    (blocked,) = [b for b in status.blocked_by if b.predicate == "switch_only_when_every_router_prepared"]
    assert "r1 (staged layout" in blocked.reason and "cannot load the user table" in blocked.reason
    assert status.active_layout == layout_id(v1) and status.phase == "Rolling"
    assert {r.layout for r in world.routers} == {layout_id(v1)}


def test_a_router_that_vanishes_stops_counting() -> None:
    world, _v1, v2 = _serving_v1_asked_for_v2(FakeRouter("r0"), FakeRouter("r1"))
    world.routers[1].rejects = {layout_id(v2)}
    for _ in range(3):
        world.step(v2, check=_check)
    world.routers[1].ready = False  # its pod is gone (or out of the Service)
    run_until_settled(world, v2, check=_check)
    assert world.routers[0].layout == layout_id(v2)
    assert set(world.layouts) == {layout_id(v2)}


def test_stall_event_after_the_deadline_and_recovery_event() -> None:
    world, v1, v2 = _serving_v1_asked_for_v2(FakeRouter("r0"), FakeRouter("r1"))
    # r1 prepares, so the switch commits, but it never applies it: it lags behind r0.
    world.routers[1].stuck = True
    reasons: list[str] = []
    for _ in range(int(LAGGING_DEADLINE_SECONDS / world.tick_seconds) + 6):
        result = world.step(v2, check=_check)
        reasons += [a.reason for a in result.actions if type(a).__name__ == "RecordEvent"]
    status = world.stored_status()
    assert status.routers.lagging == ["r1"] and status.routers.stalled
    assert "RouterSwitchStalled" in reasons
    assert layout_id(v1) in world.layouts, "r1 still serves v1: not deleted"
    world.routers[1].stuck = False
    plans = run_until_settled(world, v2, check=_check)
    assert "RouterSwitchCompleted" in [
        a.reason for p in plans for a in p.actions if type(a).__name__ == "RecordEvent"
    ]
    assert set(world.layouts) == {layout_id(v2)}
