"""`shardrec-shard` and `shardrec-router` print `... listening on http://HOST:PORT` as their first
line; a caller connects right after reading it. The socket must already accept connections then:
it used to be bound but not yet listening until uvicorn started (a test's first request got
'connection refused' now and then)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "module",
    ["shardrec.serving.shard.main", "shardrec.serving.router.main"],
)
def test_the_port_accepts_connections_once_the_line_is_printed(module: str, tmp_path: Path) -> None:
    topology = tmp_path / "topology.json"
    topology.write_text('{"revision": 0}')
    extra = ["--topology-file", str(topology)] if "router" in module else []
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert " listening on http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        # Right away, with no retry: a bound but not listening socket refuses this.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        process.terminate()
        process.wait(15)
        if process.stdout is not None:
            process.stdout.close()
