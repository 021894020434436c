"""The supervisor's kept-alive connections to its shards (the readiness prober's and the carry's):
`drop_connections` closes them, so a child stopped right after does not wait for them (a shard's
graceful stop waits for the TLS close of every connection, and the supervisor, waiting for the
stop, does not answer a pooled one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from shardrec.tools.local.carry import LocalCarry
from shardrec.tools.local.probes import ReadinessProber
from shardrec.tools.local.state import StateDir

WAIT_S = 10.0


class _Child(BaseHTTPRequestHandler):
    """Answers /readyz with keep-alive, as the shards do; counts its open connections."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    open_connections = 0

    def setup(self) -> None:
        super().setup()
        with _Child.lock:
            _Child.open_connections += 1

    def finish(self) -> None:
        super().finish()
        with _Child.lock:
            _Child.open_connections -= 1

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        """A leader's answer to a fence."""
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"fenced": true, "last_sequence": 0}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def child() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Child)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _open_after(wanted: int) -> int:
    """The child's open connections once they are `wanted`, or after WAIT_S (a close is seen by
    the child's thread a moment after the prober made it)."""
    deadline = time.monotonic() + WAIT_S
    while _Child.open_connections != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    return _Child.open_connections


def test_drop_connections_closes_the_kept_alive_connections(child: str) -> None:
    prober = ReadinessProber()
    try:
        prober.probe([child], child)
        assert prober.is_ready(child)
        assert _Child.open_connections >= 1, "the probes' connections are kept alive"
        prober.drop_connections()
        assert _open_after(0) == 0
        prober.probe([child], child)  # a new client: probing goes on after the drop
        assert prober.is_ready(child)
    finally:
        prober.close()
    assert _open_after(0) == 0


def test_the_carry_drops_its_kept_alive_connections_too(child: str, tmp_path: Path) -> None:
    carry = LocalCarry(StateDir(tmp_path / "state"), httpx.Client, "t0ken")
    try:
        assert carry.fence(child, True)
        assert _Child.open_connections >= 1, "the carry's connections are kept alive"
        carry.drop_connections()
        assert _open_after(0) == 0
        assert carry.fence(child, False)  # a new client: the carry goes on after the drop
    finally:
        carry.close()
    assert _open_after(0) == 0
