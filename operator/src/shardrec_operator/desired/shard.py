"""Per shard of a layout: a StatefulSet of shard-server replicas, its headless Service and its PDB.

Readiness is `/readyz` (index loaded and warmed), liveness `/healthz`, and a startup probe gives a
large index time to load before liveness counts. `podManagementPolicy: Parallel` starts every
replica at once: replicas are interchangeable readers of one immutable artifact, so ordered
start-up would only slow a rollout down.

`updateStrategy: OnDelete`: a template change (image, resources, drain, annotations) replaces no
pod by itself; the planner rolls it one shard and one pod at a time (`shardrec.planning.rolls`).

The PodDisruptionBudget is `maxUnavailable: 1`, never `minAvailable: replicas`: a drain can always
evict one pod of a shard, including the only pod of a single-replica shard. That keeps node drains
and cluster upgrades from deadlocking (the Strimzi and ClickHouse bug); the price, a brief outage of
a single-replica shard during a drain, is the honest consequence of running one replica.
"""

from __future__ import annotations

from typing import Any

from shardrec.api import v1alpha1 as api
from shardrec.api.commands import SHARD_PROGRAM, shard_arguments
from shardrec.planning import LayoutSpec
from shardrec_operator.desired import artifacts, labels, names, pods
from shardrec_operator.desired.meta import Manifest, manifest
from shardrec_operator.desired.pod_template import merge_pod_template

STARTUP_PROBE_BUDGET_SECONDS = 600
SHARD_CONTAINER = "shard"


def shard_command(cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int) -> list[str]:
    on_object_store = artifacts.object_store(cluster.spec) is not None
    return [
        SHARD_PROGRAM,
        *shard_arguments(
            layout_dir=(
                artifacts.LAYOUT_MOUNT
                if on_object_store
                else pods.layout_dir(cluster.metadata.name, layout.id)
            ),
            shard=shard,
            host="0.0.0.0",
            port=pods.HTTP_PORT,
            search_threads=pods.cpu_threads(cluster.spec.resources.shard),
            drain_seconds=cluster.spec.rollout.drain_seconds,
        ),
    ]


def _shard_container(cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int) -> dict[str, Any]:
    spec = cluster.spec
    period = 5
    return {
        "name": SHARD_CONTAINER,
        **pods.image_fields(spec),
        "command": shard_command(cluster, layout, shard),
        "ports": [pods.http_port()],
        "startupProbe": pods.http_probe(
            "/healthz", period=period, failures=STARTUP_PROBE_BUDGET_SECONDS // period
        ),
        "readinessProbe": pods.http_probe("/readyz", period=period, failures=2),
        "livenessProbe": pods.http_probe("/healthz", period=10, failures=6),
        "lifecycle": pods.shard_pre_stop(),
        "resources": pods.resources(spec.resources.shard),
        "securityContext": pods.container_security_context(),
        "volumeMounts": [_layout_mount(spec), pods.tmp_mount()],
    }


def _layout_mount(spec: api.RecommenderClusterSpec) -> dict[str, Any]:
    """The index store claim, or (object store) the local copy the init container made."""
    if artifacts.object_store(spec) is None:
        return pods.store_mount(spec, read_only=True)
    return {"name": artifacts.LAYOUT_VOLUME, "mountPath": artifacts.LAYOUT_MOUNT, "readOnly": True}


def _volumes(spec: api.RecommenderClusterSpec) -> list[dict[str, Any]]:
    if artifacts.object_store(spec) is None:
        return [pods.store_volume(spec, read_only=True), pods.tmp_volume()]
    return [artifacts.layout_volume(spec), pods.tmp_volume()]


def shard_pod_template(cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int) -> dict[str, Any]:
    """The operator's pod template of a shard, before `spec.podTemplates.shard` is merged over it."""
    spec = cluster.spec
    name = cluster.metadata.name
    selector = labels.shard_selector(name, layout.id, shard)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.shard_service_account(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": pods.termination_grace_seconds(spec),
        "securityContext": pods.pod_security_context(),
        **pods.spread_and_anti_affinity(selector),
        "containers": [_shard_container(cluster, layout, shard)],
        "volumes": _volumes(spec),
    }
    if artifacts.object_store(spec) is not None:
        pod_spec["initContainers"] = [artifacts.fetch_init_container(cluster, layout.id, shard)]
    template_meta: dict[str, Any] = {"labels": labels.shard_labels(name, layout, shard)}
    annotations = pods.scrape_annotations(spec)
    if annotations:
        template_meta["annotations"] = annotations
    return {"metadata": template_meta, "spec": pod_spec}


def build_shard_statefulset(
    cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int, replicas: int
) -> Manifest:
    """Shard `shard` of `layout`, with `replicas` replicas (the planner's EnsureShards count)."""
    name = cluster.metadata.name
    selector = labels.shard_selector(name, layout.id, shard)
    template = merge_pod_template(
        shard_pod_template(cluster, layout, shard),
        cluster.spec.pod_templates.shard,
        container=SHARD_CONTAINER,
        selector=selector,
    )
    return manifest(
        "apps/v1",
        "StatefulSet",
        cluster,
        names.shard_set(name, layout.id, shard),
        labels.shard_labels(name, layout, shard),
        spec={
            "replicas": replicas,
            "serviceName": names.shard_set(name, layout.id, shard),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": selector},
            "template": template,
        },
        annotations=labels.layout_annotations(layout),
    )


def build_shard_service(cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int) -> Manifest:
    """Headless: gives each replica a stable DNS name, published as soon as the pod has an address.

    Unready pods are published on purpose (`publishNotReadyAddresses`): routers probe `/readyz`
    themselves and send nothing to an unready replica, and a name that resolves before the pod is
    Ready is not cached as "no such name" by the cluster DNS while the pod starts (measured on the
    real node: with unready pods hidden, each shard's pod roll had a ~3 s window of 503s)."""
    name = cluster.metadata.name
    return manifest(
        "v1",
        "Service",
        cluster,
        names.shard_set(name, layout.id, shard),
        labels.shard_labels(name, layout, shard),
        spec={
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels.shard_selector(name, layout.id, shard),
            "ports": [
                {
                    "name": pods.HTTP_PORT_NAME,
                    "port": pods.HTTP_PORT,
                    "targetPort": pods.HTTP_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    )


def build_shard_pdb(cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        "policy/v1",
        "PodDisruptionBudget",
        cluster,
        names.shard_set(name, layout.id, shard),
        labels.shard_labels(name, layout, shard),
        spec={
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels.shard_selector(name, layout.id, shard)},
        },
    )


def shard_replica_url(cluster: api.RecommenderCluster, layout_id: str, shard: int, ordinal: int) -> str:
    """Stable per-replica URL through the headless Service (resolves once the pod has an address)."""
    name = cluster.metadata.name
    service = names.shard_set(name, layout_id, shard)
    pod = names.shard_pod(name, layout_id, shard, ordinal)
    return f"http://{pod}.{service}.{cluster.metadata.namespace}.svc:{pods.HTTP_PORT}"
