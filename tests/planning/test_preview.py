"""The plan preview: one test per kind of change, the availability verdicts, and the figures
(peak requests, resident memory, duration) checked by hand against simple rates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shardrec.api.v1alpha1 import (
    LayoutStatus,
    RecommenderClusterSpec,
    RecommenderClusterStatus,
    StoredLayoutStatus,
)
from shardrec.planning.layouts import layout_id
from shardrec.planning.preview import (
    NOTHING_DEPLOYED,
    Deployed,
    PlanPreview,
    Rates,
    Requests,
    build_pods,
    deployed_from_status,
    preview,
    quantity,
    requests_of,
)
from shardrec.planning.preview_format import duration, render_text, to_json

GIB = 1024**3
RATES = Rates(
    resident_bytes_per_item=1000.0,
    index_file_bytes_per_item=800.0,
    shard_baseline_bytes=1e6,
    build_items_per_core_second=1000.0,
    load_bytes_per_second=1e6,
    source="test rates",
    search_ms_by_ef=((32, 0.05), (64, 0.07), (256, 0.16)),
)
ITEMS = 100_000


def make_spec(**overrides: Any) -> RecommenderClusterSpec:
    document: dict[str, Any] = {
        "shards": 4,
        "replicasPerShard": 2,
        "index": {"version": "v1", "source": "/data/emb", "dimension": 64},
        "resources": {"shard": {"requests": {"cpu": "2", "memory": "1Gi"}}},
    }
    for path, value in overrides.items():
        node = document
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return RecommenderClusterSpec.model_validate(document)


def running(spec: RecommenderClusterSpec, *, with_spec: bool = True, routers: int = 2) -> Deployed:
    """What a status says after `spec` rolled out completely."""
    lid = layout_id(spec)
    status = RecommenderClusterStatus.model_validate(
        {
            "phase": "Ready",
            "activeLayout": lid,
            "activeVersion": spec.index.version,
            "replicasPerShard": spec.replicas_per_shard,
            "routers": {"readyReplicas": routers},
            "layouts": [
                LayoutStatus(
                    name=lid,
                    version=spec.index.version,
                    shards=spec.shards,
                    state="Serving",
                    ready_shards=spec.shards,
                    created_at="2026-12-01T00:00:00Z",
                    state_since="2026-12-01T00:00:00Z",
                ).model_dump(by_alias=True)
            ],
        }
    )
    return deployed_from_status(status, spec if with_spec else None)


def plan_of(new: RecommenderClusterSpec, deployed: Deployed, **kwargs: Any) -> PlanPreview:
    return preview("movies", new, deployed, kwargs.get("rates", RATES), kwargs.get("items", ITEMS))


def test_nothing_deployed_creates_the_layout_routers_and_a_build() -> None:
    spec = make_spec()
    plan = plan_of(spec, NOTHING_DEPLOYED)
    assert plan.kind == "create"
    assert plan.disruptive
    assert [(b.layout, b.shards, b.items_per_shard, b.pods) for b in plan.builds] == [
        (layout_id(spec), 4, 25_000, 1)
    ]
    assert {(p.kind, p.added, p.removed) for p in plan.pods} == {
        ("build", 1, 1),
        ("shard", 8, 0),
        ("router", 2, 0),
    }
    # 8 shard pods and 2 routers (no router requests set): 16 cores, 8 GiB.
    assert plan.peak_extra_requests == Requests(16.0, 8 * GIB)
    assert plan.peak_extra_pods == 10
    assert plan.peak_extra_resident_bytes == pytest.approx(8 * (25_000 * 1000 + 1e6))
    # one build pod of 2 cores builds every item, then each shard loads 25,000 x 800 bytes
    assert plan.duration_seconds == pytest.approx(ITEMS / 2000 + 25_000 * 800 / 1e6)
    assert plan.holds_extra_seconds == plan.duration_seconds  # no old layout is kept


def test_same_spec_is_nothing_to_do() -> None:
    spec = make_spec()
    plan = plan_of(spec, running(spec))
    assert plan.kind == "none"
    assert not plan.disruptive
    assert plan.builds == () and plan.pods == ()
    assert plan.peak_extra_pods == 0 and plan.peak_extra_requests == Requests(None, None)
    assert plan.duration_seconds is None
    assert plan.summary == "nothing to do"
    assert not plan.breaks_availability


def test_new_version_is_a_blue_green_rebuild_that_doubles_the_shards() -> None:
    old = make_spec()
    new = make_spec(**{"index.version": "v2", "index.source": "/data/emb2"})
    plan = plan_of(new, running(old))
    assert plan.kind == "rebuild"
    assert plan.new_layout == layout_id(new) != layout_id(old)
    assert plan.changes == (
        "index.version v1 -> v2",
        "index.source /data/emb -> /data/emb2",
        f"=> new layout {layout_id(new)}: built, then switched to blue/green",
    )
    shard_changes = {(p.layout, p.added, p.removed) for p in plan.pods if p.kind == "shard"}
    assert shard_changes == {(layout_id(new), 8, 0), (layout_id(old), 0, 8)}
    # the new layout's 8 pods run beside the old 8: the extra is a whole second fleet
    assert plan.peak_extra_requests == Requests(16.0, 8 * GIB)
    assert plan.holds_extra_seconds == pytest.approx(plan.duration_seconds + 300)  # rollback window
    assert {risk.code for risk in plan.risks} == {"NeedsCapacity"}
    assert not plan.breaks_availability


def test_shard_count_change_rebuilds_with_the_new_split() -> None:
    old = make_spec(shards=2)
    new = make_spec(shards=5)
    plan = plan_of(new, running(old))
    assert plan.kind == "rebuild"
    assert plan.builds[0].items_per_shard == 20_000
    assert plan.changes[0] == "shards 2 -> 5"
    assert {(p.layout, p.added, p.removed) for p in plan.pods if p.kind == "shard"} == {
        (layout_id(new), 10, 0),
        (layout_id(old), 0, 4),
    }


def test_scale_up_adds_pods_without_a_build_and_loads_only() -> None:
    old = make_spec()
    plan = plan_of(make_spec(replicasPerShard=3), running(old))
    assert plan.kind == "scale"
    assert plan.builds == ()
    assert [(p.kind, p.added, p.removed) for p in plan.pods] == [("shard", 4, 0)]
    assert plan.peak_extra_requests == Requests(8.0, 4 * GIB)
    assert plan.duration_seconds == pytest.approx(25_000 * 800 / 1e6)
    assert plan.disruptive


def test_scale_down_removes_pods_and_says_so() -> None:
    old = make_spec(replicasPerShard=3)
    plan = plan_of(make_spec(replicasPerShard=2), running(old))
    assert plan.kind == "scale"
    assert [(p.kind, p.added, p.removed) for p in plan.pods] == [("shard", 0, 4)]
    assert plan.peak_extra_pods == 0
    assert [risk.code for risk in plan.risks] == ["ScaleDown"]
    assert not plan.breaks_availability


def test_one_replica_per_shard_can_break_availability() -> None:
    old = make_spec()
    plan = plan_of(make_spec(replicasPerShard=1), running(old))
    assert plan.breaks_availability
    single = next(risk for risk in plan.risks if risk.code == "SingleReplica")
    assert "503" in single.message and "maxUnavailable 1" in single.message
    available = plan_of(make_spec(replicasPerShard=1, **{"router.consistency": "available"}), running(old))
    assert "partial" in next(r.message for r in available.risks if r.code == "SingleReplica")


def test_one_router_can_break_availability() -> None:
    spec = make_spec()
    plan = plan_of(make_spec(**{"router.replicas": 1}), running(spec))
    assert plan.kind == "scale"
    # the router settings file (replicas included) is hashed onto the pod template: the one left
    # is replaced too
    assert [(p.kind, p.removed, p.replaced) for p in plan.pods] == [("router", 1, 0), ("router", 0, 1)]
    assert "SingleRouter" in {risk.code for risk in plan.risks}
    assert plan.breaks_availability


def test_ef_search_is_a_live_change() -> None:
    old = make_spec()
    plan = plan_of(make_spec(**{"index.hnsw.efSearch": 200}), running(old))
    assert plan.kind == "live"
    assert not plan.disruptive
    assert plan.pods == () and plan.builds == ()
    assert plan.changes[0].startswith(f"index.hnsw.efSearch {old.index.hnsw.ef_search} -> 200: live")
    # the measured cost at the smallest measured ef >= 200 (256) against ef 64
    assert "0.070 ms at efSearch 64 -> 0.160 ms at 200 (x2.29)" in plan.notes[0]
    beyond = plan_of(make_spec(**{"index.hnsw.efSearch": 300}), running(old))
    assert "efSearch 300 is beyond the measured range (up to 256)" in beyond.notes[0]


def test_ef_search_from_the_topology_when_only_the_status_is_known() -> None:
    old = make_spec()
    base = running(old, with_spec=False)
    known = Deployed(**{**base.__dict__, "live_ef_search": 50})
    assert plan_of(make_spec(**{"index.hnsw.efSearch": 200}), known).kind == "live"
    unknown = plan_of(make_spec(**{"index.hnsw.efSearch": 200}), base)
    assert unknown.kind == "none"
    assert any("nor efSearch" in note for note in unknown.notes)


def test_template_change_rolls_with_a_surge_pod_for_single_replica_shards() -> None:
    old = make_spec(replicasPerShard=1)
    plan = plan_of(make_spec(replicasPerShard=1, image="example/shardrec:2"), running(old))
    assert plan.kind == "roll"
    shard_roll = next(p for p in plan.pods if p.kind == "shard")
    assert shard_roll.replaced == 4 and "extra pod" in shard_roll.note
    router_roll = next(p for p in plan.pods if p.kind == "router")
    assert router_roll.replaced == 2
    assert plan.peak_extra_pods == 2  # one surge shard pod and one surge router at a time
    assert plan.peak_extra_requests.cpu == 2.0


def test_the_build_peak_wins_when_build_pods_ask_for_more() -> None:
    old = make_spec()
    new = make_spec(
        **{"index.version": "v2", "resources.build": {"requests": {"cpu": "16", "memory": "64Gi"}}}
    )
    plan = plan_of(new, running(old))
    assert plan.peak_extra_requests == Requests(16.0, 64 * GIB)
    # 16 build workers: the build takes an eighth of what 2 cores take
    assert plan.builds[0].seconds == pytest.approx(ITEMS / 16_000)


def test_object_store_builds_one_pod_per_shard() -> None:
    spec = make_spec(
        **{
            "index.source": "s3://bucket/emb",
            "index.objectStore": {"endpoint": "http://s3.local:8333"},
            "index.store": {"objectStore": {"url": "s3://bucket/layouts"}},
        }
    )
    assert build_pods(spec) == 4
    plan = plan_of(spec, NOTHING_DEPLOYED)
    assert plan.builds[0].pods == 4
    # each pod builds its own shard in parallel
    assert plan.builds[0].seconds == pytest.approx(25_000 / 2000)
    assert build_pods(spec.model_copy(update={"shards": 1})) == 1


def test_a_change_the_api_server_refuses_is_flagged() -> None:
    old = make_spec()
    plan = plan_of(make_spec(**{"index.dimension": 32}), running(old))
    assert plan.refused and "dimension" in plan.refused[0]
    assert plan.summary.startswith("REFUSED")


def test_no_rollback_layout_is_an_info_risk() -> None:
    old = make_spec()
    plan = plan_of(make_spec(**{"index.version": "v2", "rollout.keepPreviousLayouts": 0}), running(old))
    assert "NoRollback" in {risk.code for risk in plan.risks}
    assert plan.holds_extra_seconds == plan.duration_seconds


def test_without_items_rates_or_requests_the_figures_are_left_out_and_named() -> None:
    spec = make_spec(resources={})
    plan = preview("movies", spec, NOTHING_DEPLOYED)
    assert plan.duration_seconds is None and plan.peak_extra_resident_bytes is None
    assert plan.peak_extra_requests == Requests(None, None)
    assert len(plan.unresolved) == 3


def test_status_without_an_active_layout_is_nothing_deployed() -> None:
    assert deployed_from_status(RecommenderClusterStatus()).nothing
    assert deployed_from_status(None, make_spec()).nothing


def test_kept_layouts_are_named() -> None:
    old = make_spec()
    status = RecommenderClusterStatus.model_validate(
        {
            "activeLayout": "aaaaaaaaaa",
            "activeVersion": "v1",
            "replicasPerShard": 2,
            "layouts": [
                {"name": "aaaaaaaaaa", "version": "v1", "shards": 4, "state": "Serving",
                 "createdAt": "t", "stateSince": "t"},
                {"name": "bbbbbbbbbb", "version": "v0", "shards": 4, "state": "Retiring",
                 "createdAt": "t", "stateSince": "t"},
            ],
        }
    )  # fmt: skip
    status = status.model_copy(
        update={
            "stored_layouts": [
                StoredLayoutStatus(name="cccccccccc", version="v0", built_at="t"),
                StoredLayoutStatus(name="dddddddddd", version="v0", built_at="t", deleting=True),
            ]
        }
    )
    deployed = deployed_from_status(status, old)
    assert deployed.other_running_layouts == ("bbbbbbbbbb",)
    assert deployed.stored_layouts == ("cccccccccc",)
    plan = plan_of(make_spec(**{"index.version": "v2"}), deployed)
    assert any("bbbbbbbbbb" in note for note in plan.notes)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", 0.5),
        ("2", 2.0),
        ("1Gi", GIB),
        ("512Mi", 512 * 2**20),
        ("1G", 1e9),
        ("1e9", 1e9),
        ("1.5", 1.5),
    ],
)
def test_quantity(text: str, value: float) -> None:
    assert quantity(text) == pytest.approx(value)


def test_quantity_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="quantity"):
        quantity("lots")
    with pytest.raises(ValueError, match="suffix"):
        quantity("3Qi")


def test_requests_fall_back_to_limits() -> None:
    spec = make_spec(resources={"shard": {"limits": {"cpu": "1", "memory": "2Gi"}}})
    assert requests_of(spec.resources.shard) == Requests(1.0, 2 * GIB)


# --- rendering -----------------------------------------------------------------------------------


def test_text_of_a_rebuild_names_every_section() -> None:
    old = make_spec()
    text = render_text(plan_of(make_spec(**{"index.version": "v2"}), running(old)))
    lines = text.splitlines()
    assert lines[0].startswith("Plan for RecommenderCluster movies: build layout ")
    assert f"from {layout_id(old)} blue/green" in lines[0]
    assert "Builds:" in lines and "Pods (+ added, - removed, ~ replaced):" in lines
    assert (
        f"  shard  layout {layout_id(old)}: -8 (kept 300 s after the switch for rollback, then removed)"
        in lines
    )
    assert "Peak extra: 8 pod(s); requests to schedule: cpu 16 cores, memory 8.00 GiB" in lines
    assert "Expected duration: ~1 min 10 s" in text and "extra pods held ~6 min 10 s" in text
    assert "Availability: keeps availability" in lines
    assert lines[-1] == "Rates: test rates"
    assert text.endswith("\n")


def test_text_of_a_risky_change_says_so() -> None:
    old = make_spec()
    text = render_text(plan_of(make_spec(replicasPerShard=1), running(old)))
    assert "Availability: CAN BREAK AVAILABILITY" in text
    assert "  [risk] SingleReplica: " in text


def test_text_of_nothing_to_do_is_short() -> None:
    spec = make_spec()
    text = render_text(plan_of(spec, running(spec)))
    assert text.splitlines()[:4] == [
        "Plan for RecommenderCluster movies: nothing to do",
        f"Current: layout {layout_id(spec)} (version v1, 4 shards x 2 replicas), 2 routers",
        "Changes:",
        "  - no change to layouts, replicas or pods",
    ]
    assert "Pods" not in text and "Peak extra" not in text


def test_json_holds_the_figures_and_the_verdict() -> None:
    old = make_spec()
    document = to_json(plan_of(make_spec(replicasPerShard=1), running(old)))
    again = json.loads(json.dumps(document))
    assert again["kind"] == "scale"
    assert again["breaks_availability"] is True
    assert again["pods"] == [
        {"kind": "shard", "layout": layout_id(old), "added": 0, "removed": 4, "replaced": 0, "note": ""}
    ]
    assert again["peak_extra_requests"] == {"cpu": None, "memory": None}


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.2, "< 1 s"), (42, "42 s"), (200, "3 min 20 s"), (3900, "1 h 05 min")]
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_a_layout_kept_for_rollback_is_switched_to_without_a_build() -> None:
    old, new = make_spec(), make_spec(**{"index.version": "v2"})
    kept = running(new)
    deployed = Deployed(**{**kept.__dict__, "other_running_layouts": (layout_id(old),)})
    plan = plan_of(old, deployed)
    assert plan.kind == "switch"
    assert plan.builds == ()
    assert [(p.layout, p.added, p.removed) for p in plan.pods] == [(layout_id(new), 0, 8)]
    assert plan.peak_extra_pods == 0 and plan.duration_seconds is None
    assert plan.changes[0] == "index.version v2 -> v1"
    assert "no build" in plan.summary


def test_a_stored_layout_is_verified_not_rebuilt() -> None:
    old, new = make_spec(**{"index.version": "v2"}), make_spec()
    deployed = Deployed(**{**running(old).__dict__, "stored_layouts": (layout_id(new),)})
    plan = plan_of(new, deployed)
    assert plan.kind == "rebuild"
    assert plan.builds[0].reuses_artifacts
    load = 25_000 * 800 / 1e6
    assert plan.builds[0].seconds == pytest.approx(load)
    assert plan.duration_seconds == pytest.approx(2 * load)
    assert "(stored already: verified, not rebuilt)" in render_text(plan)


def test_the_last_rollouts_observed_durations_are_noted() -> None:
    old = make_spec()
    lid = layout_id(old)
    status = RecommenderClusterStatus.model_validate(
        {
            "activeLayout": lid,
            "activeVersion": "v1",
            "replicasPerShard": 2,
            "layouts": [{"name": lid, "version": "v1", "shards": 4, "state": "Serving",
                         "createdAt": "2026-12-01T10:00:00Z", "stateSince": "2026-12-01T10:07:30Z"}],
            "storedLayouts": [{"name": lid, "version": "v1", "builtAt": "2026-12-01T10:05:00Z"}],
        }
    )  # fmt: skip
    deployed = deployed_from_status(status, old)
    assert (deployed.last_rollout_seconds, deployed.last_build_seconds) == (450.0, 300.0)
    plan = preview("movies", make_spec(**{"index.version": "v2"}), deployed)
    assert (
        f"observed here: the serving layout {lid} took 450 s from planned to serving (its build 300 s)"
        in plan.notes
    )
    unparsable = status.model_copy(
        update={"layouts": [status.layouts[0].model_copy(update={"created_at": "yesterday"})]}
    )
    assert deployed_from_status(unparsable, old).last_rollout_seconds is None


def test_turning_writes_on_is_a_rebuild_that_names_the_write_settings() -> None:
    old = make_spec()
    new = make_spec(**{"writes.enabled": True, "writes.logVolume.size": "2Gi"})
    plan = plan_of(new, running(old))
    assert plan.kind == "rebuild"
    assert (
        plan.changes[0] == "writes.enabled False -> True"
    )  # the volume of a log that did not exist: no line
    assert not any("logVolume" in line for line in plan.changes)
    resized = make_spec(**{"writes.enabled": True, "writes.logVolume.size": "4Gi", "index.version": "v2"})
    assert "writes.logVolume.size 2Gi -> 4Gi" in plan_of(resized, running(new)).changes
    # The serving layout logs nothing: nothing would be lost, nothing is refused.
    plan = preview("demo", new, running(old), serving_logs_writes=False)
    assert "WritesNotCarried" not in {risk.code for risk in plan.risks}


def test_a_layout_change_with_writes_on_says_the_operator_refuses_it() -> None:
    on = make_spec(**{"writes.enabled": True})
    v2 = make_spec(**{"writes.enabled": True, "index.version": "v2"})
    refused = preview("demo", v2, running(on), serving_logs_writes=True)
    (risk,) = [r for r in refused.risks if r.code == "WritesNotCarried"]
    assert risk.severity == "info" and risk.message.startswith("nothing carries logged item writes")
    assert "spec.writes.enabled false" in risk.message
    unknown = preview("demo", v2, running(on))
    assert any(r.message.startswith("if the serving layout logs") for r in unknown.risks)
    # The local runtime carries; writes off: nothing to refuse; an in-place change: no layout change.
    assert "WritesNotCarried" not in {
        r.code for r in preview("demo", v2, running(on), carries_writes=True).risks
    }
    off = make_spec(**{"index.version": "v2"})
    assert "WritesNotCarried" not in {
        r.code for r in preview("demo", off, running(on), serving_logs_writes=True).risks
    }
    scaled = make_spec(**{"writes.enabled": True, "replicasPerShard": 3})
    assert "WritesNotCarried" not in {
        r.code for r in preview("demo", scaled, running(on), serving_logs_writes=True).risks
    }


def test_the_operator_carries_a_new_layout_and_carries_back_into_a_kept_one() -> None:
    on = make_spec(**{"writes.enabled": True})
    v2 = make_spec(**{"writes.enabled": True, "index.version": "v2"})
    carried = preview("demo", v2, running(on), runs_carriers=True, serving_logs_writes=True)
    (risk,) = [r for r in carried.risks if r.code == "WritesCarried"]
    assert risk.message.startswith("the operator carries the logged item writes into the new layout")
    assert "WritesNotCarried" not in {r.code for r in carried.risks}
    kept = running(v2)
    back = Deployed(**{**kept.__dict__, "other_running_layouts": (layout_id(on),)})
    rollback = preview("demo", on, back, runs_carriers=True, serving_logs_writes=True)
    assert rollback.kind == "switch"
    assert "WritesNotCarried" not in {r.code for r in rollback.risks}
    (carried_back,) = [r for r in rollback.risks if r.code == "WritesCarriedBack"]
    assert carried_back.message.startswith("the operator carries the logged item writes back into the kept")
    assert "roll back one layout at a time" in carried_back.message
