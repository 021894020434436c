"""The router: Deployment, Service, its config ConfigMap and the optional HorizontalPodAutoscaler.

The router reads its topology from a ConfigMap it *watches through the API*
(`--topology-configmap NS/NAME`), not from a mounted file: a mounted ConfigMap lags up to a
minute, a watch delivers a switch in well under a second. Its own settings (RouterSpec +
AuthSpec) are a mounted file; a hash of them on the pod template rolls the Deployment when they
change. With autoscaling on, `replicas` is left out of the applied Deployment so the HPA owns it
(server-side apply would otherwise fight the autoscaler on every reconcile).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from shardrec.api import v1alpha1 as api
from shardrec.api.commands import ROUTER_PROGRAM, RouterFlags, env_name, router_arguments
from shardrec.api.credentials import SEND_KEY
from shardrec_operator.desired import artifacts, labels, names, pods, shard_tls, shard_token
from shardrec_operator.desired.meta import Manifest, manifest
from shardrec_operator.desired.pod_template import merge_pod_template

ROUTER_CONFIG_KEY: Final = "router.json"
CONFIG_MOUNT: Final = "/etc/shardrec/router"
API_KEYS_MOUNT: Final = "/etc/shardrec/api-keys"
API_KEYS_FILE: Final = "api-keys"
CONFIG_HASH_ANNOTATION: Final = "shardrec.io/router-config-hash"
ROUTER_CONTAINER: Final = "router"


def router_config_json(spec: api.RecommenderClusterSpec) -> str:
    """`{"router": ..., "auth": ..., "writes": ...}` in wire form: what `shardrec-router
    --router-config` reads. `writes` (the ack policy) only while `spec.writes.enabled`: with writes
    off no shard keeps a log, so the policy is moot, and leaving it out keeps the config (and its
    hash in the router pods, which restarts them) exactly as before writes existed."""
    document: dict[str, Any] = {
        "router": spec.router.model_dump(by_alias=True, mode="json"),
        # apiKeysFile is the local runtime's: in Kubernetes the keys come from the mounted Secret.
        "auth": spec.auth.model_dump(by_alias=True, mode="json", exclude={"api_keys_file"}),
    }
    if spec.writes.enabled:
        document["writes"] = {"ack": spec.writes.ack}
    return json.dumps(document, sort_keys=True, indent=2) + "\n"


def build_router_config(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        "v1",
        "ConfigMap",
        cluster,
        names.router_config(name),
        labels.component_labels(name, "router"),
        data={ROUTER_CONFIG_KEY: router_config_json(cluster.spec)},
    )


def router_endpoint(cluster: api.RecommenderCluster) -> str:
    """The URL clients call (the router Service)."""
    meta = cluster.metadata
    return f"http://{names.router(meta.name)}.{meta.namespace}.svc:{pods.HTTP_PORT}"


def router_command(cluster: api.RecommenderCluster) -> list[str]:
    meta = cluster.metadata
    keys = cluster.spec.auth.api_keys_secret_ref is not None
    return [
        ROUTER_PROGRAM,
        *router_arguments(
            topology_configmap=f"{meta.namespace}/{names.topology(meta.name)}",
            router_config=f"{CONFIG_MOUNT}/{ROUTER_CONFIG_KEY}",
            host="0.0.0.0",
            port=pods.HTTP_PORT,
            api_keys_file=f"{API_KEYS_MOUNT}/{API_KEYS_FILE}" if keys else None,
            shard_token_file=shard_token.token_file(SEND_KEY),
            shard_ca=shard_tls.tls_file(shard_tls.CA_CERT),
            shard_tls_name=shard_tls.server_name(cluster),
            # One worker process per CPU of resources.router (limit, else request); without
            # either, the router counts the CPUs its cgroup quota allows itself.
            workers=pods.cpu_threads(cluster.spec.resources.router),
        ),
    ]


def _volumes_and_mounts(cluster: api.RecommenderCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = cluster.spec
    volumes = [
        pods.tmp_volume(),
        {"name": "router-config", "configMap": {"name": names.router_config(cluster.metadata.name)}},
    ]
    mounts = [
        pods.tmp_mount(),
        {"name": "router-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
    ]
    volumes.append(shard_token.token_volume(cluster.metadata.name, SEND_KEY))
    mounts.append(shard_token.token_mount())
    volumes.append(shard_tls.tls_volume(cluster.metadata.name, (shard_tls.CA_CERT,)))
    mounts.append(shard_tls.tls_mount())
    if artifacts.object_store(spec) is None:
        # A PVC store: the router reads each layout's user table from the claim. With an object
        # store nothing is mounted: the topology names the layout's s3:// location instead.
        volumes.insert(0, pods.store_volume(spec, read_only=True))
        mounts.insert(0, pods.store_mount(spec, read_only=True))
    secret = spec.auth.api_keys_secret_ref
    if secret is not None:
        volumes.append(
            {
                "name": "api-keys",
                "secret": {"secretName": secret.name, "items": [{"key": secret.key, "path": API_KEYS_FILE}]},
            }
        )
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
    return volumes, mounts


def _object_store_env(spec: api.RecommenderClusterSpec) -> list[dict[str, Any]]:
    """With an object store, how the router reaches it (it reads each layout's user table from
    the layout's s3:// location); nothing with a PVC store."""
    if artifacts.object_store(spec) is None:
        return []
    return artifacts.connection_env(spec) + artifacts.credential_env(spec)


def router_pod_template(cluster: api.RecommenderCluster) -> dict[str, Any]:
    """The operator's router pod template, before `spec.podTemplates.router` is merged over it."""
    spec = cluster.spec
    name = cluster.metadata.name
    selector = labels.component_selector(name, "router")
    pod_labels = labels.component_labels(name, "router")
    config_hash = hashlib.sha256(router_config_json(spec).encode()).hexdigest()[:16]
    volumes, mounts = _volumes_and_mounts(cluster)
    container: dict[str, Any] = {
        "name": ROUTER_CONTAINER,
        **pods.image_fields(spec),
        "command": router_command(cluster),
        # The router reports what it serves in its own pod's annotations (RouterServing): the
        # operator retires an old layout only once every ready router has switched.
        "env": [
            {
                "name": env_name(RouterFlags.PROCESS, RouterFlags.POD_NAME),
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            {
                "name": env_name(RouterFlags.PROCESS, RouterFlags.POD_NAMESPACE),
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            # The router prefers shard replicas in its own zone: the label Kubernetes (1.33+) copies
            # from the node onto the pod; empty (no preference) where it does not.
            {
                "name": env_name(RouterFlags.PROCESS, RouterFlags.ZONE),
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{pods.ZONE_KEY}']"}},
            },
            *_object_store_env(spec),
        ],
        "ports": [pods.http_port()],
        "readinessProbe": pods.http_probe("/readyz", period=5, failures=2),
        "livenessProbe": pods.http_probe("/healthz", period=10, failures=6),
        "resources": pods.resources(spec.resources.router),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
    }
    pre_stop = pods.router_pre_stop(spec)
    if pre_stop is not None:
        container["lifecycle"] = pre_stop
    pod_spec = {
        "serviceAccountName": names.router(name),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": pods.termination_grace_seconds(spec),
        "securityContext": pods.pod_security_context(),
        **pods.spread_and_anti_affinity(selector),
        "containers": [container],
        "volumes": volumes,
    }
    return {
        "metadata": {
            "labels": pod_labels,
            "annotations": {CONFIG_HASH_ANNOTATION: config_hash, **pods.scrape_annotations(spec)},
        },
        "spec": pod_spec,
    }


def build_router_deployment(cluster: api.RecommenderCluster) -> Manifest:
    spec = cluster.spec
    name = cluster.metadata.name
    selector = labels.component_selector(name, "router")
    template = merge_pod_template(
        router_pod_template(cluster), spec.pod_templates.router, container=ROUTER_CONTAINER, selector=selector
    )
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # Never fewer ready routers than asked for while rolling: surge one, then retire one.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": template,
    }
    if spec.router.autoscaling is None:
        deployment_spec = {"replicas": spec.router.replicas, **deployment_spec}
    return manifest(
        "apps/v1",
        "Deployment",
        cluster,
        names.router(name),
        labels.component_labels(name, "router"),
        spec=deployment_spec,
    )


def build_router_service(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        "v1",
        "Service",
        cluster,
        names.router(name),
        labels.component_labels(name, "router"),
        spec={
            "type": "ClusterIP",
            "selector": labels.component_selector(name, "router"),
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


def build_router_pdb(cluster: api.RecommenderCluster) -> Manifest:
    """`maxUnavailable: 1`, as for shards: a drain evicts routers one at a time and never deadlocks,
    even with a single router (whose eviction is then a brief outage, the price of one replica)."""
    name = cluster.metadata.name
    return manifest(
        "policy/v1",
        "PodDisruptionBudget",
        cluster,
        names.router(name),
        labels.component_labels(name, "router"),
        spec={"maxUnavailable": 1, "selector": {"matchLabels": labels.component_selector(name, "router")}},
    )


def build_router_hpa(cluster: api.RecommenderCluster) -> Manifest | None:
    """The router's HPA, or None when `spec.router.autoscaling` is absent."""
    autoscaling = cluster.spec.router.autoscaling
    if autoscaling is None:
        return None
    name = cluster.metadata.name
    return manifest(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        cluster,
        names.router(name),
        labels.component_labels(name, "router"),
        spec={
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": names.router(name)},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.target_cpu_utilization_percent,
                        },
                    },
                }
            ],
        },
    )
