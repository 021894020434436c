"""A minimal HTTP/1.1 keep-alive client over asyncio protocols, for the router -> shard hop.

The router talks to its own shard servers only, so it needs just: POST/GET, Content-Length
bodies, keep-alive and a connection pool. Doing that in one small Protocol (one future per
request, no stream reader, no header objects) is measured by `make bench-ab` against
httpx.AsyncClient doing the same binary searches on a real shard server: httpx used about 28x
this client's CPU per request (geometric mean; 15x for batches of 64 at k=100, 44x for single
queries at k=100, in the run of 2026-12-07; docs/benchmarks.md has the latest), and client CPU is
what limits a Python router. Not a general HTTP client: no redirects, no chunked bodies (shard
servers always send Content-Length). TLS
(`https://` with an `ssl.SSLContext`) is asyncio's own: the handshake happens once per pooled
connection, so its cost is per connection, and the per-request cost is the record encryption
(measured by `make bench-tls`, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit


class HttpError(ConnectionError):
    """The connection failed or the peer broke the protocol (retryable on another replica)."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._status = 0
        self._need = -1
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None:
            self._fail(HttpError("data received with no request outstanding"))
            return
        self._advance()

    def _advance(self) -> None:
        buffer = self._buffer
        if self._need < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            del buffer[: end + 4]
            try:
                self._status = int(lines[0].split(b" ", 2)[1])
            except (IndexError, ValueError):
                self._fail(HttpError(f"bad status line {lines[0][:80]!r}"))
                return
            need = -1
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    need = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    self._keep_alive = False
                elif name == b"transfer-encoding":
                    self._fail(HttpError("chunked responses are not supported"))
                    return
            if need < 0:
                self._fail(HttpError("response without Content-Length"))
                return
            self._need = need
        if len(buffer) < self._need:
            return
        body = bytes(buffer[: self._need])
        del buffer[: self._need]
        waiter, self._waiter, self._need = self._waiter, None, -1
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body, self._keep_alive))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(HttpError(f"connection closed ({exc or 'by peer'})"))

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        if self.transport is None or self._waiter is not None:
            raise HttpError("connection is not usable")
        self._waiter = asyncio.get_running_loop().create_future()
        self._keep_alive = True
        self.transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Keep-alive connections to one `http://host:port`, at most `max_connections` open at once.

    A free connection goes straight to the next waiting request (no lock round trip), and the
    deadline is one timer on the request's future rather than a timeout context per call.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 64,
        connect_timeout_s: float = 1.0,
        extra_headers: dict[str, str] | None = None,
        bearer: Callable[[], str | None] | None = None,
        tls: ssl.SSLContext | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        """`bearer`: called per request for the token to send (`Authorization: Bearer`), so a
        rotated token is picked up without new connections. `tls`: connect with TLS (an
        `https://` URL requires it); `tls_server_name`: the name the certificate must hold, when
        it is not the URL's host."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"shard URL must look like http(s)://host:port, got {base_url!r}")
        # A scheme the client is not set up for fails every request (the replica is unavailable)
        # rather than the construction: a topology naming https:// shards reaches a router started
        # without --shard-ca, and that must cost the replica, not the router.
        self._misconfigured = (
            None
            if (parts.scheme == "https") == (tls is not None)
            else f"{base_url}: an https:// shard needs a CA (--shard-ca), and only https:// takes one"
        )
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.host = parts.hostname
        self.port = parts.port or (443 if tls is not None else 80)
        self._tls = tls
        self._tls_server_name = tls_server_name or self.host if tls is not None else None
        self._bearer = bearer
        self.prefix = parts.path.rstrip("/").encode()
        self._host_header = f"{self.host}:{self.port}".encode()
        self._extra = [f"{name}: {value}".encode() for name, value in (extra_headers or {}).items()]
        self._idle: list[_Protocol] = []
        self._waiting: deque[asyncio.Future[_Protocol | None]] = deque()
        self._open = 0
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._closed = False

    def _head(self, method: bytes, path: str, content_type: str | None, length: int) -> bytes:
        lines = [b"%s %s%s HTTP/1.1" % (method, self.prefix, path.encode()), b"Host: " + self._host_header]
        lines += self._extra
        if self._bearer is not None and (token := self._bearer()):
            lines.append(b"Authorization: Bearer " + token.encode())
        if content_type is not None:
            lines.append(b"Content-Type: " + content_type.encode())
        if method == b"POST" or length:
            lines.append(b"Content-Length: %d" % length)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _acquire(self, deadline: float) -> tuple[_Protocol, bool]:
        """A live idle connection (reused=True), a new one, or the next one released."""
        while self._idle:
            protocol = self._idle.pop()
            if not protocol.closed:
                return protocol, True
            self._release_slot()
        loop = asyncio.get_running_loop()
        if self._open >= self._max:
            waiter: asyncio.Future[_Protocol | None] = loop.create_future()
            self._waiting.append(waiter)
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    late = waiter.result()  # handed over just as we gave up: pass it on
                    if late is None:
                        self._release_slot()
                    else:
                        self._release(late, keep=True)
                raise
            finally:
                timer.cancel()
            if handed is not None:
                return handed, True
            # None: a freed connection slot was handed over (already counted); open a connection.
        else:
            self._open += 1
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self._connect_timeout_s)):
                _, protocol = await loop.create_connection(
                    _Protocol, self.host, self.port, ssl=self._tls, server_hostname=self._tls_server_name
                )
        except BaseException:
            self._release_slot()
            raise
        return protocol, False

    def _release(self, protocol: _Protocol, keep: bool) -> None:
        if keep and not protocol.closed and not self._closed:
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result(protocol)
                    return
            self._idle.append(protocol)
            return
        protocol.close()
        self._release_slot()

    def _release_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter, still counted
                return
        self._open -= 1

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        timeout_s: float,
        content_type: str | None = None,
    ) -> tuple[int, bytes]:
        """Send one request and return (status, body). Raises TimeoutError past `timeout_s`, and
        HttpError / OSError when the connection fails. A request that fails on a reused idle
        connection before any answer is retried once on a new one: the server may have closed
        an idle keep-alive connection meanwhile (search is idempotent)."""
        if self._closed:
            raise HttpError("client is closed")
        if self._misconfigured is not None:
            raise HttpError(self._misconfigured)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        data = self._head(method.encode(), path, content_type, len(body)) + body
        for attempt in (0, 1):
            protocol, reused = await self._acquire(deadline)
            future = protocol.send(data)
            timer = loop.call_at(deadline, _expire, future)
            try:
                status, answer, keep_alive = await future
            except HttpError:
                self._release(protocol, keep=False)
                if reused and attempt == 0 and loop.time() < deadline:
                    continue
                raise
            except BaseException:
                # Timed out or cancelled mid-request: the stream state is unknown, drop it.
                self._release(protocol, keep=False)
                raise
            finally:
                timer.cancel()
            self._release(protocol, keep=keep_alive)
            return status, answer
        raise HttpError("unreachable")

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(HttpError("client is closed"))


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
