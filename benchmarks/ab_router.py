"""B side of the router-edge A/B (benchmarks/ab.py): the router with its three POST routes served
the library way, as plain FastAPI routes whose bodies are the pydantic models of
`shardrec.serving.router.schemas`.

    python benchmarks/ab_router.py --topology-file F --router-config C --port 0

Same flags, settings, request models, shard client, scatter/merge, response encoder and uvicorn
configuration as `shardrec-router`; only the edge differs: FastAPI's routing, request object,
header and body parameters instead of the ASGI gate. The gate's
steps are kept (API key, rate limit, admission, snapshot binding, request metrics); the body-size
limit is not (FastAPI has none), which only makes B cheaper. Not a product path: a measurement aid.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Header
from fastapi.responses import Response

from shardrec.serving.router import schemas
from shardrec.serving.router.config import RouterSettings
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.gate import RouterState
from shardrec.serving.router.main import (
    UsageError,
    _loop,
    build_parser,
    server_config,
    settings_from_args,
)
from shardrec.serving.router.parsing import RecommendQuery
from shardrec.serving.router.ratelimit import retry_after_header
from shardrec.serving.router.response import encode_batch
from shardrec.serving.router.service import _prepare
from shardrec.serving.router.snapshot import Snapshot
from shardrec.serving.router.topology_source import TopologySource

JSON = "application/json"


def _query(model: schemas.RecommendRequest) -> RecommendQuery:
    vector = None if model.vector is None else np.asarray(model.vector, dtype=np.float32)
    return RecommendQuery(model.user_id, vector, model.k, model.exclude or [], model.exclude_seen)


def create_library_app(  # noqa: PLR0915 - the three routes, as FastAPI declares them
    settings: RouterSettings, source: TopologySource | None
) -> FastAPI:
    state = RouterState(settings, source, None)
    service = state.service

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="shardrec router (library edge, benchmark B)", lifespan=lifespan)

    async def gated(
        route: str,
        key: str | None,
        authorization: str | None,
        work: Callable[[Snapshot], Awaitable[bytes]],
    ) -> Response:
        started = time.perf_counter()
        headers: dict[str, str] = {}
        status = 200
        try:
            name = state._authenticate(
                None if key is None else key.encode("latin-1"),
                None if authorization is None else authorization.encode("latin-1"),
                "",
            )
            if state.limiter.enabled:
                wait = state.limiter.acquire(name)
                if wait > 0:
                    raise ApiError(
                        429, "rate_limited", "over the limit", {"Retry-After": retry_after_header(wait)}
                    )
            if not state.admission.try_enter():
                raise ApiError(503, "overloaded", "retry later", {"Retry-After": "1"})
            try:
                snapshot = state.manager.current
                if snapshot is None:
                    raise ApiError(503, "not_ready", "no active index layout yet", {"Retry-After": "1"})
                snapshot.enter()
                try:
                    payload = await work(snapshot)
                finally:
                    snapshot.leave()
            finally:
                state.admission.leave()
        except ApiError as exc:
            status, payload, headers = exc.status, exc.body(), exc.headers
        state._observe(route, status, time.perf_counter() - started)
        return Response(payload, status_code=status, headers=headers, media_type=JSON)

    @app.post("/v1/recommend")
    async def recommend(
        body: schemas.RecommendRequest,
        x_api_key: str | None = Header(None),
        authorization: str | None = Header(None),
    ) -> Response:
        async def work(snapshot: Snapshot) -> bytes:
            query = service._resolve(_query(body), snapshot, "")
            results, partial, answered = await service._answer(snapshot, [query])
            return service._encode_one(results[0], snapshot, partial, answered)

        return await gated("/v1/recommend", x_api_key, authorization, work)

    @app.post("/v1/recommend/batch")
    async def recommend_batch(
        body: schemas.BatchRequest,
        x_api_key: str | None = Header(None),
        authorization: str | None = Header(None),
    ) -> Response:
        async def work(snapshot: Snapshot) -> bytes:
            if len(body.queries) > service.max_batch_size:
                raise ApiError(413, "batch_too_large", "too many queries")
            queries = [
                service._resolve(_query(q), snapshot, f"queries[{i}].") for i, q in enumerate(body.queries)
            ]
            blocks = _prepare(queries, snapshot.shards)
            results, partial, answered = await service._scatter_merge(snapshot, blocks, len(queries))
            service.metrics.queries.labels("/v1/recommend/batch").inc(len(queries))
            return encode_batch(results, snapshot.version, partial, answered, snapshot.shards)

        return await gated("/v1/recommend/batch", x_api_key, authorization, work)

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = state.manager.current is not None
        return Response(b"{}", status_code=200 if ready else 503, media_type=JSON)

    return app


def main() -> int:
    args = build_parser().parse_args()
    try:
        settings, source, port = settings_from_args(args)
    except UsageError as exc:
        print(f"ab_router: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((args.host, port))
    print(f"ab_router listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    app = create_library_app(settings, source)
    config = server_config(app, loop=_loop(args.loop), log_level=args.log_level)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
