"""Readiness probes of local children, run concurrently so one hung process cannot stall a pass."""

from __future__ import annotations

import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from pydantic import ValidationError

from shardrec.api.canary import CanaryStats
from shardrec.api.topology import RouterServing
from shardrec.serving.tls import client_context

PROBE_TIMEOUT_S = 0.5


class ReadinessProber:
    """Remembers the last probe result of each URL; `probe` refreshes them all at once."""

    def __init__(self) -> None:
        self._verify: ssl.SSLContext | bool = True
        self._client = httpx.Client(timeout=PROBE_TIMEOUT_S)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._ready: dict[str, bool] = {}
        self._router: dict[str, tuple[bool, RouterServing | None]] = {}
        self._canary: dict[str, CanaryStats | None] = {}

    def trust(self, ca_file: Path) -> None:
        """Verify https:// children against the cluster's CA from now on."""
        self._verify = client_context(ca_file)
        self.drop_connections()

    def drop_connections(self) -> None:
        """Close the kept-alive connections (the next probe opens new ones). Before a child is
        stopped: its graceful stop waits for the TLS close of each, which a pooled connection
        answers only when it is used or closed, so the child sat out its whole grace, killed."""
        self._client.close()
        self._client = httpx.Client(timeout=PROBE_TIMEOUT_S, verify=self._verify)

    def _ready_once(self, base_url: str) -> bool:
        try:
            return self._client.get(f"{base_url}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def _router_once(self, base_url: str) -> tuple[bool, RouterServing | None]:
        """(ready, what it reports serving) from the router's `/readyz`."""
        try:
            response = self._client.get(f"{base_url}/readyz")
        except httpx.HTTPError:
            return False, None
        if response.status_code != 200:
            return False, None
        try:
            body = response.json()
            canary = body.get("canary")
            self._canary[base_url] = CanaryStats.from_report(canary) if isinstance(canary, dict) else None
            return True, RouterServing.model_validate(body.get("serving"))
        except (ValueError, ValidationError, AttributeError):
            return True, None

    def probe(self, shard_urls: list[str], router_url: str) -> None:
        router_future = self._pool.submit(self._router_once, router_url)
        results = self._pool.map(self._ready_once, shard_urls)
        self._ready = dict(zip(shard_urls, results, strict=True))
        self._router[router_url] = router_future.result()

    def is_ready(self, base_url: str) -> bool:
        return self._ready.get(base_url, False)

    def router(self, router_url: str) -> tuple[bool, RouterServing | None]:
        """Whether the router is ready, and what it reports serving (None if it reports nothing)."""
        return self._router.get(router_url, (False, None))

    def canary(self, router_url: str) -> CanaryStats | None:
        """The router's canary measurements from its last `/readyz` (None without a canary)."""
        return self._canary.get(router_url)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
