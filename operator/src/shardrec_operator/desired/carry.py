"""The carrier of a carrying layout: its ConfigMap, its Deployment, and its identity and RBAC.

While `spec.writes.enabled`, a new layout (a version, a shard count) gets the item writes the
serving layout logged carried into it by one carrier (`python -m shardrec.serving.carry`,
`shardrec.api.carry`; the planner's side is `shardrec.planning.carrying`); so does a kept layout
rolled back to (a carry back: `CarrierConfig.back`, the same Deployment name, the annotation
`shardrec.io/carry-back: "true"`, its progress in `carry-back/<layout>/<source>` on the store).
What it needs:

- its `CarrierConfig` in the ConfigMap `<cluster>-carry-<layout>` (key `carry.json`): the old
  leaders (replica 0 of each old shard) and every new replica by their stable StatefulSet DNS
  names, with the scheme each layout's StatefulSets serve (TLS as they were created); the carry
  folder on the index store; the old layout's own carry folder when it was itself carried into;
- a Deployment `<cluster>-carry-<layout>` of one pod, `strategy: Recreate` (two carriers of one
  layout must never forward at once), labelled `app.kubernetes.io/component: carrier` (the
  `<cluster>-shards` NetworkPolicy admits it next to the routers: `desired.network`); the
  operator's requests are annotations on the Deployment (`shardrec.api.carry`), not on the pod
  template, so a request restarts nothing; a hash of the config on the pod template does restart
  it when the config changes (a new replica count): the carrier resumes from its progress on the
  store;
- mounts: the shard token (`send`, as routers), the cluster CA (as routers: the carrier verifies
  the one DNS name shard certificates hold), the index store (PVC: the claim read-write at
  `/store`, as the build Jobs; object store: the connection and credentials as environment);
- the ServiceAccount `<cluster>-carrier` whose Role allows `get`/`patch` on pods (it reports its
  `shardrec.io/carry-progress` on its own pod, as routers report what they serve; RBAC cannot name
  a Deployment's pod in advance, so the same caveat as the router's applies, docs/security.md)
  and `get` on deployments (to read the requests).

Resources: `spec.resources.router` (the carrier, like a router, moves small HTTP requests; it holds
at most one page of log records at a time). Pod template: `spec.podTemplates.carrier`, else
`spec.podTemplates.build` (`carrier_template_override`), merged like every other kind's
(`desired.pod_template`: the operator's fields win, collisions are rejected by validation).
Pure: cluster, layouts and requests in, manifests out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from shardrec.api import v1alpha1 as api
from shardrec.api.carry import (
    CARRIER_MODULE,
    CARRY_CONFIG_KEY,
    CARRY_CONFIG_MOUNT,
    CARRY_CONFIG_PATH,
    FINISH_REQUESTED_ANNOTATION,
    HAND_OVER_REQUESTED_ANNOTATION,
    OPEN_REQUESTED_ANNOTATION,
    CarrierConfig,
)
from shardrec.api.credentials import SEND_KEY
from shardrec.planning import LayoutSpec
from shardrec_operator.desired import artifacts, labels, names, pods, shard_tls, shard_token
from shardrec_operator.desired.meta import Manifest, manifest
from shardrec_operator.desired.pod_template import merge_pod_template
from shardrec_operator.desired.rbac import RBAC_API
from shardrec_operator.desired.shard import shard_replica_url

CARRIER_CONTAINER: Final = "carrier"
CONFIG_VOLUME: Final = "carry-config"
CONFIG_HASH_ANNOTATION: Final = "shardrec.io/carry-config-hash"
POD_NAME_ENV: Final = "POD_NAME"
POD_NAMESPACE_ENV: Final = "POD_NAMESPACE"


@dataclass(frozen=True)
class CarrierRequests:
    """The operator's requests to one carrier (ids; None: not requested)."""

    hand_over: str | None = None
    open: str | None = None
    finish: str | None = None

    def annotations(self) -> dict[str, str]:
        requests = {
            HAND_OVER_REQUESTED_ANNOTATION: self.hand_over,
            OPEN_REQUESTED_ANNOTATION: self.open,
            FINISH_REQUESTED_ANNOTATION: self.finish,
        }
        return {key: value for key, value in requests.items() if value is not None}


def carrier_config(
    cluster: api.RecommenderCluster,
    layout: LayoutSpec,
    source: LayoutSpec,
    *,
    replicas: int,
    source_tls: bool,
    layout_tls: bool,
    prior: bool,
    back: bool = False,
) -> CarrierConfig:
    """What the carrier of `layout` reads: `source`'s leaders, `replicas` replicas of each new
    shard; `*_tls`: whether each layout's StatefulSets serve TLS; `prior`: `source` was itself
    built with a carry (its carry folder is folded in first); `back`: a carry back into the kept
    `layout` (a rollback: no cut, no prior carry, its progress in `carry-back/<layout>/<source>`)."""
    name = cluster.metadata.name
    tls = source_tls or layout_tls
    return CarrierConfig(
        cluster=name,
        from_layout=source.id,
        from_shards=source.shards,
        to_layout=layout.id,
        to_shards=layout.shards,
        old_leaders=[
            shard_replica_url(cluster, source.id, shard, 0, tls=source_tls) for shard in range(source.shards)
        ],
        new_replicas=[
            [
                shard_replica_url(cluster, layout.id, shard, ordinal, tls=layout_tls)
                for ordinal in range(replicas)
            ]
            for shard in range(layout.shards)
        ],
        carry_store=(
            artifacts.carry_back_location(cluster, layout.id, source.id)
            if back
            else artifacts.carry_location(cluster, layout.id)
        ),
        prior_carry=artifacts.carry_location(cluster, source.id) if prior and not back else None,
        token_file=shard_token.token_file(SEND_KEY),
        ca_file=shard_tls.tls_file(shard_tls.CA_CERT) if tls else None,
        tls_name=shard_tls.server_name(cluster) if tls else None,
        deployment=names.carrier(name, layout.id),
        back=back,
    )


def config_json(config: CarrierConfig) -> str:
    return config.model_dump_json(indent=2) + "\n"


def build_carrier_configmap(
    cluster: api.RecommenderCluster, layout: LayoutSpec, config: CarrierConfig
) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        "v1",
        "ConfigMap",
        cluster,
        names.carrier(name, layout.id),
        labels.layout_labels(name, "carrier", layout),
        data={CARRY_CONFIG_KEY: config_json(config)},
    )


def carrier_selector(cluster_name: str, layout_id: str) -> dict[str, str]:
    """The pods of one layout's carrier."""
    return {labels.CLUSTER: cluster_name, labels.COMPONENT: "carrier", labels.LAYOUT: layout_id}


def _volumes_and_mounts(cluster: api.RecommenderCluster, layout: LayoutSpec) -> tuple[list[Any], list[Any]]:
    spec = cluster.spec
    name = cluster.metadata.name
    volumes: list[dict[str, Any]] = [
        pods.tmp_volume(),
        {"name": CONFIG_VOLUME, "configMap": {"name": names.carrier(name, layout.id)}},
        shard_token.token_volume(name, SEND_KEY),
        shard_tls.tls_volume(name, (shard_tls.CA_CERT,)),
    ]
    mounts: list[dict[str, Any]] = [
        pods.tmp_mount(),
        {"name": CONFIG_VOLUME, "mountPath": CARRY_CONFIG_MOUNT, "readOnly": True},
        shard_token.token_mount(),
        shard_tls.tls_mount(),
    ]
    if artifacts.object_store(spec) is None:
        # The carry folder is written onto the claim, where the build Job (same mount) reads it.
        volumes.insert(0, pods.store_volume(spec, read_only=False))
        mounts.insert(0, pods.store_mount(spec, read_only=False))
    return volumes, mounts


def carrier_template_override(spec: api.RecommenderClusterSpec) -> api.PodTemplate | None:
    """The user's template for carrier pods: `podTemplates.carrier`, else `podTemplates.build`.

    Why the build's by default: the carrier is a worker beside the builds, not a server. It runs
    the same image (the same pull secrets), reads and writes the same index store (the same node
    placement, proxies or CA bundles to reach it) and takes no client traffic (no zone spread);
    a cluster whose builds need a template to run at all would otherwise get carriers that cannot
    pull their image or reach the store, and every carry would stall. `carrier: {}` opts out."""
    templates = spec.pod_templates
    return templates.carrier if templates.carrier is not None else templates.build


def carrier_pod_template(
    cluster: api.RecommenderCluster, layout: LayoutSpec, config: CarrierConfig
) -> dict[str, Any]:
    """The operator's carrier pod template, before the user's (`carrier_template_override`)."""
    spec = cluster.spec
    name = cluster.metadata.name
    volumes, mounts = _volumes_and_mounts(cluster, layout)
    store_env = (
        artifacts.connection_env(spec) + artifacts.credential_env(spec)
        if artifacts.object_store(spec)
        else []
    )
    container: dict[str, Any] = {
        "name": CARRIER_CONTAINER,
        **pods.image_fields(spec),
        "command": ["python", "-m", CARRIER_MODULE, "--config", CARRY_CONFIG_PATH],
        "env": [
            # The carrier reports its progress on its own pod (CarryProgress).
            {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": POD_NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            *store_env,
        ],
        "resources": pods.resources(spec.resources.router),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
    }
    config_hash = hashlib.sha256(config_json(config).encode()).hexdigest()[:16]
    return {
        "metadata": {
            "labels": labels.layout_labels(name, "carrier", layout),
            "annotations": {CONFIG_HASH_ANNOTATION: config_hash},
        },
        "spec": {
            "serviceAccountName": names.carrier_service_account(name),
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "securityContext": pods.pod_security_context(),
            "containers": [container],
            "volumes": volumes,
        },
    }


def build_carrier_deployment(
    cluster: api.RecommenderCluster,
    layout: LayoutSpec,
    source: LayoutSpec,
    config: CarrierConfig,
    requests: CarrierRequests,
) -> Manifest:
    """The carrier of `layout` (carrying `source`'s writes), with the operator's `requests` as
    annotations; a request left out is withdrawn by the next server-side apply. A carry back says
    so in an annotation (absent on a forward carrier)."""
    name = cluster.metadata.name
    back = {labels.CARRY_BACK_ANNOTATION: "true"} if config.back else {}
    return manifest(
        "apps/v1",
        "Deployment",
        cluster,
        names.carrier(name, layout.id),
        labels.layout_labels(name, "carrier", layout),
        annotations={labels.CARRY_FROM_ANNOTATION: source.id, **back, **requests.annotations()},
        spec={
            "replicas": 1,
            "selector": {"matchLabels": carrier_selector(name, layout.id)},
            # Never two carriers of one layout at once: the old pod goes before the new one starts.
            "strategy": {"type": "Recreate"},
            "template": merge_pod_template(
                carrier_pod_template(cluster, layout, config),
                carrier_template_override(cluster.spec),
                container=CARRIER_CONTAINER,
                selector=carrier_selector(name, layout.id),
            ),
        },
    )


def build_carrier_service_account(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        "v1",
        "ServiceAccount",
        cluster,
        names.carrier_service_account(name),
        labels.component_labels(name, "carrier"),
        automountServiceAccountToken=True,
    )


def build_carrier_role(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        RBAC_API,
        "Role",
        cluster,
        names.carrier_service_account(name),
        labels.component_labels(name, "carrier"),
        rules=[
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
        ],
    )


def build_carrier_role_binding(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    account = names.carrier_service_account(name)
    return manifest(
        RBAC_API,
        "RoleBinding",
        cluster,
        account,
        labels.component_labels(name, "carrier"),
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        subjects=[{"kind": "ServiceAccount", "name": account, "namespace": cluster.metadata.namespace}],
    )


def build_carrier_identity(cluster: api.RecommenderCluster) -> list[Manifest]:
    """ServiceAccount, Role and RoleBinding of the cluster's carriers, in apply order."""
    return [
        build_carrier_service_account(cluster),
        build_carrier_role(cluster),
        build_carrier_role_binding(cluster),
    ]
