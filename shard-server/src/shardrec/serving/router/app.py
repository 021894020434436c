"""The router's HTTP edge: `create_app(settings)` builds the FastAPI app.

The three hot POST routes are served by `RouterApp.__call__` straight through the ASGI gate
(`shardrec.serving.router.gate`): no FastAPI routing and no middleware per request; their bodies
are validated by the pydantic models of `schemas` (`parsing`), the same models /docs shows.
Everything else (docs, probes, metrics, 404/405 errors) is plain FastAPI.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from shardrec import __version__
from shardrec.api.errors import describe_errors
from shardrec.serving.router import schemas
from shardrec.serving.router.config import RouterSettings
from shardrec.serving.router.errors import error_body
from shardrec.serving.router.gate import RouterState, Work
from shardrec.serving.router.manager import ManagerDeps
from shardrec.serving.router.serving_report import ServingReporter
from shardrec.serving.router.snapshot import Snapshot
from shardrec.serving.router.topology_source import TopologySource

log = logging.getLogger("shardrec.router")

JSON = "application/json"
ITEMS_PREFIX = "/v1/items/"
ITEMS_ROUTE = "/v1/items/{id}"
DOCS_ASSETS = "/docs/assets"


class RouterApp(FastAPI):
    """FastAPI for docs, probes, metrics and errors; the three POST routes bypass its middleware
    stack (they are declared on it too, so /docs describes them and other methods get 405)."""

    fast_routes: dict[str, tuple[str, Work]]
    gate: RouterState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            entry = self.fast_routes.get(scope["path"])
            if entry is not None:
                await self.gate.serve(scope, receive, send, *entry)
                return
        if (
            scope["type"] == "http"
            and scope["method"] in ("PUT", "DELETE")
            and scope["path"].startswith(ITEMS_PREFIX)
        ):
            await self._item_write(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _item_write(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`PUT`/`DELETE /v1/items/{id}` through the gate, needing the write permission. The id
        is the rest of the path, percent-decoded (so ids with '/' can be written as %2F)."""
        raw = scope.get("raw_path") or scope["path"].encode()
        item_id = unquote(raw.decode("latin-1").split("?", 1)[0][len(ITEMS_PREFIX) :])
        service = self.gate.service
        method = service.put_item if scope["method"] == "PUT" else service.delete_item

        async def work(body: bytes, snapshot: Snapshot) -> bytes:
            return await method(item_id, body, snapshot)

        await self.gate.serve(scope, receive, send, ITEMS_ROUTE, work, permission="write")


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse, "description": description}
    for status, description in {
        400: "Body is not JSON (`invalid_json`), a shard refused this request's queries "
        "(`query_rejected`), or a malformed X-Shardrec-Min-Sequence header (`bad_min_sequence`).",
        401: "No API key (`unauthenticated`).",
        403: "Wrong API key (`forbidden`).",
        404: "Unknown user or item in the active index version (`unknown_user`, `unknown_item`), or "
        "none of recent_items is in it and no known user_id (`unknown_items`).",
        409: "recent_items, but the active layout was built without fold-in (`fold_in_unavailable`).",
        408: "Headers or body not received in time (`request_timeout`); the connection is closed.",
        413: "Body too large (`body_too_large`), or a batch with too many queries or too many results "
        "in all, the sum of its k (`batch_too_large`).",
        422: "A field is invalid (`invalid_request`); the message names it.",
        429: "Rate limit of the API key (`rate_limited`), or too many wrong keys from this address "
        "(`auth_throttled`); see Retry-After.",
        431: "Too many or too large header fields (`headers_too_large`); the connection is closed.",
        503: "Overloaded (`overloaded`), not ready (`not_ready`), (strict) a shard without a live "
        "replica (`shard_unavailable`), or no replica of a shard has applied the writes named by "
        "X-Shardrec-Min-Sequence yet (`replicas_behind`); see Retry-After.",
    }.items()
}


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


@dataclass(frozen=True)
class _GateRoute:
    """One of the three POST routes the gate serves, as /docs describes it."""

    path: str
    name: str
    request: type[BaseModel]
    response: type[schemas._Doc]
    summary: str


_GATE_ROUTES = (
    _GateRoute(
        "/v1/recommend",
        "recommend",
        schemas.RecommendRequest,
        schemas.RecommendResponse,
        "Top-k items for a user or a query vector",
    ),
    _GateRoute(
        "/v1/recommend/batch",
        "recommend_batch",
        schemas.BatchRequest,
        schemas.BatchResponse,
        "Many recommendation queries in one request, all from one index version",
    ),
    _GateRoute(
        "/v1/similar",
        "similar",
        schemas.SimilarRequest,
        schemas.RecommendResponse,
        "Items similar to an item",
    ),
)


def create_app(
    settings: RouterSettings,
    source: TopologySource | None = None,
    deps: ManagerDeps | None = None,
    reporter: ServingReporter | None = None,
) -> FastAPI:
    """The router app. `source` feeds it topologies; `deps` supplies the shard client (defaults to
    `shardrec.serving.shard.client.ShardClient`); `reporter` publishes what it serves (Kubernetes)."""
    state = RouterState(settings, source, deps, reporter)
    app = RouterApp(
        title="shardrec router",
        version=__version__,
        description="Recommendations scatter-gathered over the shards of the active index version.",
        lifespan=_lifespan(state),
        docs_url=None,  # served from local assets below: no CDN
        redoc_url=None,
    )
    app.state.router = state
    app.gate = state
    _add_gate_routes(app, state)
    _add_probes(app, state)
    _add_docs(app)
    _document_bodies(app, state)
    _add_error_handlers(app)
    return app


def _lifespan(state: RouterState) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start the router's state (topology watch, shard clients) with the app, stop it after."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    return lifespan


def _add_gate_routes(app: RouterApp, state: RouterState) -> None:
    """The three POST routes: served by the gate from `app.fast_routes`, and declared on FastAPI
    too, so /docs describes them and a request the fast path misses still reaches the gate."""
    service = state.service
    works: dict[str, Work] = {
        "/v1/recommend": service.recommend,
        "/v1/recommend/batch": service.recommend_batch,
        "/v1/similar": service.similar,
    }
    app.fast_routes = {path: (path, work) for path, work in works.items()}
    for route in _GATE_ROUTES:
        app.post(
            route.path,
            name=route.name,
            response_model=route.response,
            responses=_ERRORS,
            openapi_extra=_body_doc(route.request),
            summary=route.summary,
        )(_through_gate(state, route.path, works[route.path]))


def _through_gate(state: RouterState, route: str, work: Work) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        # Reached only when the fast path did not match (e.g. a mounted root path).
        peer = request.client.host if request.client else ""
        status, extra, payload = await state.process(
            request.scope["headers"], request.receive, route, work, peer
        )
        headers = {name.decode(): value.decode() for name, value in extra}
        return Response(payload, status_code=status, headers=headers, media_type=JSON)

    return endpoint


def _add_probes(app: FastAPI, state: RouterState) -> None:
    """/healthz, /readyz, /canary and /metrics."""

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get(
        "/readyz",
        summary="An index layout and its user table are active",
        responses={503: {"model": schemas.ErrorResponse, "description": "Not ready (`not_ready`)."}},
    )
    async def readyz() -> Response:
        snapshot = state.manager.current
        if snapshot is None:
            detail = state.manager.last_error or "no topology with an active layout applied yet"
            return Response(error_body("not_ready", detail), status_code=503, media_type=JSON)
        serving = state.pod_serving()
        if serving.layout is None:
            # With several workers this probe reached one of them (SO_REUSEPORT), and the pod's
            # report is its least advanced worker's: ready only once every worker serves a layout,
            # or clients the kernel hands to a worker still loading would get 503s.
            detail = "not every router worker of this pod serves a layout yet"
            if serving.error:
                detail += f": {serving.error}"
            return Response(error_body("not_ready", detail), status_code=503, media_type=JSON)
        return Response(
            orjson.dumps(
                {
                    "status": "ready",
                    "layout": snapshot.layout,
                    "index_version": snapshot.version,
                    "shards": snapshot.shards,
                    "topology_revision": state.manager.revision,
                    # What the local runtime confirms switches from (RouterServing).
                    # With several workers, what every worker of this pod serves (router/workers.py).
                    "serving": serving.model_dump(mode="json"),
                    # Canary measurements (as GET /canary), so one probe carries both.
                    "canary": serving.canary,
                }
            ),
            media_type=JSON,
        )

    @app.get("/canary", summary="Canary measurements of the current step (null without a canary)")
    async def canary() -> Response:
        # Sums over this router's workers (serving/router/workers.py: combine_canary); the local
        # runtime and the operator add the routers' reports up (shardrec.api.canary.merged).
        return Response(orjson.dumps({"canary": state.pod_serving().canary}), media_type=JSON)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        state.metrics.in_flight.set(state.admission.in_flight)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def swagger_assets() -> Path:
    """Swagger UI's files, from the swagger-ui-py package (located without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed (a dependency of shardrec[serving])")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _add_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from files the router serves itself, so it works without internet access."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_assets()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - docs",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )


def _document_bodies(app: FastAPI, state: RouterState) -> None:
    """The documented bodies are referenced by $ref from the gate routes; register them with the
    OpenAPI document. Vectors are documented with the active layout's dimension, so a client (or
    a fuzzer) generating bodies from the document sends ones the router accepts."""
    original_openapi = app.openapi
    by_dimension: dict[int | None, dict[str, Any]] = {}

    def base() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (schemas.RecommendRequest, schemas.BatchRequest, schemas.SimilarRequest):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in model_schema.pop("$defs", {}).items():
                    components.setdefault(name, definition)
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    def openapi() -> dict[str, Any]:
        snapshot = state.manager.current
        dimension = None if snapshot is None else snapshot.dimension
        schema = by_dimension.get(dimension)
        if schema is None:
            schema = base()
            if dimension is not None:
                schema = copy.deepcopy(schema)
                vector = schema["components"]["schemas"]["RecommendRequest"]["properties"]["vector"]
                for option in vector.get("anyOf", []):
                    if option.get("type") == "array":
                        option["minItems"] = option["maxItems"] = dimension
                vector["description"] = f"Or: a query vector of the active index's dimension, {dimension}."
                encoded = schema["components"]["schemas"]["RecommendRequest"]["properties"]["vector_b64"]
                for option in encoded.get("anyOf", []):
                    if option.get("type") == "string":
                        option["minLength"] = option["maxLength"] = schemas.b64_length(dimension)
                encoded["description"] = (
                    f"{schemas.VECTOR_B64_DOC} The active index's dimension is {dimension}: "
                    f"{schemas.b64_length(dimension)} characters."
                )
            by_dimension.clear()  # one layout at a time: keep only the current document
            by_dimension[dimension] = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's own included, as the router's JSON error body."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return Response(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
            media_type=JSON,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return Response(
            error_body("invalid_request", describe_errors(exc.errors())), status_code=422, media_type=JSON
        )

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return Response(error_body("internal_error", "internal error"), status_code=500, media_type=JSON)
