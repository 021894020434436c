"""HTTP surface of a shard server.

The hot path, `POST /v1/search` (binary, see wire.py), is a raw ASGI route in front of the
FastAPI app: no routing table, no Request object, no validation layer, no middleware stack: it
reads the body, hands the numpy view to the engine, and writes the bytes back. Everything else
(health, readiness, metrics, info, a JSON search for humans, item vectors, the admin load) is
ordinary FastAPI. Every error is JSON `{"error": {"code", "message"}}`; bad input is a 4xx.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from shardrec.api.commands import SHARD_PRESTOP_PATH
from shardrec.api.errors import describe_errors
from shardrec.serving.credentials import StaticTokens, TokenSource, accepts
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.write_log import WriteLogError, WriteRecord
from shardrec.serving.shard.engine import (
    EngineError,
    LoadRejectedError,
    NotReadyError,
    SearchEngine,
    SequenceGapRefusedError,
)
from shardrec.serving.shard.metrics import ShardMetrics
from shardrec.serving.shard.wire import (
    ANSWER_CONTENT_TYPE,
    REQUEST_CONTENT_TYPE,
    WireError,
    decode_request,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SEARCH_PATH = "/v1/search"
MAX_QUERIES = 4096
MAX_K = 10000
MAX_BODY_BYTES = 64 << 20
"""Largest binary search body (4096 queries of dimension 4096 in float32, plus exclusions)."""
MAX_JSON_BODY_BYTES = 16 << 20
"""Largest body of every other route (JSON search, item vectors, admin load)."""
MAX_RESULTS = 1 << 18
"""Largest queries x k of one search request (binary or JSON): 256 queries at the largest k the
router asks (1000) fit; n=4096 x k=10000 (12 s of CPU and a 410 MB answer) does not."""
MAX_VECTOR_IDS = 4096
WRITES_PATH = "/v1/admin/writes"
REPLICATE_PATH = "/v1/admin/writes/replicate"
FENCE_PATH = "/v1/admin/writes/fence"
MAX_WRITE_OPS = 1024
_KNOWN_ROUTES = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/info",
        "/v1/search/json",
        "/v1/items/vectors",
        "/v1/admin/load",
        WRITES_PATH,
        REPLICATE_PATH,
        FENCE_PATH,
        SHARD_PRESTOP_PATH,
    }
)
PRESTOP_PATH = SHARD_PRESTOP_PATH
DRAIN_EXPIRES_AFTER_S = 60.0
"""A drain that no SIGTERM follows ends this long after its wait (a stray call cannot keep a
replica out of service for good)."""
INSTANCE = uuid.uuid4().hex
"""This process's identity in /readyz: a router that sees it change knows the replica restarted
(and takes its applied sequence as it is, not as the highest it has seen)."""
_ANSWER_HEADERS_BASE = [(b"content-type", ANSWER_CONTENT_TYPE.encode())]


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def _error_response(status: int, code: str, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


class SearchJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[list[float]] = Field(min_length=1, max_length=MAX_QUERIES)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[list[str]] | None = None
    timeout_ms: int = Field(0, ge=0, le=600000)
    ef_search: int = Field(0, ge=0, le=65535, description="HNSW ef; 0: the shard's default.")


class VectorsJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] = Field(min_length=1, max_length=MAX_VECTOR_IDS)


class FenceJson(BaseModel):
    """Stop (true) or resume (false) leading new writes."""

    model_config = ConfigDict(extra="forbid")

    fenced: bool


class LoadJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layout_dir: str = Field(min_length=1)
    shard: int | None = Field(None, ge=0, description="Shard to load; default: the one being served.")
    ef_search: int | None = Field(None, ge=1, le=100000)
    wait: bool = Field(False, description="Answer when the swap is done instead of at once (202).")


class WriteOpJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: Literal["upsert", "delete"]
    id: str = Field(min_length=1)
    vector: list[float] | None = None
    metadata: dict[str, Any] | None = None


class LeadJson(BaseModel):
    """Writes for this replica to number (it is the shard's sequence authority)."""

    model_config = ConfigDict(extra="forbid")

    ops: list[WriteOpJson] = Field(min_length=1, max_length=MAX_WRITE_OPS)


class RecordJson(WriteOpJson):
    seq: int = Field(ge=1)


class ReplicateJson(BaseModel):
    """Records the leader numbered, for a follower to append and apply in order."""

    model_config = ConfigDict(extra="forbid")

    records: list[RecordJson] = Field(min_length=1, max_length=MAX_WRITE_OPS)


def _records(ops: list[WriteOpJson] | list[RecordJson]) -> list[WriteRecord]:
    return [
        WriteRecord(
            getattr(op, "seq", 1),
            op.op,
            op.id,
            None if op.vector is None else tuple(op.vector),
            op.metadata,
        )
        for op in ops
    ]


def _status_code(exc: HTTPException) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
        exc.status_code, "http_error"
    )


@dataclass
class Drain:
    """The pre-stop drain: the kubelet calls `GET /prestop` before it sends SIGTERM. From then on
    `/readyz` fails, so routers (which probe every replica twice a second) stop choosing this one,
    while requests that still arrive are answered; the call returns after `seconds`, and only then
    does the kubelet send SIGTERM, on which uvicorn finishes the requests in flight."""

    seconds: float = 0.0
    expires_after_s: float = DRAIN_EXPIRES_AFTER_S
    _until: float | None = None
    _wait_until: float | None = None

    def start(self, now: float) -> float:
        """Begin (or join) the drain at monotonic time `now`; how long the caller waits."""
        if self._wait_until is None or not self.active(now):
            self._wait_until = now + self.seconds
            self._until = self._wait_until + self.expires_after_s
        return max(self._wait_until - now, 0.0)

    def active(self, now: float) -> bool:
        return self._until is not None and now < self._until


def build_api(
    engine: SearchEngine,
    metrics: ShardMetrics,
    default_shard: int | None,
    admin_token: str | TokenSource | None,
    *,
    lifespan: Any = None,
    drain: Drain | None = None,
    layout_root: Path | None = None,
) -> FastAPI:
    """The FastAPI app behind the binary search route: errors, probes, JSON search, admin load.
    `layout_root`: admin loads take only layouts under it (None: any path the token holder names)."""
    api = FastAPI(title="shardrec shard server", version="1", lifespan=lifespan)
    _add_error_handlers(api)
    _add_probes(api, engine, metrics, drain or Drain())
    tokens = StaticTokens(admin_token) if isinstance(admin_token, str) else admin_token
    _add_json_routes(api, engine, tokens)
    _add_admin_routes(api, engine, default_shard, tokens, layout_root)
    _add_write_routes(api, engine, tokens)
    return api


def _add_error_handlers(api: FastAPI) -> None:
    """Every error as `{"error": {"code", "message"}}`; an engine error keeps its status."""

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = describe_errors(exc.errors(), limit=5)
        return _error_response(422, "invalid_request", problems)

    @api.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error_response(exc.status_code, _status_code(exc), str(exc.detail))

    @api.exception_handler(EngineError)
    async def _engine(_: Request, exc: EngineError) -> JSONResponse:
        return _error_response(exc.status, exc.code, str(exc), 1 if exc.status == 503 else None)


def _add_probes(api: FastAPI, engine: SearchEngine, metrics: ShardMetrics, drain: Drain) -> None:
    """/healthz, /readyz, /prestop, /metrics and /v1/info."""

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get(PRESTOP_PATH)
    async def prestop() -> dict[str, str]:
        await asyncio.sleep(drain.start(time.monotonic()))
        return {"status": "drained"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        if drain.active(time.monotonic()):
            return _error_response(503, "draining", "draining before shutdown", 1)
        index = engine.current
        if index is None:
            state = engine.load_status
            message = f"no index loaded ({state.state}{': ' + state.message if state.message else ''})"
            return _error_response(503, "not_ready", message, 1)
        return JSONResponse(
            {
                "status": "ready",
                "version": index.version,
                "layout": index.layout_name,
                "applied_sequence": index.applied_sequence,
                "instance": INSTANCE,
            }
        )

    @api.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/info")
    async def info() -> dict[str, object]:
        index = engine.current
        return {
            "ready": index is not None,
            "index": index.info() if index is not None else None,
            "load": engine.load_status.as_dict(),
            "search_threads": engine.settings.search_threads,
        }


def _add_json_routes(api: FastAPI, engine: SearchEngine, admin_token: TokenSource | None) -> None:
    """The JSON routes: search (for humans and tools), and item vectors by id (for the router's
    /v1/similar only: it exports raw embeddings, so it takes the admin token)."""

    @api.post("/v1/search/json")
    async def search_json(body: SearchJson) -> Any:
        return await _search_json(engine, body)

    @api.post("/v1/items/vectors")
    async def item_vectors(body: VectorsJson, request: Request) -> Any:
        if not _authorized(admin_token, request):
            return _unauthorized()
        return _item_vectors(engine, await engine.settled_index(), body)


def _authorized(admin_token: TokenSource | None, request: Request) -> bool:
    """The admin token(s), compared in constant time; open when the server has none
    (--admin-token and --admin-token-file unset: both runtimes always set one). Two tokens are
    accepted during a rotation (`shardrec.api.credentials`)."""
    if admin_token is None:
        return True
    return accepts(admin_token.tokens(), request.headers.get("authorization", ""))


def _unauthorized() -> JSONResponse:
    return _error_response(401, "unauthorized", "this endpoint needs 'Authorization: Bearer <admin token>'")


def too_costly(n: int, k: int) -> str | None:
    """Why a search of n queries at k is refused (None: it is not)."""
    if n * k > MAX_RESULTS:
        return f"{n} queries x k={k} is {n * k} results, more than {MAX_RESULTS} per request"
    return None


async def _search_json(engine: SearchEngine, body: SearchJson) -> Any:
    index = engine.current
    if index is None:
        raise NotReadyError("no index loaded yet")
    problem = too_costly(len(body.queries), body.k)
    if problem is not None:
        return _error_response(413, "batch_too_large", problem)
    queries = np.asarray(body.queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.dimension:
        lengths = sorted({len(q) for q in body.queries})
        return _error_response(
            400, "bad_dimension", f"queries must have {index.dimension} numbers each, got {lengths}"
        )
    if not np.isfinite(queries).all():
        return _error_response(400, "bad_vector", "queries contain NaN or inf")
    if body.exclude is not None and len(body.exclude) != len(body.queries):
        return _error_response(
            400, "bad_exclude", f"exclude has {len(body.exclude)} lists for {len(body.queries)} queries"
        )
    return await engine.search(
        queries, body.k, body.exclude, body.timeout_ms, binary=False, ef_search=body.ef_search
    )


def _item_vectors(engine: SearchEngine, index: ShardIndex | None, body: VectorsJson) -> Any:
    """`index`: the serving one with no write being applied (hnswlib's get_items must not run
    beside add_items or a resize); called with no await between getting it and reading it."""
    if index is None:
        raise NotReadyError("no index loaded yet")
    found = {item: label for item in body.item_ids if (label := index.label_of.get(item)) is not None}
    vectors = index.index.get_items(list(found.values())) if found else []
    return {
        "version": index.version,
        "layout": index.layout_name,
        "shard": index.shard,
        "dimension": index.dimension,
        "vectors": {item: list(map(float, vector)) for item, vector in zip(found, vectors, strict=True)},
        "missing": [item for item in body.item_ids if item not in found],
    }


def _add_admin_routes(
    api: FastAPI,
    engine: SearchEngine,
    default_shard: int | None,
    admin_token: TokenSource | None,
    layout_root: Path | None,
) -> None:
    """GET /v1/admin/load (where a load is) and POST /v1/admin/load (swap in another index)."""

    @api.get("/v1/admin/load")
    async def load_status(request: Request) -> Any:
        if not _authorized(admin_token, request):
            return _unauthorized()
        return engine.load_status.as_dict()

    @api.post("/v1/admin/load")
    async def load(body: LoadJson, request: Request) -> Any:
        if not _authorized(admin_token, request):
            return _unauthorized()
        if layout_root is not None and not _is_under(Path(body.layout_dir), layout_root):
            return _error_response(
                403,
                "layout_outside_store",
                f"{body.layout_dir} is not under this shard's layout root {layout_root}: a shard loads "
                "only layouts of its cluster's store",
            )
        return await _load(engine, body, default_shard)


def _add_write_routes(api: FastAPI, engine: SearchEngine, admin_token: TokenSource | None) -> None:
    """The write log, behind the admin token: lead (number, append, apply), replicate (append and
    apply numbered records) and read (records after a sequence, for a lagging replica)."""

    @api.post(WRITES_PATH)
    async def lead(body: LeadJson, request: Request) -> Any:
        if not _authorized(admin_token, request):
            return _unauthorized()
        try:
            ops = _records(body.ops)
        except WriteLogError as exc:
            return _error_response(400, "bad_write", str(exc))
        sequences = await engine.lead_writes(ops)
        return {"sequences": sequences, "applied_sequence": engine.applied_sequence()}

    @api.post(REPLICATE_PATH)
    async def replicate(body: ReplicateJson, request: Request) -> Any:
        if not _authorized(admin_token, request):
            return _unauthorized()
        try:
            records = _records(body.records)
        except WriteLogError as exc:
            return _error_response(400, "bad_write", str(exc))
        try:
            applied = await engine.replicate_writes(records)
        except SequenceGapRefusedError as exc:
            answer = error_body(exc.code, str(exc))
            return JSONResponse({**answer, "applied_sequence": exc.applied}, status_code=409)
        return {"applied": applied, "applied_sequence": engine.applied_sequence()}

    @api.post(FENCE_PATH)
    async def fence(body: FenceJson, request: Request) -> Any:
        """Before a newer layout takes over: no new writes, and the last sequence logged, so the
        runtime can carry everything up to it over before the switch (tools/local/carry.py)."""
        if not _authorized(admin_token, request):
            return _unauthorized()
        last = await engine.fence_writes(body.fenced)
        return {"fenced": engine.writes_fenced, "last_sequence": last}

    @api.get(WRITES_PATH)
    async def read_log(request: Request, after: int = 0, limit: int = MAX_WRITE_OPS) -> Any:
        if not _authorized(admin_token, request):
            return _unauthorized()
        index = engine.current
        if index is None:
            raise NotReadyError("no index loaded yet")
        log = engine.write_log(index.layout.shards, index.shard)
        records = log.since(max(after, 0), limit=min(max(limit, 1), MAX_WRITE_OPS))
        return {
            "shard": index.shard,
            "last_sequence": log.last_sequence,
            "records": [record.as_dict() for record in records],
        }


def _is_under(path: Path, root: Path) -> bool:
    """Whether `path`, with '..' and symlinks resolved, lies under `root` (resolved too)."""
    return path.resolve().is_relative_to(root.resolve())


async def _load(engine: SearchEngine, body: LoadJson, default_shard: int | None) -> Any:
    shard = body.shard
    if shard is None:
        shard = engine.current.shard if engine.current is not None else default_shard
    if shard is None:
        return _error_response(400, "bad_request", "shard is required: no index is loaded yet")
    if engine.load_status.state == "loading":
        return _error_response(409, "load_in_progress", f"already loading {engine.load_status.layout_dir}")
    task = asyncio.create_task(engine.load(Path(body.layout_dir), shard, body.ef_search))
    if not body.wait:
        task.add_done_callback(_ignore_result)
        return JSONResponse({"status": "loading", "layout_dir": body.layout_dir, "shard": shard}, 202)
    try:
        loaded = await task
    except LoadRejectedError as exc:
        return _error_response(409, exc.code, str(exc))
    return {"status": "done", "index": loaded.info()}


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # failures are in load_status and the metrics; mark as retrieved


class ShardServer:
    """The ASGI application: the binary search route, then FastAPI for everything else."""

    def __init__(self, engine: SearchEngine, metrics: ShardMetrics, api: FastAPI) -> None:
        self.engine = engine
        self.metrics = metrics
        self.api = api
        self._search_ok = metrics.requests.labels("search", "200")
        self._search_latency = metrics.latency.labels("search")
        self._route_latency = {route: metrics.latency.labels(route) for route in _KNOWN_ROUTES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SEARCH_PATH:
            if scope["method"] == "POST":
                await self._search(scope, receive, send)
            else:
                await self._error(send, 405, "method_not_allowed", f"{SEARCH_PATH} takes POST")
        elif scope["type"] == "http":
            await self._counted(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        route = path if path in _KNOWN_ROUTES else "other"
        status = 500
        started = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > MAX_JSON_BODY_BYTES:
                await self._error(
                    send_and_note,
                    413,
                    "body_too_large",
                    f"body exceeds {MAX_JSON_BODY_BYTES} bytes",
                    route=route,
                )
                return
            await self.api(scope, _bounded(receive, MAX_JSON_BODY_BYTES), send_and_note)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            if route != "other":
                self._route_latency[route].observe(time.perf_counter() - started)

    async def _search(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            size = len(body)
            while message.get("more_body", False):
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    await self._error(send, 413, "body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
                    return
                chunks.append(chunk)
            body = b"".join(chunks)
        started = time.perf_counter()
        index = self.engine.current
        if index is None:
            await self._error(send, 503, "not_ready", "no index loaded yet", retry_after=True)
            return
        if not _has_content_type(scope, REQUEST_CONTENT_TYPE):
            await self._error(
                send, 415, "unsupported_media_type", f"send {REQUEST_CONTENT_TYPE}, or use /v1/search/json"
            )
            return
        try:
            request = decode_request(body, max_queries=MAX_QUERIES, max_k=MAX_K, dimension=index.dimension)
            problem = too_costly(len(request.queries), request.k)
            if problem is not None:
                await self._error(send, 413, "batch_too_large", problem)
                return
            answer = await self.engine.search(
                request.queries,
                request.k,
                request.exclude,
                request.timeout_ms,
                binary=True,
                ef_search=request.ef_search,
            )
        except WireError as exc:
            await self._error(send, 400, "bad_request", str(exc))
            return
        except EngineError as exc:
            await self._error(send, exc.status, exc.code, str(exc), retry_after=exc.status == 503)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_ANSWER_HEADERS_BASE, (b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})
        self._search_ok.inc()
        self._search_latency.observe(time.perf_counter() - started)

    async def _error(
        self,
        send: Send,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: bool = False,
        route: str = "search",
    ) -> None:
        body = json.dumps(error_body(code, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if route == "search":
            self.metrics.requests.labels("search", str(status)).inc()


def _has_content_type(scope: Scope, wanted: str) -> bool:
    expected = wanted.encode()
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip() == expected)
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _bounded(receive: Receive, limit: int) -> Receive:
    """`receive` that refuses (413) a body growing past `limit` bytes, Content-Length or not."""
    size = 0

    async def bounded() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise HTTPException(413, f"body exceeds {limit} bytes")
        return message

    return bounded
