"""On Kubernetes, a router reports what it serves in an annotation of its own pod.

Why the pod annotation: the operator already lists the router pods (with their readiness), so it
reads every router's report in the same call, with no scraping and no network path from the
operator to each router; `kubectl get pod -o yaml` shows it to a human too. The router's Role
grants `get`/`patch` on pods of its namespace; Kubernetes RBAC cannot narrow a Deployment's pods
by name, which is why the report is one annotation of plain data (docs/security.md).

Delivery: the newest report wins; a failed patch is retried with backoff, and the report is
re-sent every `HEARTBEAT_S` so an annotation lost by an edit comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, Protocol

from shardrec.api.topology import ROUTER_SERVING_ANNOTATION, RouterServing
from shardrec.serving.kube_client import api_client

log = logging.getLogger("shardrec.router.report")

HEARTBEAT_S = 30.0
MAX_BACKOFF_S = 10.0


class ServingReporter(Protocol):
    """Where a router's `RouterServing` goes: the pod annotation, or (several workers per pod,
    `router/workers.py`) the workers' board, whose combined report reaches the annotation."""

    async def report(self, serving: RouterServing) -> None: ...

    async def run(self) -> None: ...

    def pod_serving(self, own: RouterServing) -> RouterServing:
        """What the pod serves, given what this process serves (/readyz shows it)."""
        ...


class PodAnnotationReporter:
    """Patches `ROUTER_SERVING_ANNOTATION` on `namespace/pod` with the newest `RouterServing`."""

    def __init__(self, namespace: str, pod: str, api_client: Any = None) -> None:
        self.namespace = namespace
        self.pod = pod
        self._api_client = api_client
        self._core: Any = None
        self._latest: RouterServing | None = None
        self._sent: RouterServing | None = None
        self._wake = asyncio.Event()
        self._client_lock = threading.Lock()

    async def report(self, serving: RouterServing) -> None:
        """Record the newest report; `run` delivers it (never blocks the caller on the API)."""
        self._latest = serving
        self._wake.set()

    def pod_serving(self, own: RouterServing) -> RouterServing:
        return own

    async def run(self) -> None:
        backoff = 0.5
        while True:
            with contextlib.suppress(TimeoutError):  # the heartbeat: re-send even if nothing changed
                await asyncio.wait_for(self._wake.wait(), timeout=HEARTBEAT_S)
            self._wake.clear()
            latest = self._latest
            if latest is None:
                continue
            try:
                await asyncio.to_thread(self._patch, latest)
            except Exception as exc:
                log.warning("cannot report what this router serves on pod %s: %s", self.pod, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                self._wake.set()
                continue
            backoff = 0.5
            self._sent = latest

    def _patch(self, serving: RouterServing) -> None:
        core = self._core_api()
        body = {"metadata": {"annotations": {ROUTER_SERVING_ANNOTATION: serving.model_dump_json()}}}
        core.patch_namespaced_pod(self.pod, self.namespace, body)

    def _core_api(self) -> Any:
        with self._client_lock:
            if self._core is None:
                from kubernetes import client

                self._core = client.CoreV1Api(api_client(self._api_client))
            return self._core
