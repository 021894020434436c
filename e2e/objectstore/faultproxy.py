"""A fault-injecting HTTP proxy in front of an S3 endpoint, on 127.0.0.1 (standard library only).

SeaweedFS does not throttle on demand, so throttling (503 SlowDown) and expired session credentials
(400 ExpiredToken, as AWS answers) are injected here; everything else is forwarded unchanged (the
Host header included, so SigV4 signatures still verify upstream).

    with FaultProxy.start("http://127.0.0.1:8333") as proxy:
        proxy.fail_next(3, 503, "SlowDown")    # the next 3 requests get 503 SlowDown
        ... point the client at proxy.endpoint ...
        proxy.requests                          # how many requests arrived
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ExpiredToken": "The provided token has expired.",
}


@dataclass
class FaultProxy:
    upstream: str
    server: ThreadingHTTPServer | None = None
    requests: int = 0
    _faults: list[tuple[int, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail_next(self, count: int, status: int, code: str) -> None:
        """Answer the next `count` requests with `status` and an S3 error document of `code`."""
        with self._lock:
            self._faults.extend([(status, code)] * count)

    def _take_fault(self) -> tuple[int, str] | None:
        with self._lock:
            self.requests += 1
            return self._faults.pop(0) if self._faults else None

    @classmethod
    @contextmanager
    def start(cls, upstream: str) -> Iterator[FaultProxy]:
        proxy = cls(upstream)
        target = urlsplit(upstream)
        handler = _handler(proxy, target.hostname or "127.0.0.1", target.port or 80)
        proxy.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        proxy.server.daemon_threads = True
        thread = threading.Thread(target=proxy.server.serve_forever, name="fault-proxy", daemon=True)
        thread.start()
        try:
            yield proxy
        finally:
            proxy.server.shutdown()
            proxy.server.server_close()
            thread.join(timeout=10)


def _handler(proxy: FaultProxy, host: str, port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = proxy._take_fault()
            if fault is not None:
                status, code = fault
                document = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{_MESSAGES.get(code, code)}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)
                return
            upstream = http.client.HTTPConnection(host, port, timeout=300)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in {"connection", "transfer-encoding", "keep-alive"}:
                        self.send_header(name, value)
                chunked = response.getheader("Content-Length") is None and self.command != "HEAD"
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := response.read(1 << 20):
                    if chunked:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    else:
                        self.wfile.write(chunk)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            finally:
                upstream.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815

    return Handler
