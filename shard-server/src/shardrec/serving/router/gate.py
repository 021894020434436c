"""The gate every client request passes, as plain ASGI: API key (401/403), per-key rate limit
(429), body size (413), admission (503 + Retry-After) once the body is in; then the request binds
to the active snapshot and keeps it until it has answered. Also owns the router's shared state and lifecycle.

No request/response objects and no middleware stack on this path: the hot routes are served here
directly (see `RouterApp`). `make bench-ab` measures it against the same router with plain FastAPI
routes taking the same pydantic models as body parameters (benchmarks/ab_router.py): those used
1.98x the router process's CPU per request (geometric mean; 1.61x for batches of 64 at k=100,
2.58x at k=10; docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.types import Receive, Scope, Send

from shardrec.api.topology import RouterServing
from shardrec.serving.credentials import TokenFile
from shardrec.serving.router.admission import Admission
from shardrec.serving.router.auth import Permission
from shardrec.serving.router.config import RouterSettings
from shardrec.serving.router.errors import ApiError, error_body
from shardrec.serving.router.fallback import RECOMMEND_ROUTE, SHED, FallbackAnswer
from shardrec.serving.router.manager import ManagerDeps, TopologyManager
from shardrec.serving.router.metrics import PUBLISH_INTERVAL_S, RouterMetrics
from shardrec.serving.router.ratelimit import FailedAuthThrottle, RateLimiter, retry_after_header
from shardrec.serving.router.service import RouterService
from shardrec.serving.router.serving_report import ServingReporter
from shardrec.serving.router.snapshot import Snapshot
from shardrec.serving.router.topology_source import TopologySource
from shardrec.serving.router.writes import (
    MIN_SEQUENCE_HEADER,
    ItemWriter,
    WritePolicy,
    min_sequence_header,
    writes_disabled,
)

log = logging.getLogger("shardrec.router")

Work = Callable[[bytes, Snapshot], Awaitable[bytes]]
Headers = Iterable[tuple[bytes, bytes]]
_ANONYMOUS = "anonymous"
LAYOUT_ORDER_HEADER = b"x-shardrec-layout-order"
"""On every answer: `<epoch>.<revision>` of the document that made its layout active here."""
CANARY_REPORT_S = 2.0
"""How often a router re-reports its canary measurements on its pod while a canary runs."""
MIN_LAYOUT_ORDER_HEADER = b"x-shardrec-min-layout-order"
"""A client that must never see an older layout echoes the last X-Shardrec-Layout-Order here."""


class RouterState:
    """Everything the routes share; one per app."""

    def __init__(
        self,
        settings: RouterSettings,
        source: TopologySource | None,
        deps: ManagerDeps | None,
        reporter: ServingReporter | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.reporter = reporter
        self.metrics = RouterMetrics()
        self.manager = TopologyManager(
            settings,
            self.metrics,
            deps or default_deps(settings.shard_token, settings.shard_tls, settings.shard_tls_name),
        )
        self.service = RouterService(settings, self.metrics)
        writes = settings.config.writes
        self.writer = ItemWriter(
            WritePolicy(writes.ack, writes.timeout_ms / 1000.0, writes.enabled),
            self.manager.deps.errors,
            self.metrics,
        )
        self.service.writer = self.writer
        self.manager.after_probe = self.writer.catch_up
        self.admission = Admission(settings.config.router.max_in_flight)
        auth = settings.config.auth
        self.limiter = RateLimiter(auth.rate_limit_per_second, auth.rate_limit_burst)
        self.auth_throttle = FailedAuthThrottle()
        self.keys = settings.api_keys
        self.max_body = settings.limits.max_body_bytes
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.reporter is not None:
            self.manager.on_serving_change(self.reporter.report)
            self._tasks.append(loop.create_task(self.reporter.run()))
        if self.source is not None:
            self._tasks.append(loop.create_task(self.source.watch(self.manager.apply, self._topology_error)))
        self._tasks.append(loop.create_task(self.manager.probe_forever()))
        if self.reporter is not None:
            self._tasks.append(loop.create_task(self._report_canary(self.reporter)))
        if self.metrics.directory is not None:
            self._tasks.append(loop.create_task(self._publish()))

    async def _report_canary(self, reporter: ServingReporter) -> None:
        """While a canary runs, re-send the report (with its measurements) every few seconds: the
        operator reads them from the pod annotation like the rest of the report (with several
        workers, each writes its own to the workers' board and the pod's report sums them)."""
        while True:
            await asyncio.sleep(CANARY_REPORT_S)
            if self.manager.canary.route is not None:
                await reporter.report(self.manager.serving())

    async def _publish(self) -> None:
        """With several workers, /metrics is answered by one of them and sums every worker's
        published values: each worker publishes its own (in-flight gauge refreshed) twice a
        second, not only when it answers."""
        while True:
            self.metrics.in_flight.set(self.admission.in_flight)
            self.metrics.publish()
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.metrics.in_flight.set(self.admission.in_flight)
        self.metrics.publish()  # a stopping worker's last counts still reach the pod's sums
        await self.writer.drain()
        await self.manager.close()

    def pod_serving(self) -> RouterServing:
        """What this router pod serves: this process's report, or with several workers the one
        every worker agrees on (`router/workers.py`)."""
        own = self.manager.serving()
        return own if self.reporter is None else self.reporter.pod_serving(own)

    def _topology_error(self, message: str) -> None:
        self.manager.last_error = message
        log.error("topology not applied: %s", message)
        if self.reporter is not None:
            task = asyncio.get_running_loop().create_task(self.reporter.report(self.manager.serving()))
            self._tasks.append(task)

    # --- the gate every client request passes ---------------------------------------------------

    async def process(
        self,
        headers: Headers,
        receive: Receive,
        route: str,
        work: Work,
        client: str = "",
        *,
        permission: Permission = "read",
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One client request through the gate: (status, extra headers, JSON body). `client`: the
        peer's address (wrong API keys are throttled per address); `permission`: what the route
        needs of the API key (writes need `write`, which a router without API keys never grants)."""
        started = time.perf_counter()
        extra: list[tuple[bytes, bytes]] = []
        status = 200
        try:
            length, key_header, authorization, pin, min_sequence = _scan(headers)
            key = self._authenticate(key_header, authorization, client)
            self._authorize(key, permission)
            if self.limiter.enabled:
                wait = self.limiter.acquire(key)
                if wait > 0:
                    self.metrics.rate_limited.inc()
                    raise ApiError(
                        429,
                        "rate_limited",
                        f"API key {key!r} is over its limit of {self.limiter.rate:g} requests/s",
                        {"Retry-After": retry_after_header(wait)},
                    )
            # The body first, then admission: a client trickling its body holds a connection
            # (for at most the body read timeout, serving/http_limits.py), never an admission slot.
            body = await self._read_body(length, receive)
            if not self.admission.try_enter():
                self.metrics.shed.inc()
                self._shed_fallback(route, body, pin)
                raise ApiError(
                    503,
                    "overloaded",
                    f"the router is serving its limit of {self.admission.max_in_flight} requests; "
                    "retry later",
                    {"Retry-After": "1"},
                )
            try:
                snapshot = self.manager.current
                if snapshot is None:
                    raise ApiError(
                        503, "not_ready", "no active index layout yet; retry later", {"Retry-After": "1"}
                    )
                extra.append((LAYOUT_ORDER_HEADER, snapshot.order_header))
                if pin is not None and _behind(snapshot.order, pin):
                    raise ApiError(
                        503,
                        "router_behind",
                        f"this router serves layout order {snapshot.order_header.decode()}, older than the "
                        f"{pin.decode(errors='replace')} the client has seen; retry (another router) now",
                        {"Retry-After": "0"},
                    )
                snapshot.enter()
                token = min_sequence_header.set(min_sequence)
                try:
                    if self.manager.canary.route is None:
                        payload = await work(body, snapshot)
                    else:
                        payload, _ = await self.manager.canary.serve(
                            route, body, snapshot, self.manager.prepared, work
                        )
                finally:
                    min_sequence_header.reset(token)
                    snapshot.leave()
            finally:
                self.admission.leave()
        except FallbackAnswer as answer:
            payload = answer.payload
            extra.append((LAYOUT_ORDER_HEADER, answer.order_header))
        except ApiError as exc:
            status, payload = exc.status, exc.body()
            extra += [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
        except Exception:
            log.exception("unhandled error on %s", route)
            status, payload = 500, error_body("internal_error", "internal error")
        self._observe(route, status, time.perf_counter() - started)
        return status, extra, payload

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: str,
        work: Work,
        *,
        permission: Permission = "read",
    ) -> None:
        """The hot path as plain ASGI: no request/response objects, no middleware stack."""
        peer = scope.get("client")
        status, extra, payload = await self.process(
            scope["headers"], receive, route, work, peer[0] if peer else "", permission=permission
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _authenticate(self, key_header: bytes | None, authorization: bytes | None, client: str) -> str:
        if not self.keys.required:
            return _ANONYMOUS
        wait = self.auth_throttle.wait(client)
        if wait > 0:
            self.metrics.rate_limited.inc()
            raise ApiError(
                429,
                "auth_throttled",
                f"too many wrong API keys from {client or 'this client'}; retry later",
                {"Retry-After": retry_after_header(wait)},
            )
        presented = key_header
        if presented is None and authorization is not None:
            scheme, _, token = authorization.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                presented = token.strip()
        if presented is None:
            raise ApiError(
                401,
                "unauthenticated",
                "an API key is required: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
        name = self.keys.identify(presented.decode("latin-1"))
        if name is None:
            self.auth_throttle.failed(client)
            raise ApiError(403, "forbidden", "the API key is not valid")
        return name

    def _authorize(self, key: str, permission: Permission) -> None:
        if permission == "read" and not self.keys.required:
            return
        writes_off = permission == "write" and not self.writer.policy.enabled
        if not self.keys.required:
            if writes_off:
                raise writes_disabled()
            raise ApiError(
                403,
                "forbidden",
                "item writes need an API key with the write permission; this router has no API keys",
            )
        if not self.keys.allows(key, permission):
            raise ApiError(403, "forbidden", f"the API key {key!r} has no {permission} permission")
        if writes_off:
            raise writes_disabled()  # after the key check: an unknown key learns nothing of the spec

    async def _read_body(self, declared: bytes | None, receive: Receive) -> bytes:
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "bad_content_length", "Content-Length must be a number")
            if int(declared) > self.max_body:
                raise self._too_large()
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "client_disconnected", "the client went away before sending its body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _shed_fallback(self, route: str, body: bytes, pin: bytes | None) -> None:
        """Raises `FallbackAnswer` when a shed /v1/recommend request can be answered from the
        cache (router.fallback.cached) or the popular list (router.fallback.popular); returns when
        it cannot (then the 503 stands). Never for a client pinned to a newer layout than this
        router serves."""
        answers = self.service.answers
        snapshot = self.manager.current
        if route != RECOMMEND_ROUTE or not answers.any_fallback or snapshot is None:
            return
        if pin is not None and _behind(snapshot.order, pin):
            return
        payload = answers.fallback_body(
            snapshot.answer_scope,
            body,
            SHED,
            users=snapshot.users,
            version=snapshot.version,
            shards=snapshot.shards,
        )
        if payload is not None:
            raise FallbackAnswer(payload, snapshot.order_header)

    def _too_large(self) -> ApiError:
        return ApiError(413, "body_too_large", f"request body is larger than {self.max_body} bytes")

    def _observe(self, route: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, status))
        if children is None:
            code = str(status)
            children = self._request_children[(route, status)] = (
                self.metrics.requests.labels(route, code),
                self.metrics.request_seconds.labels(route, code),
            )
        children[0].inc()
        children[1].observe(seconds)


def _scan(
    headers: Headers,
) -> tuple[bytes | None, bytes | None, bytes | None, bytes | None, bytes | None]:
    """Content-Length, X-API-Key, Authorization, the layout pin and the write-sequence pin in one
    pass (ASGI names are lowercase)."""
    length = key = authorization = pin = min_sequence = None
    for name, value in headers:
        if name == b"content-length":
            length = value
        elif name == b"x-api-key":
            key = value
        elif name == b"authorization":
            authorization = value
        elif name == MIN_LAYOUT_ORDER_HEADER:
            pin = value
        elif name == MIN_SEQUENCE_HEADER:
            min_sequence = value
    return length, key, authorization, pin, min_sequence


def _behind(order: tuple[int, int], pin: bytes) -> bool:
    """Whether `order` is older than the client's pin `b"<epoch>.<revision>"` (a malformed pin is
    ignored: it must never fail a request that could be served)."""
    epoch, _, revision = pin.partition(b".")
    try:
        return order < (int(epoch), int(revision))
    except ValueError:
        return False


def default_deps(
    shard_token: str | TokenFile | None = None,
    shard_tls: ssl.SSLContext | None = None,
    shard_tls_name: str | None = None,
) -> ManagerDeps:
    from shardrec.serving.router.shard_link import shard_client_deps

    return shard_client_deps(shard_token, shard_tls, shard_tls_name)
