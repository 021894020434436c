"""Readiness probes of local children, run concurrently so one hung process cannot stall a pass."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

PROBE_TIMEOUT_S = 0.5


class ReadinessProber:
    """Remembers the last probe result of each URL; `probe` refreshes them all at once."""

    def __init__(self) -> None:
        self._client = httpx.Client(timeout=PROBE_TIMEOUT_S)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._ready: dict[str, bool] = {}
        self._router_layout: dict[str, str | None] = {}

    def _ready_once(self, base_url: str) -> bool:
        try:
            return self._client.get(f"{base_url}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def _router_layout_once(self, base_url: str) -> str | None:
        try:
            response = self._client.get(f"{base_url}/readyz")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        layout = response.json().get("layout")
        return str(layout) if layout else None

    def probe(self, shard_urls: list[str], router_url: str) -> None:
        router_future = self._pool.submit(self._router_layout_once, router_url)
        results = self._pool.map(self._ready_once, shard_urls)
        self._ready = dict(zip(shard_urls, results, strict=True))
        self._router_layout[router_url] = router_future.result()

    def is_ready(self, base_url: str) -> bool:
        return self._ready.get(base_url, False)

    def router_layout(self, router_url: str) -> str | None:
        """The layout the router reports serving, or None when it serves none or is down."""
        return self._router_layout.get(router_url)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
