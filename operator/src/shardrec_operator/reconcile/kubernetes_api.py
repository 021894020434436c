"""`ClusterApi` against a real API server, through the `kubernetes` package's REST transport.

Only the transport (auth from kubeconfig or the in-cluster ServiceAccount, TLS, connection
pool) comes from `kubernetes`; requests are plain REST on the paths of `resources`, so one small
module serves every kind, including CRDs such as ServiceMonitor, without discovery.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from shardrec_operator.reconcile.cluster_api import Obj, error_for
from shardrec_operator.reconcile.resources import Resource, resource_of

REQUEST_TIMEOUT_SECONDS = 30.0


def load_api_client(kubeconfig: str | None = None) -> k8s_client.ApiClient:
    """In-cluster credentials when running in a pod, otherwise the kubeconfig ($KUBECONFIG)."""
    configuration = k8s_client.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return k8s_client.ApiClient(configuration)
        except k8s_config.ConfigException:
            pass
    # $KUBECONFIG is read now, not when `kubernetes` was imported (its default is frozen then).
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=configuration
    )
    return k8s_client.ApiClient(configuration)


class KubernetesClusterApi:
    """The real `ClusterApi`. Thread-safe: kopf runs sync handlers in a thread pool."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self._client = api_client

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Obj]:
        # param_serialize adds the host, the query string and the credentials (refreshing an
        # expiring ServiceAccount token), exactly as the generated typed clients do.
        request = self._client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._client.call_api(*request, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        raw = response.read() or b"{}"  # type: ignore[no-untyped-call]
        try:
            data: Obj = json.loads(raw)
        except ValueError:
            data = {"message": raw.decode(errors="replace")}
        return response.status, data

    def _ok(self, status: int, data: Obj) -> Obj:
        if 200 <= status < 300:
            return data
        raise error_for(status, str(data.get("message", data)))

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        status, data = self._request("GET", resource.path(namespace, name))
        if status == 404:
            return None
        return self._ok(status, data)

    def list(self, resource: Resource, namespace: str | None, label_selector: str = "") -> list[Obj]:
        query = {"labelSelector": label_selector} if label_selector else None
        status, data = self._request("GET", resource.path(namespace), query)
        items: list[Obj] = self._ok(status, data).get("items", [])
        # The API server leaves apiVersion and kind out of list items; callers rely on them.
        return [{**item, "apiVersion": resource.api_version, "kind": resource.kind} for item in items]

    def apply(self, manifest: Obj, *, field_manager: str, force: bool) -> Obj:
        meta = manifest["metadata"]
        path = resource_of(manifest).path(meta.get("namespace"), meta["name"])
        query = {"fieldManager": field_manager, "force": "true" if force else "false"}
        # JSON is YAML, so the apply-patch content type takes the dict as it is.
        status, data = self._request("PATCH", path, query, manifest, "application/apply-patch+yaml")
        return self._ok(status, data)

    def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> bool:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        body["propagationPolicy"] = "Background"
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        status, data = self._request("DELETE", resource.path(namespace, name), body=body)
        if status == 404:
            return False
        self._ok(status, data)
        return True
