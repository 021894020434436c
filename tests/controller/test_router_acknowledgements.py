"""The operator confirms a switch from the routers' own reports (their pod annotations), not from
its own write: an old layout is deleted only once every ready router serves the new one, a switch
commits only once every ready router has prepared the layout, and a lost topology ConfigMap never
sends the revision backwards.

The routers here are doubles that do what `shardrec-router` does on Kubernetes (read the topology,
annotate their pod); the real router's reporting is tested in tests/serving/test_router_app.py.
"""

from __future__ import annotations

from shardrec.api.topology import ROUTER_SERVING_ANNOTATION, RouterServing
from shardrec_operator.desired import labels, names
from shardrec_operator.reconcile import resources as kinds
from tests.controller.samples import NAME, NAMESPACE, body
from tests.controller.world import World

ROUTERS = ("recs-router-7d9-a", "recs-router-7d9-b")
FAST = {"keepPreviousLayouts": 0, "drainSeconds": 0, "rollbackWindowSeconds": 30}


def add_routers(world: World) -> None:
    for name in ROUTERS:
        world.api.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "labels": labels.component_labels(NAME, "router"),
                    "ownerReferences": [
                        {"kind": "ReplicaSet", "name": "recs-router-7d9", "controller": True}
                    ],
                },
                "spec": {"nodeName": "node-a"},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }
        )


def ack(world: World, *routers: str, prepare: bool = True, switch: bool = True) -> None:
    """What a real router does after reading the topology: load what is staged, serve what is
    active, and report both on its pod."""
    topology = world.topology()
    assert topology is not None
    for name in routers:
        pod = world.api.get(kinds.POD, NAMESPACE, name)
        assert pod is not None
        annotations = pod["metadata"].setdefault("annotations", {})
        before = RouterServing.model_validate_json(annotations.get(ROUTER_SERVING_ANNOTATION, "{}"))
        layout = topology.active.layout if switch and topology.active else before.layout
        # A router that applies the document loads what is staged, and drops it when nothing is.
        staged = topology.staged.layout if topology.staged else None
        prepared = staged if prepare else before.prepared
        report = RouterServing(
            layout=layout, prepared=None if prepared == layout else prepared, revision=topology.revision
        )
        annotations[ROUTER_SERVING_ANNOTATION] = report.model_dump_json()
        world.api.put(pod)


def acknowledged_world() -> World:
    world = World(body(rollout=FAST))
    add_routers(world)
    for _ in range(12):
        world.reconcile()
        ack(world, *ROUTERS)
    assert world.status["phase"] == "Ready", world.status
    assert world.status["routers"]["servingActive"] == 2
    return world


def test_a_new_cluster_is_ready_once_its_routers_serve_the_layout() -> None:
    world = acknowledged_world()
    lid = world.status["activeLayout"]
    assert [r["layout"] for r in world.status["routers"]["replicas"]] == [lid, lid]
    assert world.condition("Ready")["status"] == "True"


def test_the_old_layout_is_deleted_only_after_every_ready_router_switched() -> None:
    world = acknowledged_world()
    old = world.status["activeLayout"]
    world.change(index={"version": "v2"})
    for _ in range(20):  # 100 s: far past the rollback window; router b never applies the switch
        world.reconcile()
        ack(world, ROUTERS[0])
        ack(world, ROUTERS[1], switch=False)
    new = world.status["targetLayout"]
    assert world.active_layout() == new, "the switch was written (both routers prepared it)"
    assert world.status["activeLayout"] == old, "but not confirmed: router b still serves the old one"
    assert old in world.layouts_with_statefulsets(), "so the old layout is kept"
    assert world.status["routers"]["lagging"] == [ROUTERS[1]]
    blocked = {b["predicate"]: b["reason"] for b in world.status["blockedBy"]}
    assert ROUTERS[1] in blocked["wait_for_router_to_confirm_switch"]
    assert "RouterSwitchStalled" in world.event_reasons()
    for _ in range(12):
        world.reconcile()
        ack(world, *ROUTERS)
    assert world.status["activeLayout"] == new and world.layouts_with_statefulsets() == {new}
    assert "RouterSwitchCompleted" in world.event_reasons()


def test_the_switch_waits_until_every_ready_router_prepared_the_layout() -> None:
    world = acknowledged_world()
    old = world.status["activeLayout"]
    world.change(index={"version": "v2"})
    for _ in range(10):
        world.reconcile()
        ack(world, ROUTERS[0])  # router b neither prepares nor switches
    topology = world.topology()
    assert topology is not None and topology.active is not None and topology.staged is not None
    assert topology.active.layout == old and topology.staged.layout == world.status["targetLayout"]
    blocked = {b["predicate"]: b["reason"] for b in world.status["blockedBy"]}
    assert ROUTERS[1] in blocked["switch_only_when_every_router_prepared"]
    world.api.set_pod_ready(ROUTERS[1], NAMESPACE, False)  # it leaves the Service: it stops counting
    for _ in range(8):
        world.reconcile()
        ack(world, ROUTERS[0])
    assert world.status["activeLayout"] == world.status["targetLayout"]


def test_a_deleted_configmap_never_sends_the_revision_backwards() -> None:
    world = acknowledged_world()
    before = world.topology()
    assert before is not None
    recorded = (world.status["topologyEpoch"], world.status["topologyRevision"])
    assert recorded == (before.epoch, before.revision), "the status records the last write"
    world.api.objects.pop((kinds.CONFIG_MAP.kind, NAMESPACE, names.topology(NAME)))
    world.reconcile()
    again = world.topology()
    assert again is not None and again.order > before.order, (before.order, again.order)
    ack(world, *ROUTERS)
    world.change(index={"version": "v2"})
    for _ in range(14):
        world.reconcile()
        ack(world, *ROUTERS)
    assert world.status["activeVersion"] == "v2"
    final = world.topology()
    assert final is not None and final.order > again.order
