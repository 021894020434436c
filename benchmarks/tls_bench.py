"""The cost of TLS on the router -> shard hop: `python benchmarks/tls_bench.py` (also `make
bench-tls`). Writes its table into docs/benchmarks.md between the bench-tls markers.

One run, two real shard servers on 127.0.0.1 serving the same shard of the same layout: one plain
HTTP, one HTTPS (a certificate from a fresh per-run CA, `shardrec.api.pki`, ECDSA P-256). The
router's own shard client (`shard/http1.py` ConnectionPool, under uvloop as in the router) sends
the same binary /v1/search bodies to both, interleaved (plain, TLS, TLS, plain, ...) over several
rounds so the shared machine's noise hits both sides. Reported per payload, side by side:

- client CPU µs/request (this process, time.process_time: what the router pays),
- shard CPU µs/request (the server process, /proc/PID/stat),
- p50 and p99 latency (ms) per request at a fixed concurrency over keep-alive connections,
- and, apart, the cost of a new connection (TCP connect + TLS handshake + one small request),
  which keep-alive pooling pays once per connection rather than per request.

The TLS/plain ratios are the result; no assertion, the numbers are recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import numpy as np
from ab import ensure_small_layout, machine_line
from common import REPO, Server, cpu_seconds, shard_argv, stop_servers, write_marked_section

from shardrec.api import pki
from shardrec.serving.tls import client_context

COMMAND = "python benchmarks/tls_bench.py"
PAYLOADS = {"1 query, k=10": (1, 10), "64 queries, k=100": (64, 100)}
CONCURRENCY = 8


@dataclass
class Side:
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    wall: float = 0.0
    requests: int = 0
    latencies: list[float] = field(default_factory=list)

    def us(self, seconds: float) -> float:
        return 1e6 * seconds / max(1, self.requests)

    def percentile(self, q: float) -> float:
        return 1e3 * float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


@dataclass
class Row:
    payload: str
    plain: Side = field(default_factory=Side)
    tls: Side = field(default_factory=Side)


def _start(name: str, argv: Sequence[str], verify: object) -> Server:
    process = subprocess.Popen(list(argv), stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if "listening on " not in line:
        process.kill()
        raise SystemExit(f"{name} did not start: {line!r}")
    server = Server(name, process, line.split()[-1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2, verify=verify).status_code == 200:  # type: ignore[arg-type]
                return server
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{name} not ready within 120 s")


def _issue(folder: Path) -> tuple[Path, Path, Path]:
    now = datetime.now(UTC)
    ca = pki.new_ca("shardrec bench-tls", now)
    server = pki.new_server_cert(ca, ["localhost"], now, ip_addresses=["127.0.0.1"])
    paths = folder / "ca.pem", folder / "tls.crt", folder / "tls.key"
    for path, data in zip(paths, (ca.cert_pem, server.cert_pem, server.key_pem), strict=True):
        path.write_bytes(data)
    return paths


def measure(
    plain: Server, tls: Server, ca: Path, queries: np.ndarray, rounds: int
) -> tuple[list[Row], dict[str, float]]:
    import uvloop

    from shardrec.serving.shard.http1 import ConnectionPool
    from shardrec.serving.shard.wire import REQUEST_CONTENT_TYPE, decode_answer, encode_request

    context = client_context(ca)

    async def main() -> tuple[list[Row], dict[str, float]]:
        pools = {
            "plain": ConnectionPool(plain.url, max_connections=CONCURRENCY),
            "tls": ConnectionPool(tls.url, max_connections=CONCURRENCY, tls=context),
        }
        servers = {"plain": plain, "tls": tls}

        def caller(side: str, latencies: list[float] | None) -> Callable[[bytes], Awaitable[bytes]]:
            pool = pools[side]

            async def call(body: bytes) -> bytes:
                started = time.perf_counter()
                status, answer = await pool.request(
                    "POST", "/v1/search", body, timeout_s=10.0, content_type=REQUEST_CONTENT_TYPE
                )
                if latencies is not None:
                    latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise SystemExit(f"{side} shard answered {status}: {answer[:200]!r}")
                return answer

            return call

        async def burst(call: Callable[[bytes], Awaitable[bytes]], bodies: list[bytes], count: int) -> None:
            counter = iter(range(count))

            async def worker() -> None:
                for n in counter:
                    await call(bodies[n % len(bodies)])

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        rows = []
        try:
            for payload, (n, k) in PAYLOADS.items():
                bodies = [encode_request(queries[i : i + n], k, None, 10_000) for i in range(0, 64, 8)]
                for body in bodies:  # the same answers over both
                    a = decode_answer(await caller("plain", None)(body))
                    b = decode_answer(await caller("tls", None)(body))
                    if not np.array_equal(a.ids, b.ids):
                        raise SystemExit(f"{payload}: plain and TLS shards answered differently")
                for side in ("plain", "tls"):  # warm: every pooled connection opened (handshakes done)
                    await burst(caller(side, None), bodies, 4 * CONCURRENCY)
                row = Row(payload)
                count = 1500 if n == 1 else 150
                for round_ in range(rounds):
                    order = ("plain", "tls") if round_ % 2 == 0 else ("tls", "plain")
                    for side in order:
                        tally: Side = getattr(row, side)
                        server_cpu, cpu, wall = (
                            cpu_seconds(servers[side].pid),
                            time.process_time(),
                            time.perf_counter(),
                        )
                        await burst(caller(side, tally.latencies), bodies, count)
                        tally.client_cpu += time.process_time() - cpu
                        tally.wall += time.perf_counter() - wall
                        tally.server_cpu += cpu_seconds(servers[side].pid) - server_cpu
                        tally.requests += count
                rows.append(row)
        finally:
            for pool in pools.values():
                pool.close()
        return rows, await connection_costs(servers, context)

    return uvloop.run(main())


async def connection_costs(servers: dict[str, Server], context: ssl.SSLContext) -> dict[str, float]:
    """Median ms of a new connection + one small request, plain and TLS (200 each)."""
    from shardrec.serving.shard.http1 import ConnectionPool

    connect = {}
    for side in ("plain", "tls"):
        times = []
        for _ in range(200):
            pool = ConnectionPool(
                servers[side].url, max_connections=1, tls=context if side == "tls" else None
            )
            started = time.perf_counter()
            await pool.request("GET", "/healthz", timeout_s=5.0)
            times.append(time.perf_counter() - started)
            pool.close()
        connect[side] = 1e3 * float(np.median(times))
    return connect


def render(rows: list[Row], connect: dict[str, float], *, machine: str, rounds: int, elapsed: float) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout.strip()
    lines = [
        "| payload | side | client CPU µs/request | shard CPU µs/request | p50 ms | p99 ms | requests/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for name, side in (("plain", row.plain), ("TLS", row.tls)):
            lines.append(
                f"| {row.payload} | {name} | {side.us(side.client_cpu):.0f} | {side.us(side.server_cpu):.0f} "
                f"| {side.percentile(50):.2f} | {side.percentile(99):.2f} | {side.requests / side.wall:.0f} |"
            )
        p, t = row.plain, row.tls
        ratios = (
            t.us(t.client_cpu) / p.us(p.client_cpu),
            t.us(t.server_cpu) / p.us(p.server_cpu),
            t.percentile(50) / p.percentile(50),
            t.percentile(99) / p.percentile(99),
            (t.requests / t.wall) / (p.requests / p.wall),
        )
        lines.append(
            f"| {row.payload} | **TLS/plain** | " + " | ".join(f"**{r:.2f}x**" for r in ratios) + " |"
        )
    table = "\n".join(lines)
    return f"""<!-- bench-tls:begin (written by `{COMMAND}`; edit the script, not this) -->
## TLS on the router -> shard hop

Command: `{COMMAND}` (also `make bench-tls`), run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit
{commit or "unknown"} in {elapsed:.0f} s.

- Machine: {machine}.
- Method: one shard of a 2-shard layout served twice on 127.0.0.1, plain HTTP and HTTPS (per-run CA,
  ECDSA P-256 certificate, TLS 1.2+ as negotiated by Python's ssl: TLS 1.3 here); the router's shard
  client (`shard/http1.py`, uvloop) at {CONCURRENCY} concurrent requests over warm keep-alive
  connections, interleaved over {rounds} rounds. CPU µs/request: this process (client) and the shard
  process (/proc/PID/stat); latency per request; answers checked equal first.

{table}

New connection (TCP connect + handshake + `GET /healthz`, median of 200): plain {connect["plain"]:.2f} ms,
TLS {connect["tls"]:.2f} ms. The router pools keep-alive connections per replica, so this is paid
once per connection, not per request.
<!-- bench-tls:end -->"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench-out")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    layout, queries = ensure_small_layout(args.work_dir)
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as folder:
        ca, cert, key = _issue(Path(folder))
        base = shard_argv(layout, 0, 64, threads=1)
        servers = [
            _start("plain", base, True),
            _start("tls", [*base, "--tls-cert", str(cert), "--tls-key", str(key)], client_context(ca)),
        ]
        try:
            rows, connect = measure(servers[0], servers[1], ca, queries, args.rounds)
        finally:
            stop_servers(servers)
    section = render(
        rows,
        connect,
        machine=machine_line(load_start, os.getloadavg()[0]),
        rounds=args.rounds,
        elapsed=time.monotonic() - started,
    )
    print(section)
    if not args.no_write:
        write_marked_section(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
