"""ServiceAccounts, and the least RBAC the router needs: read and watch its one topology ConfigMap,
and report what it serves on its own pod.

Shard pods and index Jobs never talk to the API, so their ServiceAccount mounts no token. The
router's Role names the ConfigMap in `resourceNames`; Kubernetes honours that for `list` and
`watch` when the request carries `fieldSelector=metadata.name=<name>`, which is how the router
watches it. Pods: `get` and `patch` so a router can write its `shardrec.io/router-serving`
annotation. RBAC cannot narrow that to the router's own pod (Deployment pod names are not known
in advance), so a stolen router token can patch other pods' metadata in the namespace; the
threat model (docs/security.md) says so.
"""

from __future__ import annotations

from shardrec.api import v1alpha1 as api
from shardrec_operator.desired import labels, names
from shardrec_operator.desired.meta import Manifest, manifest

RBAC_API = "rbac.authorization.k8s.io/v1"


def build_router_service_account(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        "v1",
        "ServiceAccount",
        cluster,
        names.router(name),
        labels.component_labels(name, "router"),
        automountServiceAccountToken=True,
    )


def build_shard_service_account(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        "v1",
        "ServiceAccount",
        cluster,
        names.shard_service_account(name),
        labels.component_labels(name, "shard"),
        automountServiceAccountToken=False,
    )


def build_router_role(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        RBAC_API,
        "Role",
        cluster,
        names.router(name),
        labels.component_labels(name, "router"),
        rules=[
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [names.topology(name)],
                "verbs": ["get", "list", "watch"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
        ],
    )


def build_router_role_binding(cluster: api.RecommenderCluster) -> Manifest:
    name = cluster.metadata.name
    return manifest(
        RBAC_API,
        "RoleBinding",
        cluster,
        names.router(name),
        labels.component_labels(name, "router"),
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.router(name)},
        subjects=[
            {"kind": "ServiceAccount", "name": names.router(name), "namespace": cluster.metadata.namespace}
        ],
    )
