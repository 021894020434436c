"""Per shard of a layout: a StatefulSet of shard-server replicas, its headless Service and its PDB.

Readiness is `/readyz` (index loaded and warmed), liveness `/healthz`, and a startup probe gives a
large index time to load before liveness counts. `podManagementPolicy: Parallel` starts every
replica at once: replicas are interchangeable readers of one immutable artifact, so ordered
start-up would only slow a rollout down.

`updateStrategy: OnDelete`: a template change (image, resources, drain, annotations) replaces no
pod by itself; the planner rolls it one shard and one pod at a time (`shardrec.planning.rolls`).

With item writes (`spec.writes.enabled`, recorded in the layout: `LayoutSpec.write_log`) every
replica also gets its own ReadWriteOnce claim for its write log, from `volumeClaimTemplates`
(`write-log-<statefulset>-<ordinal>`), mounted at `WRITE_LOG_MOUNT` and passed as
`--write-log-dir`. A claim per ordinal is what the log needs: the log of replica N belongs to
replica N, and a pod deleted and recreated (template roll, failover, eviction) gets the same
claim back and replays it; no ReadWriteMany storage is needed. The claim's life:

    replica pod deleted/recreated -> same claim, log replayed        (ordinal kept)
    StatefulSet scaled down       -> claims of the removed ordinals deleted (`whenScaled: Delete`:
                                     a follower's log holds nothing its leader's does not, and
                                     ordinal 0, the leader, is never scaled away)
    layout deleted (DeleteLayout) -> claims deleted with the StatefulSet (`whenDeleted: Delete`)

`whenDeleted: Delete` is deliberate: a layout's logs go exactly when the planner deletes the
layout, and the planner deletes a layout that logged writes only once nothing needs them: after
writes were turned off, or after a carrier carried them into the next layout and reported done
(`keep_carry_source_until_done`: the claims must not go while the carrier still forwards what
the old leaders logged), and its rollback window passed. volumeClaimTemplates cannot
change on a StatefulSet: that is why the write-log shape is part of the layout (a new layout, so
new StatefulSets, whenever it changes) and never read from the current spec here.

The PodDisruptionBudget is `maxUnavailable: 1`, never `minAvailable: replicas`: a drain can always
evict one pod of a shard, including the only pod of a single-replica shard. That keeps node drains
and cluster upgrades from deadlocking (the Strimzi and ClickHouse bug); the price, a brief outage of
a single-replica shard during a drain, is the honest consequence of running one replica.
"""

from __future__ import annotations

from typing import Any

from shardrec.api import v1alpha1 as api
from shardrec.api.commands import SHARD_PROGRAM, shard_arguments
from shardrec.api.credentials import ACCEPTED_KEY
from shardrec.planning import LayoutSpec
from shardrec_operator.desired import artifacts, labels, names, pods, shard_tls, shard_token
from shardrec_operator.desired.meta import Manifest, manifest
from shardrec_operator.desired.pod_template import merge_pod_template

STARTUP_PROBE_BUDGET_SECONDS = 600
SHARD_CONTAINER = "shard"
WRITE_LOG_VOLUME = "write-log"
"""The claim template's name (claims are `write-log-<statefulset>-<ordinal>`) and the volume's."""
WRITE_LOG_MOUNT = "/var/lib/shardrec/write-log"
WRITE_LOG_RETENTION = {"whenDeleted": "Delete", "whenScaled": "Delete"}
"""persistentVolumeClaimRetentionPolicy of a write-log layout (why: the module docstring)."""


def shard_command(
    cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int, *, tls: bool = False
) -> list[str]:
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
            admin_token_file=shard_token.token_file(ACCEPTED_KEY),
            write_log_dir=WRITE_LOG_MOUNT if layout.write_log else None,
            tls_cert=shard_tls.tls_file(shard_tls.CERT) if tls else None,
            tls_key=shard_tls.tls_file(shard_tls.KEY) if tls else None,
        ),
    ]


def _shard_container(
    cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int, tls: bool
) -> dict[str, Any]:
    spec = cluster.spec
    period = 5
    mounts = [_layout_mount(spec), pods.tmp_mount(), shard_token.token_mount()]
    if layout.write_log:
        mounts.append({"name": WRITE_LOG_VOLUME, "mountPath": WRITE_LOG_MOUNT})
    if tls:
        mounts.append(shard_tls.tls_mount())
    return {
        "name": SHARD_CONTAINER,
        **pods.image_fields(spec),
        "command": shard_command(cluster, layout, shard, tls=tls),
        "ports": [pods.http_port(tls=tls)],
        "startupProbe": pods.http_probe(
            "/healthz", period=period, failures=STARTUP_PROBE_BUDGET_SECONDS // period, tls=tls
        ),
        "readinessProbe": pods.http_probe("/readyz", period=period, failures=2, tls=tls),
        "livenessProbe": pods.http_probe("/healthz", period=10, failures=6, tls=tls),
        "lifecycle": pods.shard_pre_stop(tls=tls),
        "resources": pods.resources(spec.resources.shard),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
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


def shard_pod_template(
    cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int, *, tls: bool = False
) -> dict[str, Any]:
    """The operator's pod template of a shard, before `spec.podTemplates.shard` is merged over it."""
    spec = cluster.spec
    name = cluster.metadata.name
    selector = labels.shard_selector(name, layout.id, shard)
    volumes = [*_volumes(spec), shard_token.token_volume(name, ACCEPTED_KEY)]
    if tls:
        volumes.append(shard_tls.tls_volume(name, (shard_tls.CERT, shard_tls.KEY)))
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.shard_service_account(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": pods.termination_grace_seconds(spec),
        "securityContext": pods.pod_security_context(),
        **pods.spread_and_anti_affinity(selector),
        "containers": [_shard_container(cluster, layout, shard, tls)],
        "volumes": volumes,
    }
    if artifacts.object_store(spec) is not None:
        pod_spec["initContainers"] = [artifacts.fetch_init_container(cluster, layout.id, shard)]
    template_meta: dict[str, Any] = {"labels": labels.shard_labels(name, layout, shard)}
    annotations = pods.scrape_annotations(spec, tls=tls)
    if annotations:
        template_meta["annotations"] = annotations
    return {"metadata": template_meta, "spec": pod_spec}


def write_log_claim_template(
    cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int
) -> dict[str, Any]:
    """The per-replica ReadWriteOnce claim of a write-log layout, sized as the layout recorded it."""
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": layout.write_log_size}},
    }
    if layout.write_log_storage_class:
        claim["storageClassName"] = layout.write_log_storage_class
    return {
        "metadata": {
            "name": WRITE_LOG_VOLUME,
            "labels": labels.shard_labels(cluster.metadata.name, layout, shard),
        },
        "spec": claim,
    }


def build_shard_statefulset(
    cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int, replicas: int, *, tls: bool = False
) -> Manifest:
    """Shard `shard` of `layout`, with `replicas` replicas (the planner's EnsureShards count);
    `tls`: its pods serve HTTPS (`shard_tls.statefulset_serves_tls`, recorded on it)."""
    name = cluster.metadata.name
    selector = labels.shard_selector(name, layout.id, shard)
    claims: dict[str, Any] = {}
    if layout.write_log:
        claims = {
            "volumeClaimTemplates": [write_log_claim_template(cluster, layout, shard)],
            "persistentVolumeClaimRetentionPolicy": WRITE_LOG_RETENTION,
        }
    template = merge_pod_template(
        shard_pod_template(cluster, layout, shard, tls=tls),
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
            **claims,
        },
        annotations={
            **labels.layout_annotations(layout),
            shard_tls.TLS_ANNOTATION: "true" if tls else "false",
        },
    )


def build_shard_service(
    cluster: api.RecommenderCluster, layout: LayoutSpec, shard: int, *, tls: bool = False
) -> Manifest:
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
                    "name": pods.port_name(tls),
                    "port": pods.HTTP_PORT,
                    "targetPort": pods.port_name(tls),
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


def shard_replica_url(
    cluster: api.RecommenderCluster, layout_id: str, shard: int, ordinal: int, *, tls: bool = False
) -> str:
    """Stable per-replica URL through the headless Service (resolves once the pod has an address)."""
    name = cluster.metadata.name
    service = names.shard_set(name, layout_id, shard)
    pod = names.shard_pod(name, layout_id, shard, ordinal)
    scheme = "https" if tls else "http"
    return f"{scheme}://{pod}.{service}.{cluster.metadata.namespace}.svc:{pods.HTTP_PORT}"
