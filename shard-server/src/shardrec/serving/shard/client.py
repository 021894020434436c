"""`ShardClient`: what the router uses to talk to one shard replica.

The wire format is private to this module and the server (wire.py): binary float32 queries in,
fixed-width ids and float32 scores out, over pooled keep-alive HTTP/1.1 connections (http1.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shardrec.serving.shard.http1 import ConnectionPool, HttpError
from shardrec.serving.shard.wire import REQUEST_CONTENT_TYPE, WireError, decode_answer, encode_request

Floats = npt.NDArray[np.float32]


class ShardError(Exception):
    """Base of the client's errors."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ShardUnavailable(ShardError):  # noqa: N818 - the router names these kinds (router/shard_protocol.py)
    """Connection refused/reset, timeout, 5xx (not ready, overloaded, deadline): try another replica."""


class ShardRejected(ShardError):  # noqa: N818 - the router names these kinds (router/shard_protocol.py)
    """4xx: the request itself is wrong; another replica would refuse it too."""


@dataclass(frozen=True, slots=True)
class ShardAnswer:
    """One shard's answer to a batch. Row i answers query i; its first `counts[i]` entries are
    real (best first), the rest padding ("" ids, -inf scores)."""

    ids: npt.NDArray[np.str_]  # (n, k)
    scores: Floats  # (n, k), higher is better
    counts: npt.NDArray[np.uint32]  # (n,)
    version: str
    layout: str
    shard: int

    def __len__(self) -> int:
        return len(self.counts)

    def row(self, i: int) -> tuple[list[str], Floats]:
        """Item ids and scores of query i, best first, without padding."""
        count = int(self.counts[i])
        return self.ids[i, :count].tolist(), self.scores[i, :count]

    @property
    def item_ids(self) -> list[list[str]]:
        return [self.ids[i, : int(c)].tolist() for i, c in enumerate(self.counts)]


@dataclass(frozen=True, slots=True)
class ItemVectors:
    """Stored vectors of items held by this shard (cosine indexes store them normalised)."""

    vectors: dict[str, Floats]
    missing: list[str]
    version: str
    layout: str
    shard: int


def _error_of(status: int, body: bytes) -> tuple[str, str]:
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", body[:200].decode("utf-8", "replace")


class ShardClient:
    """Async client of one shard replica; create it on the event loop that uses it."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 64,
        connect_timeout_s: float = 1.0,
        token: str | None = None,
    ) -> None:
        """`token`: the shard's admin token, sent on every request (needed by /v1/items/vectors)."""
        self.base_url = base_url.rstrip("/")
        self._pool = ConnectionPool(
            self.base_url,
            max_connections=max_connections,
            connect_timeout_s=connect_timeout_s,
            extra_headers={"Authorization": f"Bearer {token}"} if token else None,
        )
        self.outstanding = 0  # requests in flight: the router's replica choice can read it

    async def _call(
        self, method: str, path: str, body: bytes, content_type: str | None, timeout_s: float
    ) -> bytes:
        self.outstanding += 1
        try:
            status, answer = await self._pool.request(
                method, path, body, timeout_s=timeout_s, content_type=content_type
            )
        except TimeoutError as exc:
            raise ShardUnavailable(f"{self.base_url}{path}: no answer within {timeout_s:.3f}s") from exc
        except (HttpError, OSError) as exc:
            raise ShardUnavailable(f"{self.base_url}{path}: {exc}") from exc
        finally:
            self.outstanding -= 1
        if status == 200:
            return answer
        code, message = _error_of(status, answer)
        kind = ShardRejected if 400 <= status < 500 else ShardUnavailable
        raise kind(f"{self.base_url}{path}: {status} {code}: {message}", status=status, code=code)

    async def search(
        self,
        queries: Floats,
        k: int,
        exclude: Sequence[Sequence[str]] | None = None,
        timeout_s: float = 1.0,
        *,
        ef_search: int = 0,
    ) -> ShardAnswer:
        """Top-k per query (float32 (n, d)); `exclude[i]` are ids query i must not return. The
        remaining deadline is sent along so a shard drops work nobody waits for. `ef_search`: the
        HNSW ef to search with (0: the shard's default)."""
        if queries.ndim != 2:
            raise ValueError(f"queries must be 2-dimensional (n, d), got shape {queries.shape}")
        body = encode_request(queries, k, exclude, max(1, int(timeout_s * 1000)), ef_search)
        answer = await self._call("POST", "/v1/search", body, REQUEST_CONTENT_TYPE, timeout_s)
        try:
            decoded = decode_answer(answer)
        except (WireError, UnicodeDecodeError, ValueError) as exc:
            raise ShardUnavailable(f"{self.base_url}/v1/search: malformed answer ({exc})") from exc
        if len(decoded.counts) != len(queries):
            raise ShardUnavailable(
                f"{self.base_url}/v1/search: {len(decoded.counts)} answers for {len(queries)} queries"
            )
        return ShardAnswer(
            decoded.ids, decoded.scores, decoded.counts, decoded.version, decoded.layout, decoded.shard
        )

    async def item_vectors(self, item_ids: Sequence[str], timeout_s: float = 1.0) -> ItemVectors:
        """Vectors of the given items that this shard holds (for item-to-item similarity)."""
        body = json.dumps({"item_ids": list(item_ids)}).encode()
        data = json.loads(await self._call("POST", "/v1/items/vectors", body, "application/json", timeout_s))
        vectors = {item: np.asarray(v, dtype=np.float32) for item, v in data["vectors"].items()}
        return ItemVectors(vectors, list(data["missing"]), data["version"], data["layout"], data["shard"])

    async def info(self, timeout_s: float = 1.0) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self._call("GET", "/v1/info", b"", None, timeout_s))
        return result

    async def ready(self, timeout_s: float = 1.0) -> bool:
        """True when the replica answers /readyz with 200 (index loaded and warmed)."""
        try:
            await self._call("GET", "/readyz", b"", None, timeout_s)
        except ShardError:
            return False
        return True

    async def close(self) -> None:
        self._pool.close()
