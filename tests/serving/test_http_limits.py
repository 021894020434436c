"""The connection limits of serving/http_limits.py on a real uvicorn server (127.0.0.1, port 0) with a
tiny echo app: oversized or too many headers get 431, slow headers and slow bodies 408, a silent
connection is closed, and ordinary keep-alive requests are untouched. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from shardrec.serving.http_limits import HttpLimits, _ResponseWriter, guarded_protocol

LIMITS = HttpLimits(
    max_header_bytes=4096, max_headers=20, header_timeout_s=0.3, body_timeout_s=0.3, keep_alive_s=1
)
WAIT_S = 10.0


async def echo(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serving() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(
        echo,
        http=guarded_protocol(LIMITS),
        timeout_keep_alive=int(LIMITS.keep_alive_s),
        lifespan="off",
        log_level="error",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):  # bounded: 10 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT_S)


async def exchange(port: int, *parts: bytes, pause_s: float = 0.0) -> bytes:
    """Send `parts` (pausing between them) while reading, until the server closes or WAIT_S passes;
    returns what the server sent. Stops sending once the server has closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        for part in parts:
            if reading.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(part)
                await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
        await asyncio.wait_for(reading, WAIT_S)
        return bytes(received)
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(body: bytes = b"hi", headers: bytes = b"", close: bool = True) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"POST / HTTP/1.1\r\nhost: x\r\n%s%scontent-length: %d\r\n\r\n%s" % (
        headers,
        connection,
        len(body),
        body,
    )


def run(scenario: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving() as port:
            await scenario(port)

    asyncio.run(main())


def test_ordinary_and_keep_alive_requests_are_answered() -> None:
    async def scenario(port: int) -> None:
        answer = await exchange(port, request(b"a" * 1000, close=False) + request(b"bc"))
        assert answer.count(b"HTTP/1.1 200") == 2
        assert answer.endswith(b"bc")

    run(scenario)


def test_too_many_header_fields_get_431() -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(LIMITS.max_headers + 5))

    async def scenario(port: int) -> None:
        answer = await exchange(port, request(headers=headers))
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
        assert b"headers_too_large" in answer

    run(scenario)


def test_an_oversized_header_block_gets_431_even_before_it_ends() -> None:
    async def scenario(port: int) -> None:
        head = b"POST / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (LIMITS.max_header_bytes * 4)
        answer = await exchange(port, head)  # never finished: the server must not wait for the end
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]

    run(scenario)


def test_slow_headers_get_408() -> None:
    async def scenario(port: int) -> None:
        answer = await exchange(port, b"POST / HTTP/1.1\r\nhost: x\r\n")
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b"request_timeout" in answer

    run(scenario)


def test_a_trickled_body_gets_408_though_every_byte_arrives_within_the_timeout() -> None:
    async def scenario(port: int) -> None:
        head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
        # One byte every 0.1 s: no single read waits long, the body as a whole is too slow.
        answer = await exchange(port, head, *[b"x"] * 20, pause_s=0.1)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b"request body not received" in answer

    run(scenario)


def test_a_silent_connection_is_closed() -> None:
    async def scenario(port: int) -> None:
        assert await exchange(port) == b""  # closed by the server within WAIT_S, nothing sent

    run(scenario)


class _Transport:
    """What the writer sends on: every write() (one send() each on a real socket)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_a_response_head_and_body_leave_in_one_write_and_a_lone_write_by_the_next_iteration() -> None:
    async def main() -> None:
        transport = _Transport()
        writer = _ResponseWriter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        writer.write(b"hi")
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"]
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")  # a body that comes later
        assert len(transport.writes) == 1
        await asyncio.sleep(0)
        assert transport.writes[1:] == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
        writer.write(b"last")
        writer.close()  # held bytes go first
        assert transport.writes[2:] == [b"last"]
        assert transport.closed
        assert writer.get_extra_info("peername") == "info:peername"
        await asyncio.sleep(0)
        assert len(transport.writes) == 3

    asyncio.run(main())


def test_the_server_sends_each_response_in_one_segment() -> None:
    """On a real connection: the head and body of a response arrive together in one read."""

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for body in (b"x" * 10, b"y" * 3000):
                writer.write(request(body, close=False))
                await writer.drain()
                first = await asyncio.wait_for(reader.read(65536), WAIT_S)
                assert first.startswith(b"HTTP/1.1 200")
                assert first.endswith(body)
        finally:
            writer.close()

    run(scenario)
