"""Each named safety predicate on its own: when it vetoes, when it lets an action pass."""

from __future__ import annotations

from datetime import timedelta

from shardrec.api.v1alpha1 import LayoutStatus, RecommenderClusterSpec
from shardrec.planning import (
    PREDICATES,
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
    RetireLayout,
    StageRouter,
    SwitchRouter,
    format_time,
    layout_id,
)
from shardrec.planning.actions import LayoutAction
from shardrec.planning.predicates import (
    PredicateContext,
    first_veto,
    meets_quality_gate,
    never_delete_last_ready_replica_of_serving_shard,
    never_delete_serving_layout,
    never_switch_to_layout_with_missing_shard,
    paused,
    rollout_within_timeout,
    wait_for_router_to_confirm_switch,
)
from tests.planning.world import T0, make_spec, ready_layout, with_version

V1 = make_spec()
V2 = with_version(V1, "v2")
L1, L2 = LayoutSpec.from_spec(V1), LayoutSpec.from_spec(V2)


def ctx(
    *layouts: ObservedLayout,
    spec: RecommenderClusterSpec = V2,
    written: str | None = None,
    confirmed: str | None = None,
    records: dict[str, LayoutStatus] | None = None,
    seconds: float = 0,
) -> PredicateContext:
    observed = Observed(
        generation=1,
        now=T0 + timedelta(seconds=seconds),
        layouts=layouts,
        router=ObservedRouter(written, confirmed),
    )
    return PredicateContext(spec, observed, records or {}, layout_id(spec))


def entry(layout: LayoutSpec, state: str) -> LayoutStatus:
    stamp = format_time(T0)
    return LayoutStatus(
        name=layout.id,
        version=layout.version,
        shards=layout.shards,
        state=state,
        created_at=stamp,
        state_since=stamp,
    )  # type: ignore[arg-type]


def test_table_names_every_rule_once_in_reporting_order() -> None:
    names = [predicate.name for predicate in PREDICATES]
    assert names == [
        "paused",
        "failed_layout_not_retried",
        "meets_quality_gate",
        "writes_carried_to_new_layout",
        "carry_back_after_carry_into_serving_done",
        "rollout_within_timeout",
        "build_after_carry_cut",
        "traffic_after_carry_caught_up",
        "wait_for_router_to_confirm_switch",
        "never_switch_to_layout_with_missing_shard",
        "switch_only_when_every_router_prepared",
        "never_delete_serving_layout",
        "keep_carry_source_until_done",
        "open_fenced_source_before_deleting",
        "never_delete_last_ready_replica_of_serving_shard",
        "never_delete_artifacts_of_a_live_layout",
        "never_delete_carry_folders_in_use",
        "wait_for_artifact_deletion",
        "replace_one_shard_at_a_time",
        "keep_ready_replicas_while_replacing",
        "switch_after_hand_over",
    ]


def test_paused_vetoes_every_change_but_not_retirement_notices() -> None:
    frozen = ctx(spec=make_spec(paused=True))
    for action in (
        EnsureBuild(L2, "a", "r"),
        EnsureShards(L2, 2, "r"),
        SwitchRouter(L2, "r"),
        DeleteLayout(L1, "r"),
    ):
        assert paused(frozen, action) is not None
    assert paused(frozen, RetireLayout(L1, T0, "r")) is None
    assert paused(ctx(), EnsureBuild(L2, "a", "r")) is None


def test_missing_or_unready_shard_blocks_a_switch() -> None:
    one_shard = ObservedLayout(
        spec=L2, build=ObservedBuild("Succeeded"), shards=(ObservedShard(0, 2, 2),)
    )  # shard 1 has no workload
    assert "shards [1]" in (
        never_switch_to_layout_with_missing_shard(ctx(one_shard), SwitchRouter(L2, "r")) or ""
    )
    unready = ObservedLayout(
        spec=L2, build=ObservedBuild("Succeeded"), shards=(ObservedShard(0, 2, 2), ObservedShard(1, 2, 0))
    )
    assert "shards [1]" in (
        never_switch_to_layout_with_missing_shard(ctx(unready), SwitchRouter(L2, "r")) or ""
    )
    unbuilt = ObservedLayout(spec=L2, build=ObservedBuild("Running"))
    assert "not built" in (
        never_switch_to_layout_with_missing_shard(ctx(unbuilt), SwitchRouter(L2, "r")) or ""
    )
    assert "not built" in (never_switch_to_layout_with_missing_shard(ctx(), SwitchRouter(L2, "r")) or "")
    # One ready replica per shard is enough for safety (waiting for all replicas is the planner's job).
    thin = ObservedLayout(
        spec=L2, build=ObservedBuild("Succeeded"), shards=(ObservedShard(0, 2, 1), ObservedShard(1, 2, 1))
    )
    assert never_switch_to_layout_with_missing_shard(ctx(thin), SwitchRouter(L2, "r")) is None


def test_router_expectation_holds_switches_and_deletions_only() -> None:
    in_flight = ctx(written=L2.id, confirmed=L1.id)
    assert wait_for_router_to_confirm_switch(in_flight, SwitchRouter(L2, "r")) is not None
    assert wait_for_router_to_confirm_switch(in_flight, DeleteLayout(L1, "r")) is not None
    assert wait_for_router_to_confirm_switch(in_flight, EnsureShards(L2, 2, "r")) is None
    settled = ctx(written=L2.id, confirmed=L2.id)
    assert wait_for_router_to_confirm_switch(settled, DeleteLayout(L1, "r")) is None
    fresh = ctx(written=None, confirmed=None)  # nothing written yet: nothing to wait for
    assert wait_for_router_to_confirm_switch(fresh, SwitchRouter(L2, "r")) is None


def test_layouts_named_by_the_router_are_never_deleted() -> None:
    assert never_delete_serving_layout(ctx(written=L1.id, confirmed=L2.id), DeleteLayout(L1, "r")) is not None
    assert never_delete_serving_layout(ctx(written=L2.id, confirmed=L1.id), DeleteLayout(L1, "r")) is not None
    assert never_delete_serving_layout(ctx(written=L2.id, confirmed=L2.id), DeleteLayout(L1, "r")) is None
    last = ctx(records={L1.id: entry(L1, "Retiring")})
    assert "last that served" in (never_delete_serving_layout(last, DeleteLayout(L1, "r")) or "")


def test_scale_down_keeps_a_ready_replica_of_each_serving_shard() -> None:
    three = ObservedLayout(
        spec=L1,
        build=ObservedBuild("Succeeded"),
        shards=(ObservedShard(0, 3, 1, frozenset({0})), ObservedShard(1, 3, 1, frozenset({2}))),
    )
    serving = ctx(three, written=L1.id, confirmed=L1.id)
    reason = never_delete_last_ready_replica_of_serving_shard(serving, EnsureShards(L1, 1, "r"))
    assert reason is not None and "shards [1]" in reason
    assert (
        never_delete_last_ready_replica_of_serving_shard(serving, EnsureShards(L1, 3, "r")) is None
    )  # no scale-down
    assert never_delete_last_ready_replica_of_serving_shard(serving, EnsureShards(L1, 4, "r")) is None
    not_serving = ctx(three, written=L2.id, confirmed=L2.id)
    assert never_delete_last_ready_replica_of_serving_shard(not_serving, EnsureShards(L1, 1, "r")) is None
    assert never_delete_last_ready_replica_of_serving_shard(serving, DeleteLayout(L1, "r")) is not None


def test_rollout_timeout_counts_from_when_the_layout_was_planned() -> None:
    records = {L2.id: entry(L2, "Starting")}
    action: LayoutAction = EnsureShards(L2, 2, "r")
    assert rollout_within_timeout(ctx(records=records, seconds=599), action) is None
    assert "600s" in (rollout_within_timeout(ctx(records=records, seconds=600), action) or "")
    # Deleting is not advancing; a serving or ready layout is past the point of timing out.
    assert rollout_within_timeout(ctx(records=records, seconds=900), DeleteLayout(L2, "r")) is None
    ready = {L2.id: entry(L2, "Ready")}
    assert rollout_within_timeout(ctx(records=ready, seconds=900), SwitchRouter(L2, "r")) is None


def test_first_veto_reports_the_most_fundamental_rule() -> None:
    world = ctx(ready_layout(V1), spec=make_spec(paused=True), written=L1.id, confirmed=L1.id)
    assert first_veto(world, DeleteLayout(L1, "r")) == (
        "paused",
        "spec.paused is true: builds, scaling, router switches and deletions are frozen",
    )
    assert first_veto(ctx(ready_layout(V1), written=L1.id, confirmed=L1.id), DeleteLayout(L1, "r")) == (
        "never_delete_serving_layout",
        f"layout {L1.id} is named by the router topology",
    )
    assert first_veto(ctx(ready_layout(V2)), SwitchRouter(L2, "r")) is None


def _built(layout: LayoutSpec, ndcg: float | None, *, serving: bool = False) -> ObservedLayout:
    quality = OfflineQuality(ndcg, split="test") if ndcg is not None else None
    shards = tuple(ObservedShard(i, 2, 2) for i in range(layout.shards)) if serving else ()
    return ObservedLayout(spec=layout, build=ObservedBuild("Succeeded", quality=quality), shards=shards)


def _gated(**gate: float) -> RecommenderClusterSpec:
    return make_spec(index={**V2.index.model_dump(by_alias=True), "qualityGate": gate})


def test_quality_gate_refuses_a_layout_below_the_absolute_minimum_before_its_shards_start() -> None:
    spec = _gated(minNdcgAt10=0.03)
    low = ctx(_built(L1, 0.04, serving=True), _built(L2, 0.02), spec=spec, written=L1.id, confirmed=L1.id)
    for action in (EnsureShards(L2, 2, "r"), StageRouter(L2, "r"), SwitchRouter(L2, "r")):
        reason = meets_quality_gate(low, action)
        assert reason is not None and "NDCG@10 0.0200 (test split) is below" in reason
        assert "minNdcgAt10 0.0300" in reason
        assert first_veto(low, action) == ("meets_quality_gate", reason)
    # The build runs (it is what reads the metrics); the serving layout is never held back.
    assert meets_quality_gate(low, EnsureBuild(L2, "a", "r")) is None
    assert meets_quality_gate(low, EnsureShards(L1, 2, "r")) is None
    good = ctx(_built(L1, 0.04, serving=True), _built(L2, 0.035), spec=spec, written=L1.id, confirmed=L1.id)
    assert meets_quality_gate(good, EnsureShards(L2, 2, "r")) is None


def test_quality_gate_relative_to_the_serving_layout() -> None:
    spec = _gated(minRelativeToActive=0.98)
    worse = ctx(_built(L1, 0.040, serving=True), _built(L2, 0.039), spec=spec, written=L1.id, confirmed=L1.id)
    reason = meets_quality_gate(worse, EnsureShards(L2, 2, "r"))
    assert reason is not None and f"serving layout {L1.id}'s NDCG@10 0.0400" in reason and "0.0392" in reason
    close = ctx(
        _built(L1, 0.040, serving=True), _built(L2, 0.0393), spec=spec, written=L1.id, confirmed=L1.id
    )
    assert meets_quality_gate(close, EnsureShards(L2, 2, "r")) is None
    # Nothing serving (first rollout) or a serving layout without metrics: nothing to compare with.
    assert meets_quality_gate(ctx(_built(L2, 0.001), spec=spec), EnsureShards(L2, 2, "r")) is None
    unmeasured = ctx(_built(L1, None, serving=True), _built(L2, 0.001), spec=spec, confirmed=L1.id)
    assert meets_quality_gate(unmeasured, EnsureShards(L2, 2, "r")) is None


def test_quality_gate_refuses_a_layout_without_metrics_and_is_off_without_a_gate() -> None:
    reason = meets_quality_gate(
        ctx(_built(L2, None), spec=_gated(minNdcgAt10=0.01)), EnsureShards(L2, 2, "r")
    )
    assert reason is not None and "records no offline metrics" in reason
    assert meets_quality_gate(ctx(_built(L2, None)), EnsureShards(L2, 2, "r")) is None
    assert meets_quality_gate(ctx(_built(L2, 0.0)), SwitchRouter(L2, "r")) is None
