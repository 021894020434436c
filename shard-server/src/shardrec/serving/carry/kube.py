"""The carrier's Kubernetes edge: the operator's requests (annotations of the carrier's
Deployment) and the carrier's report (an annotation of its own pod).

Kept thin and behind `CarrierKube` so the carrier runs without a cluster in tests (a fake that
holds the annotations in memory). The kubernetes client is imported lazily, as the router does.
RBAC (the operator's side): `get` on deployments, `get`/`patch` on pods of the namespace.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

from shardrec.api.carry import (
    CARRY_PROGRESS_ANNOTATION,
    FINISH_REQUESTED_ANNOTATION,
    HAND_OVER_REQUESTED_ANNOTATION,
    OPEN_REQUESTED_ANNOTATION,
    CarryProgress,
)


@dataclass(frozen=True)
class CarryRequests:
    """The operator's requests: each a request id, None when not requested."""

    hand_over: str | None = None
    open: str | None = None
    finish: str | None = None

    @classmethod
    def from_annotations(cls, annotations: dict[str, str] | None) -> CarryRequests:
        found = annotations or {}
        return cls(
            found.get(HAND_OVER_REQUESTED_ANNOTATION) or None,
            found.get(OPEN_REQUESTED_ANNOTATION) or None,
            found.get(FINISH_REQUESTED_ANNOTATION) or None,
        )


class KubeError(Exception):
    """The API server could not be asked or told (retried on the next poll)."""


class CarrierKube(Protocol):
    def requests(self) -> CarryRequests:
        """The requests on the carrier's Deployment; raises KubeError."""
        ...

    def report(self, progress: CarryProgress) -> None:
        """Patch `CARRY_PROGRESS_ANNOTATION` on the carrier's pod; raises KubeError."""
        ...


class InClusterKube:
    """The API server through the kubernetes client (in-cluster config; a kubeconfig outside)."""

    def __init__(self, namespace: str, pod: str, deployment: str, api_client: Any = None) -> None:
        self.namespace = namespace
        self.pod = pod
        self.deployment = deployment
        self._api_client = api_client
        self._lock = threading.Lock()
        self._apis: tuple[Any, Any] | None = None

    def _clients(self) -> tuple[Any, Any]:
        with self._lock:
            if self._apis is None:
                from kubernetes import client, config

                api_client = self._api_client
                if api_client is None:
                    try:
                        config.load_incluster_config()  # type: ignore[no-untyped-call]
                    except config.ConfigException:
                        config.load_kube_config()  # type: ignore[no-untyped-call]
                    api_client = client.ApiClient()
                self._apis = (client.CoreV1Api(api_client), client.AppsV1Api(api_client))
            return self._apis

    def requests(self) -> CarryRequests:
        try:
            _, apps = self._clients()
            deployment = apps.read_namespaced_deployment(self.deployment, self.namespace)
        except Exception as exc:  # the client raises ApiException, urllib3 and config errors
            raise KubeError(f"reading deployment {self.namespace}/{self.deployment}: {exc}") from exc
        return CarryRequests.from_annotations(deployment.metadata.annotations)

    def report(self, progress: CarryProgress) -> None:
        body = {"metadata": {"annotations": {CARRY_PROGRESS_ANNOTATION: progress.model_dump_json()}}}
        try:
            core, _ = self._clients()
            core.patch_namespaced_pod(self.pod, self.namespace, body)
        except Exception as exc:
            raise KubeError(f"patching pod {self.namespace}/{self.pod}: {exc}") from exc
