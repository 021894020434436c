"""The data plane's one way to reach the API server: the pod's in-cluster config, or a kubeconfig
when run outside a cluster (tests, a developer's shell). Routers report what they serve and the
carrier its progress on their own pods through it; the kubernetes package is imported only here,
and only when a process first needs it (a process outside Kubernetes never loads it)."""

from __future__ import annotations

from typing import Any


def api_client(given: Any = None) -> Any:
    """`given` (a test's client), else a `kubernetes.client.ApiClient` from the in-cluster config,
    else from the kubeconfig."""
    if given is not None:
        return given
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()
