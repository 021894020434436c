"""Every transition of the rollout state machine, one pass at a time on hand-built observations."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from shardrec.api.v1alpha1 import LayoutStatus, RecommenderClusterSpec, RecommenderClusterStatus
from shardrec.planning import (
    DeleteLayout,
    EnsureBuild,
    EnsureShards,
    LayoutSpec,
    Observed,
    ObservedBuild,
    ObservedLayout,
    ObservedRouter,
    ObservedShard,
    Plan,
    RecordEvent,
    RetireLayout,
    SwitchRouter,
    format_time,
    layout_id,
    plan,
)
from shardrec.planning.planner import POLL_SECONDS, ROUTER_POLL_SECONDS
from tests.planning.world import CLUSTER, T0, make_spec, ready_layout, with_version

V1 = make_spec()
V2 = with_version(V1, "v2")
ID1, ID2 = layout_id(V1), layout_id(V2)


def observe(
    *layouts: ObservedLayout,
    written: str | None = None,
    confirmed: str | None = None,
    previous: RecommenderClusterStatus | None = None,
    generation: int = 1,
    now: datetime = T0,
) -> Observed:
    return Observed(
        generation=generation,
        now=now,
        layouts=layouts,
        router=ObservedRouter(written_layout=written, confirmed_layout=confirmed),
        previous_status=previous or RecommenderClusterStatus(),
        router_endpoint="http://127.0.0.1:8080",
    )


def building(
    spec: RecommenderClusterSpec, state: str = "Running", attempt: str | None = None
) -> ObservedLayout:
    return ObservedLayout(
        spec=LayoutSpec.from_spec(spec),
        build=ObservedBuild(state, "boom" if state == "Failed" else "", attempt),  # type: ignore[arg-type]
    )


def with_shards(spec: RecommenderClusterSpec, *ready: int, desired: int | None = None) -> ObservedLayout:
    shards = tuple(
        ObservedShard(shard=i, desired_replicas=desired or spec.replicas_per_shard, ready_replicas=count)
        for i, count in enumerate(ready)
    )
    return ObservedLayout(spec=LayoutSpec.from_spec(spec), build=ObservedBuild("Succeeded"), shards=shards)


def kinds(result: Plan) -> list[str]:
    return [type(action).__name__ for action in result.actions if not isinstance(action, RecordEvent)]


def event_reasons(result: Plan) -> list[str]:
    return [event.reason for event in result.of_type(RecordEvent)]


def condition(result: Plan, type_: str) -> tuple[str, str, str]:
    found = next(c for c in result.status.conditions if c.type == type_)
    return found.status, found.reason, found.message


def record(result: Plan, layout: str) -> LayoutStatus:
    return next(entry for entry in result.status.layouts if entry.name == layout)


def serving(spec: RecommenderClusterSpec = V1, **overrides: Any) -> Plan:
    """A settled pass where `spec`'s layout serves with every replica ready."""
    layout = layout_id(spec)
    first = plan(CLUSTER, spec, observe(ready_layout(spec), written=layout, confirmed=layout, now=T0))
    assert first.status.phase == "Ready"
    return first


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- first creation: Building -> Rolling -> Ready ------------------------------------------------


def test_first_pass_builds_the_target_layout() -> None:
    result = plan(CLUSTER, V1, observe())
    assert result.actions[0] == EnsureBuild(
        LayoutSpec.from_spec(V1),
        attempt=format_time(T0),
        reason=f"layout {ID1} (version v1, 2 shards) is the spec's target",
    )
    assert kinds(result) == ["EnsureBuild"]
    assert result.status.phase == "Building"
    assert result.status.target_layout == ID1 and result.status.target_version == "v1"
    assert result.status.active_layout == "" and result.status.layouts[0].state == "Building"
    assert condition(result, "Ready")[:2] == ("False", "NoServingLayout")
    assert condition(result, "Progressing")[:2] == ("True", "WaitingForBuild")
    assert event_reasons(result) == ["BuildingLayout"]
    assert result.requeue_after_seconds == POLL_SECONDS
    assert result.waiting_reason.startswith("WaitingForBuild")


def test_running_build_is_ensured_again_without_new_events() -> None:
    first = plan(CLUSTER, V1, observe())
    second = plan(CLUSTER, V1, observe(building(V1), previous=first.status, now=later(10)))
    assert kinds(second) == ["EnsureBuild"]
    assert second.of_type(EnsureBuild)[0].attempt == first.of_type(EnsureBuild)[0].attempt
    assert event_reasons(second) == []
    assert record(second, ID1).created_at == format_time(T0)


def test_built_layout_starts_its_shards_then_waits_for_every_replica() -> None:
    first = plan(CLUSTER, V1, observe())
    built = plan(CLUSTER, V1, observe(building(V1, "Succeeded"), previous=first.status, now=later(10)))
    assert built.of_type(EnsureShards) == (
        EnsureShards(LayoutSpec.from_spec(V1), 2, built.actions[0].reason),
    )  # type: ignore[union-attr]
    assert built.status.phase == "Rolling" and record(built, ID1).state == "Starting"
    assert event_reasons(built) == ["StartingShards"]
    partly = plan(CLUSTER, V1, observe(with_shards(V1, 2, 1), previous=built.status, now=later(20)))
    assert kinds(partly) == ["EnsureShards"]  # no switch while shard 1 has 1 of 2 ready
    status, reason, message = condition(partly, "Progressing")
    assert (status, reason) == ("True", "WaitingForReplicas") and "shards [1]" in message
    assert record(partly, ID1).ready_shards == 2


def test_ready_layout_is_switched_to_and_confirmation_makes_it_serve() -> None:
    first = plan(CLUSTER, V1, observe())
    ready = plan(CLUSTER, V1, observe(with_shards(V1, 2, 2), previous=first.status, now=later(30)))
    # No router reports (acknowledgements not in force): staging and switching go together.
    assert kinds(ready) == ["EnsureShards", "StageRouter", "SwitchRouter"]
    assert ready.of_type(SwitchRouter)[0].layout_id == ID1
    assert set(event_reasons(ready)) >= {"LayoutReady", "SwitchingRouter"}
    assert ready.status.phase == "Rolling"
    # Written but not yet confirmed: no second switch, look again soon.
    pending = plan(
        CLUSTER, V1, observe(with_shards(V1, 2, 2), written=ID1, previous=ready.status, now=later(31))
    )
    assert kinds(pending) == ["EnsureShards"]
    assert condition(pending, "Progressing")[1] == "WaitingForRouter"
    assert pending.requeue_after_seconds == ROUTER_POLL_SECONDS
    done = plan(
        CLUSTER,
        V1,
        observe(with_shards(V1, 2, 2), written=ID1, confirmed=ID1, previous=pending.status, now=later(32)),
    )
    assert done.status.phase == "Ready"
    assert done.status.active_layout == ID1 and done.status.active_version == "v1"
    assert record(done, ID1).state == "Serving"
    assert condition(done, "Ready")[:2] == ("True", "Serving")
    assert condition(done, "Progressing")[:2] == ("False", "RolloutComplete")
    assert (done.status.ready_replicas, done.status.replicas) == (4, 4)
    assert [(s.shard, s.ready_replicas, s.replicas) for s in done.status.shards] == [(0, 2, 2), (1, 2, 2)]
    assert event_reasons(done) == ["Switched"]
    assert done.requeue_after_seconds is None and done.waiting_reason == ""


# --- version change, shard count change, replicas change ---------------------------------------


def test_version_change_builds_beside_the_serving_layout() -> None:
    steady = serving()
    result = plan(
        CLUSTER,
        V2,
        observe(ready_layout(V1), written=ID1, confirmed=ID1, previous=steady.status, generation=2),
    )
    assert kinds(result) == ["EnsureBuild", "EnsureShards"]
    assert result.of_type(EnsureBuild)[0].layout_id == ID2
    assert result.of_type(EnsureShards)[0].layout_id == ID1  # the old one keeps serving
    assert result.status.phase == "Building"
    assert result.status.active_version == "v1" and result.status.target_version == "v2"
    assert [(e.name, e.state) for e in result.status.layouts] == [(ID1, "Serving"), (ID2, "Building")]
    assert condition(result, "Ready")[0] == "True"


def test_version_change_switches_once_every_shard_of_the_new_layout_is_ready() -> None:
    steady = serving()
    new = with_shards(V2, 2, 2)
    result = plan(
        CLUSTER,
        V2,
        observe(ready_layout(V1), new, written=ID1, confirmed=ID1, previous=steady.status, generation=2),
    )
    assert result.of_type(SwitchRouter)[0].layout_id == ID2
    confirmed = plan(
        CLUSTER,
        V2,
        observe(
            ready_layout(V1),
            new,
            written=ID2,
            confirmed=ID2,
            previous=result.status,
            generation=2,
            now=later(5),
        ),
    )
    assert record(confirmed, ID1).state == "Retiring"
    assert record(confirmed, ID2).state == "Serving"
    retire = confirmed.of_type(RetireLayout)[0]
    assert retire.layout_id == ID1 and retire.delete_after == later(5 + 300)
    assert "RetiringLayout" in event_reasons(confirmed) and "Switched" in event_reasons(confirmed)
    assert confirmed.status.phase == "Ready" and confirmed.status.active_version == "v2"
    assert confirmed.requeue_after_seconds == 300


def test_shard_count_change_is_a_new_layout_cut_over_only_with_all_three_shards() -> None:
    three = make_spec(shards=3)
    id3 = layout_id(three)
    assert id3 != ID1
    steady = serving()
    missing_third = with_shards(three, 2, 2)  # shard 2 has no workload yet
    result = plan(
        CLUSTER,
        three,
        observe(ready_layout(V1), missing_third, written=ID1, confirmed=ID1, previous=steady.status),
    )
    assert result.of_type(SwitchRouter) == ()
    assert result.of_type(EnsureShards)[0] == EnsureShards(
        LayoutSpec.from_spec(three), 2, result.of_type(EnsureShards)[0].reason
    )
    assert "shards [2]" in record(result, id3).message
    complete = plan(
        CLUSTER,
        three,
        observe(
            ready_layout(V1), with_shards(three, 2, 2, 2), written=ID1, confirmed=ID1, previous=result.status
        ),
    )
    assert complete.of_type(SwitchRouter)[0].layout.shards == 3


def test_replicas_change_only_scales_the_serving_layout() -> None:
    steady = serving()
    three_replicas = make_spec(replicasPerShard=3)
    assert layout_id(three_replicas) == ID1
    result = plan(
        CLUSTER,
        three_replicas,
        observe(ready_layout(V1), written=ID1, confirmed=ID1, previous=steady.status, generation=2),
    )
    assert kinds(result) == ["EnsureShards"]
    assert result.of_type(EnsureShards)[0].replicas == 3
    assert result.status.phase == "Ready"
    assert condition(result, "Progressing")[:2] == ("True", "ScalingReplicas")
    assert result.status.replicas == 6 and result.status.ready_replicas == 4
    scaled = plan(
        CLUSTER,
        three_replicas,
        observe(
            ready_layout(three_replicas), written=ID1, confirmed=ID1, previous=result.status, generation=2
        ),
    )
    assert condition(scaled, "Progressing")[:2] == ("False", "RolloutComplete")
    assert scaled.requeue_after_seconds is None


def test_scale_down_never_removes_the_last_ready_replica_of_a_serving_shard() -> None:
    three = make_spec(replicasPerShard=3)
    one = make_spec(replicasPerShard=1)
    steady = serving(three)
    only_top_ready = ObservedLayout(
        spec=LayoutSpec.from_spec(three),
        build=ObservedBuild("Succeeded"),
        shards=(
            ObservedShard(0, 3, 3, frozenset({0, 1, 2})),
            ObservedShard(1, 3, 1, frozenset({2})),  # only ordinal 2 is ready; scaling to 1 removes it
        ),
    )
    blocked = plan(CLUSTER, one, observe(only_top_ready, written=ID1, confirmed=ID1, previous=steady.status))
    assert blocked.of_type(EnsureShards) == ()
    assert [b.predicate for b in blocked.status.blocked_by] == [
        "never_delete_last_ready_replica_of_serving_shard"
    ]
    assert "shards [1]" in blocked.status.blocked_by[0].reason
    assert "NeverDeleteLastReadyReplicaOfServingShard" in event_reasons(blocked)
    # Without ordinals the rule is conservative: removing 2 replicas needs 3 ready.
    unknown = replace(only_top_ready, shards=(ObservedShard(0, 3, 3), ObservedShard(1, 3, 2)))
    still = plan(CLUSTER, one, observe(unknown, written=ID1, confirmed=ID1, previous=blocked.status))
    assert still.of_type(EnsureShards) == ()
    assert event_reasons(still) == []  # already reported
    healthy = plan(
        CLUSTER, one, observe(ready_layout(three), written=ID1, confirmed=ID1, previous=still.status)
    )
    assert healthy.of_type(EnsureShards)[0].replicas == 1
    assert healthy.status.blocked_by == []


# --- revert, supersede ------------------------------------------------------------------------


def _v2_serving_v1_kept() -> Plan:
    """v2 serves since T0, v1 is kept for rollback."""
    before = RecommenderClusterStatus(
        observed_generation=2,
        layouts=[
            LayoutStatus(
                name=ID2,
                version="v2",
                shards=2,
                state="Serving",
                created_at=format_time(T0),
                state_since=format_time(T0),
            ),
            LayoutStatus(
                name=ID1,
                version="v1",
                shards=2,
                state="Serving",
                created_at=format_time(T0),
                state_since=format_time(T0),
            ),
        ],
    )
    result = plan(
        CLUSTER,
        V2,
        observe(
            ready_layout(V1), ready_layout(V2), written=ID2, confirmed=ID2, previous=before, generation=2
        ),
    )
    assert record(result, ID1).state == "Retiring"
    return result


def test_reverting_to_a_kept_version_switches_back_at_once() -> None:
    kept = _v2_serving_v1_kept()
    revert = plan(
        CLUSTER,
        V1,
        observe(
            ready_layout(V1),
            ready_layout(V2),
            written=ID2,
            confirmed=ID2,
            previous=kept.status,
            generation=3,
            now=later(60),
        ),
    )
    assert revert.of_type(EnsureBuild) == ()
    assert [a.layout_id for a in revert.of_type(SwitchRouter)] == [ID1]
    assert record(revert, ID1).created_at == format_time(later(60))  # a new rollout clock
    back = plan(
        CLUSTER,
        V1,
        observe(
            ready_layout(V1),
            ready_layout(V2),
            written=ID1,
            confirmed=ID1,
            previous=revert.status,
            generation=3,
            now=later(61),
        ),
    )
    assert record(back, ID1).state == "Serving" and record(back, ID2).state == "Retiring"
    assert back.status.active_version == "v1"


def test_a_target_superseded_before_it_served_is_deleted_at_once() -> None:
    steady = serving()
    rolling = plan(
        CLUSTER,
        V2,
        observe(
            ready_layout(V1),
            with_shards(V2, 1, 0),
            written=ID1,
            confirmed=ID1,
            previous=steady.status,
            generation=2,
        ),
    )
    v3 = with_version(V1, "v3")
    result = plan(
        CLUSTER,
        v3,
        observe(
            ready_layout(V1),
            with_shards(V2, 1, 0),
            written=ID1,
            confirmed=ID1,
            previous=rolling.status,
            generation=3,
        ),
    )
    deletes = result.of_type(DeleteLayout)
    assert [d.layout_id for d in deletes] == [ID2]
    assert "superseded" in deletes[0].reason
    assert result.of_type(EnsureBuild)[0].layout.version == "v3"
    assert "DeletingLayout" in event_reasons(result)
    again = plan(
        CLUSTER,
        v3,
        observe(
            ready_layout(V1),
            with_shards(V2, 1, 0),
            written=ID1,
            confirmed=ID1,
            previous=result.status,
            generation=3,
        ),
    )
    assert [d.layout_id for d in again.of_type(DeleteLayout)] == [ID2]
    assert "DeletingLayout" not in event_reasons(again)  # announced once


# --- failures and timeouts ----------------------------------------------------------------------


def test_build_failure_abandons_the_layout_and_the_old_one_keeps_serving() -> None:
    steady = serving()
    start = plan(
        CLUSTER,
        V2,
        observe(ready_layout(V1), written=ID1, confirmed=ID1, previous=steady.status, generation=2),
    )
    attempt = start.of_type(EnsureBuild)[0].attempt
    failed = plan(
        CLUSTER,
        V2,
        observe(
            ready_layout(V1),
            building(V2, "Failed", attempt),
            written=ID1,
            confirmed=ID1,
            previous=start.status,
            generation=2,
        ),
    )
    assert record(failed, ID2).state == "Failed" and "build failed: boom" in record(failed, ID2).message
    assert kinds(failed) == ["EnsureShards", "DeleteLayout"]
    assert failed.of_type(EnsureShards)[0].layout_id == ID1
    assert failed.status.phase == "Failed" and failed.status.active_version == "v1"
    status, reason, message = condition(failed, "Progressing")
    assert (status, reason) == ("False", "RolloutFailed") and "boom" in message
    assert condition(failed, "Ready")[0] == "True"
    assert "LayoutFailed" in event_reasons(failed)
    assert [b.predicate for b in failed.status.blocked_by] == ["failed_layout_not_retried"]
    # Same generation, the failed build already cleaned up: not retried.
    same = plan(
        CLUSTER,
        V2,
        observe(ready_layout(V1), written=ID1, confirmed=ID1, previous=failed.status, generation=2),
    )
    assert kinds(same) == ["EnsureShards"] and record(same, ID2).state == "Failed"
    assert same.requeue_after_seconds is None
    assert event_reasons(same) == []
    # A new generation retries with a new attempt; the stale failure of the old attempt is ignored.
    retry = plan(
        CLUSTER,
        V2,
        observe(
            ready_layout(V1),
            building(V2, "Failed", attempt),
            written=ID1,
            confirmed=ID1,
            previous=same.status,
            generation=3,
            now=later(50),
        ),
    )
    assert record(retry, ID2).state == "Building"
    new_attempt = retry.of_type(EnsureBuild)[0].attempt
    assert new_attempt != attempt
    stale = plan(
        CLUSTER,
        V2,
        observe(
            ready_layout(V1),
            building(V2, "Failed", attempt),
            written=ID1,
            confirmed=ID1,
            previous=retry.status,
            generation=3,
            now=later(60),
        ),
    )
    assert record(stale, ID2).state == "Building" and stale.of_type(EnsureBuild)[0].attempt == new_attempt


def test_rollout_timeout_abandons_the_layout_and_is_not_retried() -> None:
    steady = serving()
    start = plan(
        CLUSTER,
        V2,
        observe(ready_layout(V1), written=ID1, confirmed=ID1, previous=steady.status, generation=2),
    )
    stuck = with_shards(V2, 2, 0)
    before_deadline = plan(
        CLUSTER,
        V2,
        observe(
            ready_layout(V1),
            stuck,
            written=ID1,
            confirmed=ID1,
            previous=start.status,
            generation=2,
            now=later(599),
        ),
    )
    assert record(before_deadline, ID2).state == "Starting"
    assert before_deadline.requeue_after_seconds == 1.0  # the deadline is the most urgent wait
    timed_out = plan(
        CLUSTER,
        V2,
        observe(
            ready_layout(V1),
            stuck,
            written=ID1,
            confirmed=ID1,
            previous=before_deadline.status,
            generation=2,
            now=later(600),
        ),
    )
    entry = record(timed_out, ID2)
    assert entry.state == "Failed" and "within 600s (rollout.timeoutSeconds)" in entry.message
    assert "RolloutTimedOut" in event_reasons(timed_out)
    assert [a.layout_id for a in timed_out.of_type(DeleteLayout)] == [ID2]
    assert timed_out.of_type(EnsureShards)[0].layout_id == ID1
    assert timed_out.status.phase == "Failed"
    assert condition(timed_out, "Progressing")[:2] == ("False", "RolloutFailed")
    assert timed_out.status.active_layout == ID1


# --- pause --------------------------------------------------------------------------------------


def test_paused_freezes_changes_but_status_keeps_updating() -> None:
    steady = serving()
    paused_v2 = with_version(make_spec(paused=True), "v2")
    one_down = with_shards(V1, 2, 1)
    result = plan(
        CLUSTER,
        paused_v2,
        observe(one_down, written=ID1, confirmed=ID1, previous=steady.status, generation=2),
    )
    assert kinds(result) == []
    assert result.status.phase == "Paused"
    assert result.status.ready_replicas == 3  # still observed
    assert [b.predicate for b in result.status.blocked_by] == ["paused"]
    assert condition(result, "Progressing")[:2] == ("False", "Paused")
    assert {"Paused", "BuildingLayout"} <= set(event_reasons(result))
    resumed = plan(
        CLUSTER, V2, observe(one_down, written=ID1, confirmed=ID1, previous=result.status, generation=3)
    )
    assert kinds(resumed) == ["EnsureBuild", "EnsureShards"]
    assert "Resumed" in event_reasons(resumed)
    assert resumed.status.blocked_by == []


def test_paused_without_pending_changes_reports_no_block() -> None:
    steady = serving()
    result = plan(
        CLUSTER,
        make_spec(paused=True),
        observe(ready_layout(V1), written=ID1, confirmed=ID1, previous=steady.status),
    )
    assert kinds(result) == [] and result.status.blocked_by == []
    assert result.status.phase == "Paused"


def test_paused_does_not_time_out_a_rollout() -> None:
    steady = serving()
    start = plan(
        CLUSTER,
        V2,
        observe(ready_layout(V1), written=ID1, confirmed=ID1, previous=steady.status, generation=2),
    )
    paused_v2 = with_version(make_spec(paused=True), "v2")
    frozen = plan(
        CLUSTER,
        paused_v2,
        observe(
            ready_layout(V1),
            building(V2),
            written=ID1,
            confirmed=ID1,
            previous=start.status,
            generation=3,
            now=later(10_000),
        ),
    )
    assert record(frozen, ID2).state == "Building"


# --- failover -----------------------------------------------------------------------------------


def test_serving_shard_without_ready_replicas_is_degraded_and_nothing_is_deleted() -> None:
    steady = serving()
    lost = with_shards(V1, 2, 0)
    result = plan(CLUSTER, V1, observe(lost, written=ID1, confirmed=ID1, previous=steady.status))
    assert result.status.phase == "Degraded"
    status, reason, message = condition(result, "Degraded")
    assert (status, reason) == ("True", "ShardsUnavailable") and "shards [1]" in message
    assert condition(result, "Ready")[:2] == ("False", "ShardsUnavailable")
    assert result.of_type(DeleteLayout) == ()
    assert kinds(result) == ["EnsureShards"]
    assert event_reasons(result) == ["ShardsUnavailable"]
    assert result.requeue_after_seconds == POLL_SECONDS
    recovered = plan(
        CLUSTER, V1, observe(ready_layout(V1), written=ID1, confirmed=ID1, previous=result.status)
    )
    assert recovered.status.phase == "Ready"
    assert event_reasons(recovered) == ["ShardsRecovered"]


# --- keeping and deleting old layouts -----------------------------------------------------------


def _after_switch(spec: RecommenderClusterSpec) -> tuple[Observed, Plan]:
    """v2 just confirmed serving under `spec`'s rollout settings; v1 retiring since T0."""
    start = RecommenderClusterStatus(
        observed_generation=2,
        layouts=[
            LayoutStatus(
                name=ID1,
                version="v1",
                shards=2,
                state="Serving",
                created_at=format_time(T0),
                state_since=format_time(T0),
            ),
            LayoutStatus(
                name=ID2,
                version="v2",
                shards=2,
                state="Ready",
                created_at=format_time(T0),
                state_since=format_time(T0),
            ),
        ],
    )
    world = observe(
        ready_layout(V1), ready_layout(V2), written=ID2, confirmed=ID2, previous=start, generation=2
    )
    return world, plan(CLUSTER, spec, world)


def test_old_layout_is_kept_for_the_rollback_window_then_deleted() -> None:
    world, switched = _after_switch(V2)
    inside = plan(CLUSTER, V2, replace(world, previous_status=switched.status, now=later(299)))
    assert inside.of_type(DeleteLayout) == () and inside.of_type(RetireLayout)[0].layout_id == ID1
    assert "kept for rollback until 2026-01-01T12:05:00Z" in record(inside, ID1).message
    assert inside.waiting_reason.startswith("Retiring:")
    after = plan(CLUSTER, V2, replace(world, previous_status=inside.status, now=later(300)))
    assert [a.layout_id for a in after.of_type(DeleteLayout)] == [ID1]
    assert after.requeue_after_seconds == POLL_SECONDS
    gone = plan(
        CLUSTER, V2, replace(world, layouts=(ready_layout(V2),), previous_status=after.status, now=later(305))
    )
    assert [entry.name for entry in gone.status.layouts] == [ID2]
    assert gone.requeue_after_seconds is None


def test_an_ordered_deletion_is_recorded_as_data_and_survives_a_restart() -> None:
    world, switched = _after_switch(V2)
    ordered = plan(CLUSTER, V2, replace(world, previous_status=switched.status, now=later(300)))
    entry = record(ordered, ID1)
    assert entry.deleting and entry.state == "Retiring"
    assert entry.message.startswith("deleting: stopped serving at")  # still says why, for humans
    assert "DeletingLayout" in event_reasons(ordered)
    # A fresh process reads the status back from the API (camelCase JSON) while v1 still exists.
    stored = RecommenderClusterStatus.model_validate_json(ordered.status.model_dump_json(by_alias=True))
    again = plan(CLUSTER, V2, replace(world, previous_status=stored, now=later(301)))
    assert record(again, ID1) == entry
    assert [a.layout_id for a in again.of_type(DeleteLayout)] == [ID1]
    assert "DeletingLayout" not in event_reasons(again)  # announced once


def test_keep_zero_drains_then_deletes() -> None:
    spec = with_version(make_spec(rollout={"keepPreviousLayouts": 0, "drainSeconds": 5}), "v2")
    world, switched = _after_switch(spec)
    assert switched.of_type(DeleteLayout) == ()
    assert "draining until" in record(switched, ID1).message
    assert switched.requeue_after_seconds == 5
    drained = plan(CLUSTER, spec, replace(world, previous_status=switched.status, now=later(5)))
    assert [a.layout_id for a in drained.of_type(DeleteLayout)] == [ID1]


def test_only_keep_previous_layouts_are_kept_older_ones_drain() -> None:
    v3 = with_version(V1, "v3")
    id3 = layout_id(v3)
    stamp = format_time(T0)
    previous = RecommenderClusterStatus(
        observed_generation=3,
        layouts=[
            LayoutStatus(
                name=ID1,
                version="v1",
                shards=2,
                state="Retiring",
                created_at=stamp,
                state_since=format_time(later(-100)),
            ),
            LayoutStatus(
                name=ID2, version="v2", shards=2, state="Serving", created_at=stamp, state_since=stamp
            ),
            LayoutStatus(
                name=id3, version="v3", shards=2, state="Ready", created_at=stamp, state_since=stamp
            ),
        ],
    )
    world = observe(
        ready_layout(V1),
        ready_layout(V2),
        ready_layout(v3),
        written=id3,
        confirmed=id3,
        previous=previous,
        generation=3,
        now=later(10),
    )
    result = plan(CLUSTER, v3, world)
    assert [a.layout_id for a in result.of_type(DeleteLayout)] == [ID1]  # oldest, beyond keep=1
    assert [a.layout_id for a in result.of_type(RetireLayout)] == [ID2]


def test_unconfirmed_switch_blocks_deleting_the_old_layout() -> None:
    world, switched = _after_switch(V2)
    v3 = with_version(V1, "v3")
    id3 = layout_id(v3)
    in_flight = replace(
        world,
        layouts=(*world.layouts, ready_layout(v3)),
        router=ObservedRouter(written_layout=id3, confirmed_layout=ID2),
        previous_status=switched.status,
        now=later(400),
        generation=3,
    )
    result = plan(CLUSTER, v3, in_flight)
    assert result.of_type(DeleteLayout) == () and result.of_type(SwitchRouter) == ()
    assert [b.predicate for b in result.status.blocked_by] == ["wait_for_router_to_confirm_switch"]
    assert condition(result, "Progressing")[1] == "WaitingForRouter"
    assert result.requeue_after_seconds == ROUTER_POLL_SECONDS


def test_last_served_layout_is_not_deleted_while_nothing_serves() -> None:
    world, switched = _after_switch(V2)
    # The router topology was lost: nothing is confirmed serving any more.
    lost = replace(world, router=ObservedRouter(), previous_status=switched.status, now=later(1000))
    result = plan(CLUSTER, V2, lost)
    assert result.of_type(DeleteLayout) == ()
    assert [b.predicate for b in result.status.blocked_by] == ["never_delete_serving_layout"]
    assert [a.layout_id for a in result.of_type(SwitchRouter)] == [ID2]  # restores the target


def test_status_endpoint_and_generation_are_reported() -> None:
    result = plan(CLUSTER, V1, observe(generation=7))
    assert result.status.observed_generation == 7
    assert all(c.observed_generation == 7 for c in result.status.conditions)
    assert result.status.router_endpoint == "http://127.0.0.1:8080"
