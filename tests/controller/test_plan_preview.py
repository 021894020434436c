"""`status.planPreview`: written while paused or with the plan-preview annotation, with nothing
disruptive done meanwhile; gone once the freeze is lifted and the change runs."""

from __future__ import annotations

import pytest

from shardrec.api import v1alpha1 as api
from shardrec.planning import LayoutSpec, layout_id
from shardrec.planning.preview import build_pods, deployed_from_status, preview
from shardrec_operator.desired.index_build import per_shard_build
from shardrec_operator.desired.router import build_router_deployment
from shardrec_operator.desired.shard import build_shard_statefulset
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.loading import load_cluster
from tests.controller.samples import NAME, cluster
from tests.controller.test_reconcile import ready_world
from tests.controller.world import World


def test_paused_writes_the_preview_and_nothing_else() -> None:
    world = ready_world()
    old = layout_id(load_cluster(world.body).spec)
    assert "planPreview" not in world.status or world.status["planPreview"] is None
    world.change(paused=True, index={"version": "v2"})
    before = len(world.api.writes)
    world.settle()
    assert len(world.api.writes) == before, "the dry run writes nothing but status"
    preview = world.status["planPreview"]
    new = layout_id(load_cluster(world.body).spec)
    assert preview["kind"] == "rebuild"
    assert preview["generation"] == world.body["metadata"]["generation"]
    assert preview["disruptive"] is True and preview["breaksAvailability"] is False
    assert preview["summary"] == f"build layout {new} (version v2, 2 shards) and switch from {old} blue/green"
    text = preview["text"]
    assert text.startswith(
        f"Plan for RecommenderCluster {world.body['metadata']['name']}: build layout {new}"
    )
    # 2 shards x 2 replicas of 500m / 1Gi beside the serving ones
    assert "Peak extra: 4 pod(s); requests to schedule: cpu 2 cores, memory 4.00 GiB" in text
    assert "Not computed: item count unknown" in text
    assert "Note: spec.paused is true: nothing of this happens until it is false" in text
    world.change(paused=False)
    world.settle()
    assert world.status["activeVersion"] == "v2"
    assert world.status.get("planPreview") is None


def test_the_plan_preview_annotation_is_a_dry_run() -> None:
    world = ready_world()
    world.body["metadata"]["annotations"] = {"shardrec.io/plan-preview": "true"}
    world.change(replicasPerShard=3, router={"replicas": 1})
    before = len(world.api.writes)
    world.settle()
    assert len(world.api.writes) == before
    preview = world.status["planPreview"]
    assert preview["kind"] == "scale"
    assert preview["breaksAvailability"] is True
    assert "  shard  layout" in preview["text"] and ": +2" in preview["text"]
    assert "  router: -1" in preview["text"]
    assert "[risk] SingleRouter" in preview["text"]
    assert 'dry run (shardrec.io/plan-preview: "true")' in preview["text"]
    del world.body["metadata"]["annotations"]
    world.settle()
    assert {s["spec"]["replicas"] for s in world.api.of_kind(kinds.STATEFUL_SET)} == {3}
    assert world.status.get("planPreview") is None


def test_ef_search_while_paused_is_previewed_as_live_from_the_topology() -> None:
    world = ready_world()
    world.change(paused=True, index={**world.body["spec"]["index"], "hnsw": {"efSearch": 300}})
    world.settle()
    preview = world.status["planPreview"]
    assert preview["kind"] == "live"
    assert preview["disruptive"] is False
    assert "-> 300: live" in preview["text"]


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("object_store", [False, True])
def test_build_pods_agree_with_the_build_job(shards: int, object_store: bool) -> None:
    index = {
        "version": "v1",
        "source": "s3://bucket/emb" if object_store else "pvc://embeddings/v1",
        "dimension": 32,
        "store": {"objectStore": {"url": "s3://bucket/layouts"}}
        if object_store
        else {"persistentVolumeClaim": {"claimName": "index-store"}},
        **({"objectStore": {"endpoint": "http://s3.local:8333"}} if object_store else {}),
    }
    sample = cluster(shards=shards, index=index)
    expected = shards if per_shard_build(sample.spec, LayoutSpec.from_spec(sample.spec)) else 1
    assert build_pods(sample.spec) == expected


def test_world_without_pause_has_no_preview() -> None:
    world = World()
    world.settle()
    assert world.status.get("planPreview") is None


SPEC_CHANGES: list[tuple[str, dict[str, object]]] = [
    ("image", {"image": "registry.example/shardrec:9.9.9"}),
    ("imagePullPolicy", {"imagePullPolicy": "Always"}),
    ("shard resources", {"resources": {"shard": {"requests": {"cpu": "1", "memory": "1Gi"}}}}),
    ("router resources", {"resources": {"router": {"requests": {"cpu": "1", "memory": "1Gi"}}}}),
    ("shard pod labels", {"podTemplates": {"shard": {"metadata": {"labels": {"team": "a"}}}}}),
    ("router pod labels", {"podTemplates": {"router": {"metadata": {"labels": {"team": "a"}}}}}),
    ("drainSeconds", {"rollout": {"drainSeconds": 30}}),
    ("scrapeAnnotations", {"monitoring": {"scrapeAnnotations": False}}),
    ("router timeout", {"router": {"timeoutMs": 5000}}),
    ("rate limit", {"auth": {"rateLimitPerSecond": 100}}),
    ("router replicas", {"router": {"replicas": 3}}),
    ("replicasPerShard", {"replicasPerShard": 3}),
    ("efSearch", {"index": {"hnsw": {"efSearch": 300}}}),
    ("rollback window", {"rollout": {"rollbackWindowSeconds": 60}}),
]


def _pod_template(manifest: dict[str, object]) -> object:
    spec = manifest["spec"]
    assert isinstance(spec, dict)
    return spec["template"]


@pytest.mark.parametrize(("what", "change"), SPEC_CHANGES, ids=[what for what, _ in SPEC_CHANGES])
def test_the_preview_says_roll_exactly_when_the_builders_change_a_pod_template(
    what: str, change: dict[str, object]
) -> None:
    """The preview's lists of pod-template fields against the builders that make the templates:
    a change replaces shard (router) pods in the preview iff the StatefulSet (Deployment) pod
    template the operator applies changes."""
    old = cluster()
    document = old.model_dump(by_alias=True, mode="json", exclude={"status"}, exclude_none=True)
    for key, value in change.items():
        current = document["spec"].get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged = {**current}
            for inner, inner_value in value.items():
                base = merged.get(inner)
                merged[inner] = (
                    {**base, **inner_value}
                    if isinstance(base, dict) and isinstance(inner_value, dict)
                    else inner_value
                )
            document["spec"][key] = merged
        else:
            document["spec"][key] = value
    new = type(old).model_validate(document)
    layout = LayoutSpec.from_spec(old.spec)
    assert LayoutSpec.from_spec(new.spec) == layout, "these changes keep the layout"
    shard_changed = _pod_template(build_shard_statefulset(old, layout, 0, 2)) != _pod_template(
        build_shard_statefulset(new, layout, 0, 2)
    )
    router_changed = _pod_template(build_router_deployment(old)) != _pod_template(
        build_router_deployment(new)
    )
    plan = preview(NAME, new.spec, deployed_from_status(running_status(old), old.spec))
    assert any(p.kind == "shard" and p.replaced for p in plan.pods) == shard_changed, plan.changes
    assert any(p.kind == "router" and p.replaced for p in plan.pods) == router_changed, plan.changes


def running_status(sample: api.RecommenderCluster) -> api.RecommenderClusterStatus:
    lid = layout_id(sample.spec)
    return api.RecommenderClusterStatus.model_validate(
        {
            "activeLayout": lid,
            "activeVersion": sample.spec.index.version,
            "replicasPerShard": sample.spec.replicas_per_shard,
            "layouts": [
                {"name": lid, "version": sample.spec.index.version, "shards": sample.spec.shards,
                 "state": "Serving", "createdAt": "t", "stateSince": "t"}
            ],
        }
    )  # fmt: skip
