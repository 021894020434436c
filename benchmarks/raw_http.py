"""The raw HTTP/1.1 the coefficient measurement uses, on purpose below any HTTP library.

- `http_request` + `raw_exchange`: one exchange as bytes, so the wire coefficients count the
  exact bytes a request and its response take (an HTTP library does not expose its request head
  as sent).
- `RawHttp`: the load generator, pre-encoded requests on keep-alive connections, so it spends
  little of the shared CPU it measures on. The coefficients in `benchmarks/coefficients.json`
  were measured with it; another client would shift the latency checks.
"""

from __future__ import annotations

import asyncio
import re
import socket


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send one HTTP/1.1 request as bytes and return the whole response as bytes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.findall(rb"(?i)content-length:\s*(\d+)", head)[0])
        while len(body) < length:
            body += sock.recv(65536)
        return head + b"\r\n\r\n" + body


def http_request(
    url: str, method: str, path: str, body: bytes, content_type: str, *, extra: str = ""
) -> bytes:
    host = url.removeprefix("http://")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


class RawHttp:
    """A minimal keep-alive HTTP/1.1 load client over asyncio streams (pre-encoded requests), so
    the load generator spends little of the shared CPU it measures on."""

    def __init__(self, url: str, max_connections: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.url = url
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)
        self.opened: list[asyncio.StreamWriter] = []

    def recommend(self, user: int, k: int = 10) -> bytes:
        body = b'{"user_id":"user-%07d","k":%d}' % (user, k)
        return http_request(self.url, "POST", "/v1/recommend", body, "application/json")

    async def send(self, request: bytes) -> int:
        """The status code of one exchange."""
        async with self.slots:
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                self.opened.append(writer)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.findall(rb"(?i)content-length:\s*(\d+)", head)[0])
            await reader.readexactly(length)
            self.idle.append((reader, writer))
            return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        for writer in self.opened:
            writer.close()
