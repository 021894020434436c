"""Keep the router topology ConfigMap saying the right thing, in one write when it must change.

What the topology names: the layout of this pass's SwitchRouter if the planner issued one;
otherwise our own last write (expectations), re-asserted if someone else changed it; otherwise
what is stored. Its endpoints list each shard's replicas, so scaling the serving layout
refreshes them. `revision` grows with every write so routers can tell a newer document.
"""

from __future__ import annotations

from typing import Literal

from shardrec.api.topology import LayoutTopology, Topology
from shardrec.planning import EnsureShards, LayoutSpec, Plan, SwitchRouter
from shardrec_operator.desired import labels, names
from shardrec_operator.desired.topology_configmap import build_layout_topology, build_topology_configmap
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
            return dict.fromkeys(range(layout.shards), action.replicas)
    counts = dict.fromkeys(range(layout.shards), session.cluster.spec.replicas_per_shard)
    for statefulset in session.children.of_layout(layout.id):
        shard = (statefulset["metadata"].get("labels") or {}).get(labels.SHARD, "")
        if statefulset["kind"] == kinds.STATEFUL_SET.kind and shard.isdigit():
            counts[int(shard)] = int(statefulset.get("spec", {}).get("replicas", 0))
    return counts


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
    return build_layout_topology(session.cluster, layout, _replicas_by_shard(session, layout, plan))


def sync_topology(session: Session, plan: Plan) -> None:
    cluster_name = session.cluster.metadata.name
    stored = stored_topology(session.children, cluster_name)
    active = desired_active(session, plan, stored)
    if active == "keep":
        return
    uid = session.cluster.metadata.uid
    if stored is not None and stored.active == active:
        session.expectations.record_topology_write(uid, active.layout if active else None)
        return
    revision = stored.revision + 1 if stored is not None else 0
    configmap = build_topology_configmap(session.cluster, Topology(revision=revision, active=active))
    session.apply(configmap, observed=session.children.get(kinds.CONFIG_MAP, names.topology(cluster_name)))
    session.expectations.record_topology_write(uid, active.layout if active else None)
