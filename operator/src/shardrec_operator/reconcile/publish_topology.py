"""Keep the router topology ConfigMap saying the right thing, in one write when it must change.

What the topology names as active: the layout of this pass's SwitchRouter if the planner issued
one; otherwise our own last write (expectations), re-asserted if someone else changed it;
otherwise what is stored. As staged: the layout of this pass's StageRouter (routers load it ahead
of the switch), else nothing. As canary: this pass's RouteCanary naming that staged layout (the
routers split traffic to it and report measurements on their pods), else nothing; a rolled-back
candidate is no longer staged, so the routers drop it. Endpoints list each shard's replicas, so
scaling refreshes them.
The document's `(epoch, revision)` continues from the stored one or from the status
(`fleet.topology_document`), so a deleted or corrupted ConfigMap never resets what routers accept.
"""

from __future__ import annotations

import time
from typing import Literal

from shardrec.api.topology import CanaryRoute, LayoutTopology, Topology
from shardrec.planning import EnsureShards, LayoutSpec, Plan, RouteCanary, StageRouter, SwitchRouter
from shardrec.planning.fleet import topology_document
from shardrec_operator.desired import labels, names
from shardrec_operator.desired.shard_tls import statefulset_serves_tls
from shardrec_operator.desired.topology_configmap import (
    build_layout_topology,
    build_topology_configmap,
    replica_zones,
)
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.observe import layout_spec_of, stored_topology
from shardrec_operator.reconcile.session import Session


def _known_layout(session: Session, layout_id: str) -> LayoutSpec | None:
    for obj in session.children.of_layout(layout_id):
        spec = layout_spec_of(obj)
        if spec is not None:
            return spec
    return None


def _replicas_by_shard(session: Session, layout: LayoutSpec, plan: Plan) -> dict[int, int]:
    """Replica counts the layout is being given this pass, else what its StatefulSets ask for."""
    for action in plan.of_type(EnsureShards):
        if action.layout_id == layout.id:
            return {shard: action.replicas_of(shard) for shard in range(layout.shards)}
    counts = dict.fromkeys(range(layout.shards), session.cluster.spec.replicas_per_shard)
    for statefulset in session.children.of_layout(layout.id):
        shard = (statefulset["metadata"].get("labels") or {}).get(labels.SHARD, "")
        if statefulset["kind"] == kinds.STATEFUL_SET.kind and shard.isdigit():
            counts[int(shard)] = int(statefulset.get("spec", {}).get("replicas", 0))
    return counts


def _tls_shards(session: Session, layout: LayoutSpec) -> set[int]:
    """The shards of `layout` whose StatefulSet serves HTTPS (`shard_tls.statefulset_serves_tls`)."""
    name = session.cluster.metadata.name
    return {
        shard
        for shard in range(layout.shards)
        if statefulset_serves_tls(
            session.children.get(kinds.STATEFUL_SET, names.shard_set(name, layout.id, shard))
        )
    }


def desired_active(
    session: Session, plan: Plan, stored: Topology | None
) -> LayoutTopology | Literal["keep"] | None:
    """The layout topology to store, None for "no layout", or "keep" to leave the stored one."""
    switches = plan.of_type(SwitchRouter)
    stored_id = stored.active.layout if stored is not None and stored.active is not None else None
    if switches:
        layout = switches[-1].layout
    else:
        wanted = session.expectations.written_layout(session.cluster.metadata.uid, default=stored_id)
        if wanted is None:
            return None
        known = _known_layout(session, wanted)
        if known is None:
            return "keep"  # a layout we cannot describe any more: never guess its endpoints
        layout = known
    return build_layout_topology(
        session.cluster,
        layout,
        _replicas_by_shard(session, layout, plan),
        tls_shards=_tls_shards(session, layout),
        zones=replica_zones(session.children.shard_pods()),
    )


def desired_staged(session: Session, plan: Plan) -> LayoutTopology | None:
    """The layout routers should prepare: this pass's StageRouter unless it also switches to it."""
    switching = {action.layout_id for action in plan.of_type(SwitchRouter)}
    for action in plan.of_type(StageRouter):
        if action.layout_id not in switching:
            return build_layout_topology(
                session.cluster,
                action.layout,
                _replicas_by_shard(session, action.layout, plan),
                tls_shards=_tls_shards(session, action.layout),
                zones=replica_zones(session.children.shard_pods()),
            )
    return None


def desired_canary(plan: Plan) -> CanaryRoute | None:
    """The canary section: this pass's RouteCanary with a layout (`fleet.topology_document` drops
    it unless that layout is the staged one), else none."""
    for action in plan.of_type(RouteCanary):
        if action.layout is not None:
            return CanaryRoute(
                layout=action.layout.id,
                step=action.step,
                weight=action.weight,
                sample_rate=action.sample_rate,
                max_inflight=action.max_inflight,
            )
    return None


def sync_topology(session: Session, plan: Plan, floor: tuple[int, int] | None) -> Topology | None:
    """Write the topology ConfigMap when it must change; returns the document written, if any.

    `floor`: the `(epoch, revision)` the status recorded for our last write (None if none)."""
    cluster_name = session.cluster.metadata.name
    stored = stored_topology(session.children, cluster_name)
    active = desired_active(session, plan, stored)
    if active == "keep":
        return None
    uid = session.cluster.metadata.uid
    document = topology_document(
        stored,
        active=active,
        staged=desired_staged(session, plan),
        floor=floor,
        now_ms=int(time.time() * 1000),
        canary=desired_canary(plan),
    )
    if document is not None:
        configmap = build_topology_configmap(session.cluster, document)
        session.apply(
            configmap, observed=session.children.get(kinds.CONFIG_MAP, names.topology(cluster_name))
        )
    session.expectations.record_topology_write(uid, active.layout if active else None)
    return document
