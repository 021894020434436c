"""The Kubernetes resource kinds the operator reads and writes, and their REST paths.

A fixed table instead of API discovery: the operator touches a known, small set of kinds, a
table is deterministic and free, and the API double in the tests uses the same table, so paths
and scoping cannot differ between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardrec.api import v1alpha1 as api


@dataclass(frozen=True)
class Resource:
    """One kind: where it lives in the REST API and whether it is namespaced."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """`/api/v1/namespaces/ns/configmaps/name` and friends; `name=None` is the collection."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        tail = f"/{name}" if name else ""
        return f"{prefix}{scope}/{self.plural}{tail}"


CONFIG_MAP = Resource("v1", "ConfigMap", "configmaps")
SERVICE = Resource("v1", "Service", "services")
SERVICE_ACCOUNT = Resource("v1", "ServiceAccount", "serviceaccounts")
SECRET = Resource("v1", "Secret", "secrets")
"""Only the cluster's shard token, read by name (never listed or watched: `desired.shard_token`)."""
POD = Resource("v1", "Pod", "pods")
NODE = Resource("v1", "Node", "nodes", namespaced=False)
JOB = Resource("batch/v1", "Job", "jobs")
STATEFUL_SET = Resource("apps/v1", "StatefulSet", "statefulsets")
DEPLOYMENT = Resource("apps/v1", "Deployment", "deployments")
PDB = Resource("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
ROLE = Resource("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLE_BINDING = Resource("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")
NETWORK_POLICY = Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
HPA = Resource("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SERVICE_MONITOR = Resource("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")
RECOMMENDER_CLUSTER = Resource(api.API_VERSION, api.KIND, api.PLURAL)

ALL = (
    CONFIG_MAP,
    SERVICE,
    SERVICE_ACCOUNT,
    SECRET,
    POD,
    NODE,
    JOB,
    STATEFUL_SET,
    DEPLOYMENT,
    PDB,
    ROLE,
    ROLE_BINDING,
    NETWORK_POLICY,
    HPA,
    SERVICE_MONITOR,
    RECOMMENDER_CLUSTER,
)
WATCHED = (STATEFUL_SET, POD, JOB, CONFIG_MAP, DEPLOYMENT, SERVICE, PDB)
"""Children whose changes wake their cluster's pass at once (`handlers.wake_on_child_change`):
the ones that move a rollout (pods, Jobs, router acknowledgements) or that a hand edit
(`kubectl scale`, `kubectl edit`) is likely to hit. The rest (RBAC, NetworkPolicy, HPA,
ServiceMonitor) are corrected by the periodic safety-net pass."""
_BY_KIND = {(r.api_version, r.kind): r for r in ALL}


def resource_of(manifest: dict[str, Any]) -> Resource:
    """The table entry for a manifest's apiVersion + kind; KeyError names an unknown kind."""
    key = (manifest["apiVersion"], manifest["kind"])
    try:
        return _BY_KIND[key]
    except KeyError:
        raise KeyError(f"the operator does not manage {key[1]} ({key[0]})") from None
