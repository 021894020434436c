"""Connection-level limits for the router's and the shard servers' HTTP/1.1 edge (uvicorn with
httptools), which uvicorn does not have for httptools: header size and count, a header read
timeout, a body read timeout, and an idle timeout from the moment a connection opens.

    limits = HttpLimits(...)
    uvicorn.Config(app, http=guarded_protocol(limits), timeout_keep_alive=limits.keep_alive_s, ...)

What a client that breaks a limit gets, before any application code runs:
    header block over `max_header_bytes`, or more than `max_headers` fields -> 431, connection closed
    headers not complete `header_timeout_s` after the request began           -> 408, connection closed
    body not complete `body_timeout_s` after its headers                      -> 408, connection closed
    nothing sent `keep_alive_s` after connecting (or after the last answer)   -> connection closed
A slow client therefore holds a connection (and a few KB) for a bounded time, and never an
application resource: the router takes its admission slot only after the whole body is in
(`router/gate.py`).

The per-request cost is nothing in the common case (a request arriving in one read): the timers
are armed only when a read ends inside a request's headers or body.

One more thing the protocol does for every response: uvicorn writes a response's status line and
headers (`http.response.start`) and its body as two `transport.write` calls, which on an idle
socket are two send() syscalls and two TCP segments (the peer wakes up for each). The protocol's
transport (`_ResponseWriter`) holds the head until the body follows (in the same event-loop step
for the router's and the shard's answers), so a response leaves in one send(). Held bytes leave
by the next loop iteration at the latest, and before a close.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

_IDLE, _HEAD, _BODY = 0, 1, 2


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 75.0


class _ResponseWriter:
    """The connection's transport as uvicorn's protocol and response cycle use it: a write is held
    until the next one (a response's head until its body) or the next loop iteration, whichever
    comes first, and then leaves joined with it: one send() per response instead of two. Order is
    kept (every write goes through here); close() sends what is held first. Anything else is the
    transport's own."""

    __slots__ = ("_flush_handle", "_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._flush_handle = self._loop.call_soon(self._flush)
            return
        self._held = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.transport.write(held + data)

    def _flush(self) -> None:
        self._flush_handle = None
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def flush(self) -> None:
        """Send what is held now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._held = None
        self.transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + len(self._held or b"")

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _HeaderTooLargeError(Exception):
    """Raised from a parser callback to stop parsing a request whose header block is too big."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `HttpLimits` (see the module doc)."""

    limits = HttpLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's flow control keeps the transport itself; every write goes through the writer.
        self.transport = cast(asyncio.Transport, _ResponseWriter(transport, self.loop))
        self._phase = _IDLE
        self._timer_phase = _IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._header_count = 0
        # uvicorn arms its keep-alive timer only after a response: a connection that never sends
        # a byte would stay open forever.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeaderTooLargeError) or isinstance(
                exc.__cause__, _HeaderTooLargeError
            ):
                self._refuse(431, self._too_large())
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        phase = self._phase
        if phase == _HEAD:
            # A header still being accumulated by the parser is not seen by on_header yet.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, self._too_large())
                return
        if phase != self._timer_phase:
            self._cancel_timer()
            if phase != _IDLE:
                limits = self.limits
                seconds = limits.header_timeout_s if phase == _HEAD else limits.body_timeout_s
                self._timer = self.loop.call_later(seconds, self._expire)
                self._timer_phase = phase

    # --- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._phase = _HEAD
        self._head_bytes = 0
        self._header_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_header_bytes:
            raise _HeaderTooLargeError
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers or self._head_bytes > self.limits.max_header_bytes:
            raise _HeaderTooLargeError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._timer is not None:
            self._cancel_timer()
        super().on_message_complete()

    # --- refusing -------------------------------------------------------------------------------

    def _too_large(self) -> str:
        limits = self.limits
        return (
            f"request header fields too large: at most {limits.max_headers} fields and "
            f"{limits.max_header_bytes} bytes"
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_phase = _IDLE

    def _expire(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == _HEAD:
            self._refuse(408, f"request headers not received within {self.limits.header_timeout_s:g} s")
        elif self._phase == _BODY:
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                self._refuse(408, f"request body not received within {self.limits.body_timeout_s:g} s")
            else:
                self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with a JSON error and close the connection (the request never reaches
        the application, or the application is still waiting for its body)."""
        self._cancel_timer()
        code = {408: "request_timeout", 431: "headers_too_large"}.get(status, "bad_request")
        body = b'{"error":{"code":"%s","message":"%s"}}' % (code.encode(), message.encode())
        self.transport.write(
            b"".join(
                (
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                )
            )
        )
        self.transport.close()


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to pass as uvicorn's `http=`, bound to `limits`."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
