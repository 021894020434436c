"""The NetworkPolicy that lets only this cluster's router reach its shard pods.

Shard pods accept ingress on their HTTP port from router pods of the same cluster, and from
nothing else. While the cluster may carry item writes (`carriers`: writes on, or a carrier still
running), its carrier pods too: they read the old leaders' logs, fence them, and send to the new
shards (`desired.carry`). The one exception is opt-in: with `monitoring.serviceMonitor` on, pods labelled
`app.kubernetes.io/name: prometheus` (the Prometheus Operator's label) in any namespace may scrape
them too, or the ServiceMonitor we create could never work. Egress is not restricted.
"""

from __future__ import annotations

from typing import Any

from shardrec.api import v1alpha1 as api
from shardrec_operator.desired import labels, names, pods
from shardrec_operator.desired.meta import Manifest, manifest

PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}


def _http_port() -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": pods.HTTP_PORT}]


def build_shard_network_policy(cluster: api.RecommenderCluster, *, carriers: bool = False) -> Manifest:
    name = cluster.metadata.name
    sources = [{"podSelector": {"matchLabels": labels.component_selector(name, "router")}}]
    if carriers:
        sources.append({"podSelector": {"matchLabels": labels.component_selector(name, "carrier")}})
    ingress: list[dict[str, Any]] = [{"from": sources, "ports": _http_port()}]
    if cluster.spec.monitoring.service_monitor:
        ingress.append(
            {
                "from": [
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)}}
                ],
                "ports": _http_port(),
            }
        )
    return manifest(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        cluster,
        names.shard_network_policy(name),
        labels.component_labels(name, "shard"),
        spec={
            "podSelector": {"matchLabels": labels.component_selector(name, "shard")},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    )
