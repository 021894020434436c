"""The optional ServiceMonitor (Prometheus Operator) that scrapes the router and every shard.

It selects this cluster's Services by label, so shard Services of new layouts are picked up
without touching it. Applying it needs the `monitoring.coreos.com` CRDs; without them the
operator reports the failure in an Event and carries on.
"""

from __future__ import annotations

from shardrec.api import v1alpha1 as api
from shardrec_operator.desired import labels, names, pods, shard_tls
from shardrec_operator.desired.meta import Manifest, manifest


def build_service_monitor(cluster: api.RecommenderCluster) -> Manifest | None:
    """The ServiceMonitor, or None when `spec.monitoring.serviceMonitor` is off."""
    if not cluster.spec.monitoring.service_monitor:
        return None
    name = cluster.metadata.name
    # The alert rules group by (namespace, cluster): give every series the cluster's name from
    # the pod label.
    relabelings = [
        {"sourceLabels": ["__meta_kubernetes_pod_label_shardrec_io_cluster"], "targetLabel": "cluster"}
    ]
    return manifest(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        cluster,
        names.service_monitor(name),
        labels.cluster_labels(name),
        spec={
            "selector": {"matchLabels": labels.cluster_labels(name)},
            "endpoints": [
                {
                    "port": pods.HTTP_PORT_NAME,
                    "path": "/metrics",
                    "interval": "30s",
                    "relabelings": relabelings,
                },
                # Shards serving TLS name their port `https`; verified with the cluster's CA.
                {
                    "port": pods.HTTPS_PORT_NAME,
                    "scheme": "https",
                    "path": "/metrics",
                    "interval": "30s",
                    "tlsConfig": {
                        "ca": {"secret": {"name": names.shard_tls_secret(name), "key": shard_tls.CA_CERT}},
                        "serverName": shard_tls.server_name(cluster),
                    },
                    "relabelings": relabelings,
                },
            ],
        },
    )
