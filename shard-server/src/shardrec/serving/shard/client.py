"""`ShardClient`: what the router uses to talk to one shard replica.

The wire format is private to this module and the server (wire.py): binary float32 queries in,
fixed-width ids and float32 scores out, over pooled keep-alive HTTP/1.1 connections (http1.py).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shardrec.serving.credentials import TokenFile
from shardrec.serving.shard.http1 import ConnectionPool, HttpError
from shardrec.serving.shard.wire import REQUEST_CONTENT_TYPE, WireError, decode_answer, encode_request

Floats = npt.NDArray[np.float32]
REPLICATE_PATH = "/v1/admin/writes/replicate"


class ShardError(Exception):
    """Base of the client's errors."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ShardUnavailable(ShardError):  # noqa: N818 - the router names these kinds (router/shard_protocol.py)
    """Connection refused/reset, timeout, 5xx (not ready, overloaded, deadline): try another replica."""


class SequenceGap(ShardError):  # noqa: N818 - the router names these kinds (router/shard_protocol.py)
    """A follower refused records that do not follow its last applied one."""

    def __init__(self, applied: int) -> None:
        super().__init__(f"replica has applied up to {applied}", status=409, code="sequence_gap")
        self.applied = applied


NO_WRITE_LOG = "no_write_log"
"""The error code of a shard server that keeps no write log (engine.NoWriteLogError): item writes
are off for its layout."""


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
        token: str | TokenFile | None = None,
        tls: ssl.SSLContext | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        """`token`: the shard's admin token, sent on every request (needed by /v1/items/vectors);
        a `TokenFile` is re-read when it changes (a rotated Secret). `tls`: the context that
        verifies the shard's certificate (`https://` URLs; `serving.tls.client_context`)."""
        self.base_url = base_url.rstrip("/")
        bearer = (lambda: token) if isinstance(token, str) else token.first if token is not None else None
        self._pool = ConnectionPool(
            self.base_url,
            max_connections=max_connections,
            connect_timeout_s=connect_timeout_s,
            bearer=bearer,
            tls=tls,
            tls_server_name=tls_server_name,
        )
        self.outstanding = 0  # requests in flight: the router's replica choice can read it
        self.applied_sequence: int | None = None
        """The write-log sequence the replica's last /readyz said it applied (None: not known)."""
        self.instance: str | None = None
        """The process identity of the replica's last /readyz (changes when it restarts)."""

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
        """True when the replica answers /readyz with 200 (index loaded and warmed); notes the
        write-log sequence it says it applied in `applied_sequence`."""
        try:
            body = await self._call("GET", "/readyz", b"", None, timeout_s)
        except ShardError:
            return False
        try:
            data = json.loads(body)
            applied, instance = data.get("applied_sequence"), data.get("instance")
        except (ValueError, AttributeError):
            applied = instance = None
        self.applied_sequence = applied if isinstance(applied, int) else None
        self.instance = instance if isinstance(instance, str) else None
        return True

    # --- the write log (admin token) ------------------------------------------------------------

    async def lead_writes(self, ops: Sequence[dict[str, Any]], timeout_s: float = 5.0) -> list[int]:
        """Have this replica number, log and apply `ops` (it is the shard's sequence authority)."""
        body = json.dumps({"ops": list(ops)}).encode()
        data = json.loads(await self._call("POST", "/v1/admin/writes", body, "application/json", timeout_s))
        return [int(seq) for seq in data["sequences"]]

    async def replicate(self, records: Sequence[dict[str, Any]], timeout_s: float = 5.0) -> int:
        """Append and apply numbered records; the sequence the replica applied after them.
        A replica missing earlier records answers 409 `sequence_gap` (ShardRejected) with its
        applied sequence in `SequenceGap.applied`."""
        body = json.dumps({"records": list(records)}).encode()
        self.outstanding += 1
        try:
            status, answer = await self._pool.request(
                "POST", REPLICATE_PATH, body, timeout_s=timeout_s, content_type="application/json"
            )
        except TimeoutError as exc:
            raise ShardUnavailable(f"{self.base_url}: replicate: no answer within {timeout_s:.3f}s") from exc
        except (HttpError, OSError) as exc:
            raise ShardUnavailable(f"{self.base_url}: replicate: {exc}") from exc
        finally:
            self.outstanding -= 1
        if status == 409:
            try:
                applied = int(json.loads(answer)["applied_sequence"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ShardUnavailable(f"{self.base_url}: replicate: malformed 409") from exc
            raise SequenceGap(applied)
        if status != 200:
            code, message = _error_of(status, answer)
            kind = ShardRejected if 400 <= status < 500 else ShardUnavailable
            raise kind(f"{self.base_url}: replicate: {status} {code}: {message}", status=status, code=code)
        return int(json.loads(answer)["applied_sequence"])

    async def read_log(self, after: int, limit: int = 1024, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The replica's log records after sequence `after` (at most `limit`)."""
        path = f"/v1/admin/writes?after={int(after)}&limit={int(limit)}"
        data = json.loads(await self._call("GET", path, b"", None, timeout_s))
        records: list[dict[str, Any]] = data["records"]
        return records

    async def close(self) -> None:
        self._pool.close()
