"""A `Recommender` that asks a running router over HTTP (`POST {router}/v1/recommend`).

The router excludes each user's seen items itself (from the layout it serves, i.e. the
embeddings' seen.tsv), so by default only k and the user id are sent; answers are still filtered
against `exclude` as a guard, which can only lower the measured quality, never raise it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import httpx

_RETRIES = 3
_MAX_RETRY_WAIT_S = 1.0
_MIN_RETRY_WAIT_S = 0.05
_DEFAULT_RETRY_WAIT_S = 0.1
"""When a 503 has no Retry-After in seconds (none, or an HTTP date)."""


def post_until_served(
    client: httpx.Client,
    url: str,
    *,
    content: bytes | None = None,
    json: Any = None,
    retries: int = _RETRIES,
    max_wait_s: float = _MAX_RETRY_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> httpx.Response:
    """POST, and retry a 503 after the router's Retry-After (not ready yet, shedding, a shard
    momentarily without replicas): at most `retries` times, each wait between 50 ms and
    `max_wait_s`. Returns the last response, whatever its status; transport errors propagate."""
    for attempt in range(retries + 1):
        response = client.post(url, content=content, json=json)
        if response.status_code != 503 or attempt == retries:
            return response
        sleep(min(max(_retry_after_s(response), _MIN_RETRY_WAIT_S), max_wait_s))
    raise AssertionError("unreachable")


def _retry_after_s(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", _DEFAULT_RETRY_WAIT_S))
    except ValueError:
        return _DEFAULT_RETRY_WAIT_S


class RouterError(RuntimeError):
    """The router answered with an error or an unexpected body."""


class RouterRecommender:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        send_exclude: bool = False,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._url = base_url.rstrip("/") + "/v1/recommend"
        self._client = httpx.Client(headers=headers, timeout=timeout_s)
        self._send_exclude = send_exclude
        self.versions: Counter[str] = Counter()
        self.partial_answers = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RouterRecommender:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = post_until_served(self._client, self._url, json=body)
        except httpx.HTTPError as exc:
            raise RouterError(f"{self._url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code != 200:
            raise RouterError(f"{self._url}: HTTP {response.status_code}: {response.text[:300]}")
        payload = response.json()
        if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
            raise RouterError(f"{self._url}: answer has no 'items' list: {response.text[:300]}")
        return payload

    def __call__(self, user_id: str, k: int, exclude: Collection[str]) -> list[str]:
        body: dict[str, Any] = {"user_id": user_id, "k": k}
        if self._send_exclude and exclude:
            body["exclude"] = sorted(exclude)
        payload = self._post(body)
        self.versions[str(payload.get("index_version"))] += 1
        if payload.get("partial"):
            self.partial_answers += 1
        ranked = [str(entry["item_id"]) for entry in payload["items"]]
        return [item for item in ranked if item not in exclude][:k]
