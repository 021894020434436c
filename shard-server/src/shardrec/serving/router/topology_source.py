"""Where the router's topology comes from, behind one interface.

- `FileTopologySource`: a JSON file, polled (mtime, size, inode) every `poll_interval_s` (100 ms by
  default, so a change propagates in well under a second). Works for a mounted ConfigMap as well:
  the kubelet swaps a symlink, which changes the inode the path resolves to.
- `ConfigMapTopologySource`: key `topology.json` of a ConfigMap, watched through the Kubernetes API
  (list + watch from the returned resourceVersion, in a thread; re-listed after any error).

Both call `apply(topology)` with each new document, in order, never concurrently; a document that
fails to parse is reported through `on_error` and the previous one stays in force. Inside the
ConfigMap source, the watch thread hands the event loop either a `Topology` or a
`TopologySourceError`, so the two are told apart by type.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from shardrec.api.errors import describe_errors
from shardrec.api.topology import TOPOLOGY_CONFIGMAP_KEY, Topology
from shardrec.serving.kube_client import api_client

log = logging.getLogger("shardrec.router.topology")

ApplyTopology = Callable[[Topology], Awaitable[None]]
OnError = Callable[[str], None]


class TopologySourceError(ValueError):
    """A topology document that cannot be used; the message names where it came from."""


_Update = Topology | TopologySourceError
"""What the ConfigMap watch thread hands the event loop: a document, or why there is none."""


class TopologySource(Protocol):
    description: str

    async def watch(self, apply: ApplyTopology, on_error: OnError) -> None:
        """Call `apply` with the current topology and every change; runs until cancelled."""


def parse_topology(text: str | bytes, source: str) -> Topology:
    try:
        return Topology.model_validate_json(text)
    except ValidationError as exc:
        problems = describe_errors(exc.errors())
        raise TopologySourceError(f"{source}: invalid topology: {problems}") from None


class FileTopologySource:
    def __init__(self, path: Path, poll_interval_s: float = 0.1, retry_interval_s: float = 1.0) -> None:
        self.path = path
        self.poll_interval_s = poll_interval_s
        self.retry_interval_s = retry_interval_s
        self.description = f"file {path}"

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    async def watch(self, apply: ApplyTopology, on_error: OnError) -> None:
        loop = asyncio.get_running_loop()
        applied: tuple[int, int, int] | None = None
        failed: tuple[int, int, int] | None = None
        retry_at = 0.0
        while True:
            signature = self._signature()
            # A document that failed is tried again when the file changes (a writer that is not
            # atomic finishes its write) or, unchanged, after `retry_interval_s` (the artifact it
            # names may appear later).
            if (
                signature is not None
                and signature != applied
                and (signature != failed or loop.time() >= retry_at)
            ):
                try:
                    topology = parse_topology(self.path.read_bytes(), str(self.path))
                    await apply(topology)
                    applied, failed = signature, None
                except Exception as exc:  # keep serving the previous topology
                    on_error(f"{self.path}: {exc}")
                    failed, retry_at = signature, loop.time() + self.retry_interval_s
            await asyncio.sleep(self.poll_interval_s)


class ConfigMapTopologySource:
    """Watches `namespace/name` through the API. The kubernetes client is imported lazily: it is
    needed in a cluster only."""

    def __init__(self, namespace: str, name: str, api_client: Any = None) -> None:
        self.namespace = namespace
        self.name = name
        self.description = f"configmap {namespace}/{name}"
        self._api_client = api_client
        self._stop = threading.Event()

    async def watch(self, apply: ApplyTopology, on_error: OnError) -> None:
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[_Update] = asyncio.Queue()

        def deliver(item: _Update) -> None:
            try:
                loop.call_soon_threadsafe(updates.put_nowait, item)
            except RuntimeError:  # the loop is closed: the router is shutting down
                self._stop.set()

        thread = threading.Thread(target=self._run, args=(deliver,), name="topology-watch", daemon=True)
        thread.start()
        try:
            while True:
                item = await updates.get()
                while not updates.empty():  # only the newest document matters
                    newer = updates.get_nowait()
                    if isinstance(item, TopologySourceError):
                        on_error(str(item))
                    item = newer
                if isinstance(item, TopologySourceError):
                    on_error(str(item))
                    continue
                try:
                    await apply(item)
                except Exception as exc:
                    on_error(f"{self.description}: {exc}")
        finally:
            self._stop.set()

    def _problem(self, what: str) -> TopologySourceError:
        return TopologySourceError(f"{self.description}: {what}")

    def _run(self, deliver: Callable[[_Update], None]) -> None:
        try:
            from kubernetes import client, watch
            from kubernetes.client.exceptions import ApiException
        except ImportError:
            deliver(
                self._problem(
                    "the kubernetes client is not installed (pip install 'shardrec[serving]'); "
                    "use --topology-file with a mounted ConfigMap instead"
                )
            )
            return

        try:
            connection = api_client(self._api_client)
        except Exception as exc:
            deliver(self._problem(f"no Kubernetes credentials (in-cluster or kubeconfig): {exc}"))
            return
        core = client.CoreV1Api(connection)
        backoff = 0.5
        while not self._stop.is_set():
            try:
                listed = core.list_namespaced_config_map(
                    self.namespace, field_selector=f"metadata.name={self.name}"
                )
                for item in listed.items:
                    self._deliver_object(item, deliver)
                if not listed.items:
                    deliver(self._problem("not found (waiting for it)"))
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=listed.metadata.resource_version if listed.metadata else None,
                    timeout_seconds=60,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._deliver_object(event["object"], deliver)
                backoff = 0.5
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: resourceVersion too old, just list again
                    deliver(self._problem(f"API error {exc.status}: {exc.reason}"))
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
            except Exception as exc:
                deliver(self._problem(f"watch failed: {exc}"))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _deliver_object(self, obj: Any, deliver: Callable[[_Update], None]) -> None:
        data = obj.data or {}
        text = data.get(TOPOLOGY_CONFIGMAP_KEY)
        if text is None:
            deliver(self._problem(f"has no key {TOPOLOGY_CONFIGMAP_KEY!r}"))
            return
        try:
            deliver(parse_topology(text, f"{self.description} key {TOPOLOGY_CONFIGMAP_KEY}"))
        except TopologySourceError as exc:
            deliver(exc)
