"""The router topology: which layout serves, and the URL of every replica of each of its shards.

Replicas are listed by their stable StatefulSet DNS names through the headless Service, not by
pod IP, so the topology changes only when the serving layout or its replica count changes, never
when a pod restarts. The router probes every replica's `/readyz` and skips an unready one (retry
on another replica, readiness probing), which is how it stops sending to unready endpoints
without the operator rewriting the topology on every readiness flap. Names resolve from a pod's
first address on (`publishNotReadyAddresses`), so a starting pod is never cached as unknown.

Each replica carries its zone when its pod says it: the `topology.kubernetes.io/zone` label that
Kubernetes (1.33+, PodTopologyLabelsAdmission) copies from the node onto a scheduled pod. Routers
read their own zone from the same label (downward API) and prefer replicas in it; with the label
absent on either side, there is no preference. A pod rescheduled to another zone is a topology
change (the same name, a new zone).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from shardrec.api import v1alpha1 as api
from shardrec.api.topology import (
    TOPOLOGY_CONFIGMAP_KEY,
    LayoutTopology,
    ReplicaEndpoint,
    ShardEndpoints,
    Topology,
)
from shardrec.planning import LayoutSpec
from shardrec_operator.desired import artifacts, labels, names
from shardrec_operator.desired import pods as pods_module
from shardrec_operator.desired.meta import Manifest, manifest
from shardrec_operator.desired.shard import shard_replica_url


def replica_zones(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Pod name -> zone, for pods labelled with one (`pods.ZONE_KEY`). Pure."""
    zones = {}
    for pod in pods:
        metadata = pod.get("metadata", {})
        zone = (metadata.get("labels") or {}).get(pods_module.ZONE_KEY)
        if zone:
            zones[str(metadata.get("name", ""))] = str(zone)
    return zones


def build_layout_topology(
    cluster: api.RecommenderCluster,
    layout: LayoutSpec,
    replicas_by_shard: Mapping[int, int],
    *,
    tls_shards: Collection[int] = (),
    zones: Mapping[str, str] | None = None,
) -> LayoutTopology:
    """`layout` as the router sees it; `replicas_by_shard` is each shard's replica count,
    `tls_shards` the shards whose pods serve HTTPS (`shard_tls.statefulset_serves_tls`), `zones`
    the zone of each shard pod known to have one (`replica_zones`)."""
    zones = zones or {}
    name = cluster.metadata.name
    endpoints = [
        ShardEndpoints(
            shard=shard,
            replicas=[
                ReplicaEndpoint(
                    name=names.shard_pod(name, layout.id, shard, ordinal),
                    url=shard_replica_url(cluster, layout.id, shard, ordinal, tls=shard in tls_shards),
                    zone=zones.get(names.shard_pod(name, layout.id, shard, ordinal)),
                )
                for ordinal in range(replicas_by_shard.get(shard, 0))
            ],
        )
        for shard in range(layout.shards)
    ]
    return LayoutTopology(
        layout=layout.id,
        version=layout.version,
        shards=layout.shards,
        dimension=layout.dimension,
        metric=layout.metric,
        artifact_dir=artifacts.layout_location(cluster, layout.id),
        endpoints=endpoints,
        ef_search=cluster.spec.index.hnsw.ef_search,
    )


def topology_json(topology: Topology) -> str:
    return topology.model_dump_json(indent=2) + "\n"


def build_topology_configmap(cluster: api.RecommenderCluster, topology: Topology) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        "v1",
        "ConfigMap",
        cluster,
        names.topology(name),
        labels.component_labels(name, "router"),
        data={TOPOLOGY_CONFIGMAP_KEY: topology_json(topology)},
    )
