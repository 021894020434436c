"""A/B of the hand-written hot path against the libraries it replaces: `python benchmarks/ab.py`
(also `make bench-ab`). Writes its tables into docs/benchmarks.md between the bench-ab markers.

Each part runs A (hand-written, in the product) and B (the well-kept library) in ONE run on the
same inputs, interleaved: A, B, B, A, A, B ... for several rounds, so that noise from the shared
machine hits both. The number that decides is CPU time per request (process CPU, not wall time):

- shard client: `shard/http1.py` vs `httpx.AsyncClient`, both in this process (CPU via
  time.process_time) doing the same binary /v1/search calls to a real shard server on 127.0.0.1 at
  a fixed concurrency, under uvloop as in the router; requests/s alongside.
- gate: the router process as shipped (the ASGI gate serving the three POST routes, bodies
  validated by `model_validate_json` of the `router/schemas.py` models) vs the same router with
  plain FastAPI routes taking those models as body parameters (benchmarks/ab_router.py); both in
  front of the same real shard servers; CPU of the router process (/proc/PID/stat) per request
  at a fixed concurrency; requests/s alongside.

Dropped after this A/B and so no longer measured here (docs/router.md has the record): the
hand-written request parser (`router/parsing.py`, now pydantic) and the byte-spliced batch
encoder (`router/response.py`, now orjson.dumps of the dict).

Outputs are compared before timing (the same shard answers; router answers byte for byte); a
mismatch stops the run. A part is kept when B needs at least 1.3x A's CPU per request (geometric mean over the
payloads); otherwise it goes back to the library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import numpy as np
from common import REPO, Server, cpu_seconds, running, shard_argv, start_server

from shardrec.api.commands import ROUTER_MODULE, router_arguments

COMMAND = "python benchmarks/ab.py"
THRESHOLD = 1.3
BEGIN = "<!-- bench-ab:begin (written by `python benchmarks/ab.py`; edit the script, not this) -->"
END = "<!-- bench-ab:end -->"
DETAIL_HEADER = (
    "| part | payload | A (hand-written) | B (library) | A CPU µs/request | B CPU µs/request "
    "| B/A | A requests/s | B requests/s |"
)
DETAIL_RULE = "|---|---|---|---|---:|---:|---:|---:|---:|"
VERDICT_HEADER = "| part | module | B/A CPU per request (geometric mean) | verdict |"
VERDICT_RULE = "|---|---|---:|---|"


@dataclass(frozen=True)
class Part:
    key: str  # for --parts
    name: str
    module: str
    a: str
    b: str
    payloads: tuple[str, ...]


PAYLOADS = ("1 query, k=10", "1 query, k=100", "64 queries, k=10", "64 queries, k=100")
SHAPES = {
    payload: (1 if payload.startswith("1 ") else 64, int(payload.rsplit("=", 1)[1])) for payload in PAYLOADS
}
PARTS = (
    Part(
        "client",
        "shard client",
        "serving/shard/http1.py",
        "http1.ConnectionPool",
        "httpx.AsyncClient",
        PAYLOADS,
    ),
    Part(
        "router",
        "gate (router process)",
        "serving/router/gate.py",
        "ASGI gate, model_validate_json",
        "FastAPI route, pydantic body",
        PAYLOADS,
    ),
)


@dataclass
class Tally:
    """CPU seconds, wall seconds and requests of one side, summed over rounds."""

    cpu: float = 0.0
    wall: float = 0.0
    requests: int = 0

    def add(self, cpu: float, wall: float, requests: int) -> None:
        self.cpu += cpu
        self.wall += wall
        self.requests += requests

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / max(1, self.requests)

    @property
    def rate(self) -> float:
        return self.requests / self.wall if self.wall else math.nan


@dataclass
class Result:
    part: str
    payload: str
    a: Tally = field(default_factory=Tally)
    b: Tally = field(default_factory=Tally)
    server: bool = False  # requests/s is meaningful (a server path under load)

    @property
    def ratio(self) -> float:
        return self.b.cpu_us / self.a.cpu_us


# --- data ---------------------------------------------------------------------------------------

ITEMS, DIMENSION, SHARDS = 20_000, 64, 2


def ensure_small_layout(work: Path) -> tuple[Path, np.ndarray]:
    """A small real layout (2 shards) built with the project's own builders, and query vectors."""
    from shardrec.serving.index.build import build_layout
    from shardrec.serving.index.embeddings import write_embeddings_dir
    from shardrec.serving.index.synthetic import clustered

    vectors = clustered(ITEMS + 256, DIMENSION, clusters=40, spread=0.45, seed=11)
    layout = work / f"ab-{ITEMS}x{DIMENSION}-S{SHARDS}"
    if not (layout / "layout.json").exists():
        source = write_embeddings_dir(
            work / f"ab-{ITEMS}x{DIMENSION}", vectors[:ITEMS], [f"item-{i}" for i in range(ITEMS)]
        )
        print(f"building {layout.name} ...", file=sys.stderr, flush=True)
        build_layout(source, layout, version="ab", shards=SHARDS, m=16, ef_construction=100, progress=False)
    return layout, vectors[ITEMS:]


def json_body(queries: np.ndarray, k: int) -> bytes:
    """What a client sends the router: a single query object, or a batch of them."""
    objects = [{"vector": [round(float(x), 6) for x in row], "k": k} for row in queries]
    return json.dumps(objects[0] if len(objects) == 1 else {"queries": objects}).encode()


# --- part: shard client -------------------------------------------------------------------------


def _burst(
    call: Callable[[bytes], Awaitable[bytes]], bodies: Sequence[bytes], count: int, concurrency: int
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        counter = iter(range(count))

        async def worker() -> None:
            for n in counter:
                await call(bodies[n % len(bodies)])

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    return run


def bench_shard_client(shard: Server, queries: np.ndarray, rounds: int, concurrency: int) -> list[Result]:
    import httpx
    import uvloop

    from shardrec.serving.shard.http1 import ConnectionPool
    from shardrec.serving.shard.wire import REQUEST_CONTENT_TYPE, decode_answer, encode_request

    async def main() -> list[Result]:
        pool = ConnectionPool(shard.url, max_connections=concurrency)
        client = httpx.AsyncClient(
            base_url=shard.url,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=10.0,
        )

        async def hand(body: bytes) -> bytes:
            status, answer = await pool.request(
                "POST", "/v1/search", body, timeout_s=10.0, content_type=REQUEST_CONTENT_TYPE
            )
            if status != 200:
                raise SystemExit(f"shard answered {status}: {answer[:200]!r}")
            return answer

        async def library(body: bytes) -> bytes:
            response = await client.post(
                "/v1/search", content=body, headers={"content-type": REQUEST_CONTENT_TYPE}
            )
            if response.status_code != 200:
                raise SystemExit(f"shard answered {response.status_code}: {response.content[:200]!r}")
            return response.content

        async def timed(run: Callable[[], Awaitable[None]], count: int) -> tuple[float, float, int]:
            cpu, wall = time.process_time(), time.perf_counter()
            await run()
            return time.process_time() - cpu, time.perf_counter() - wall, count

        out = []
        try:
            for payload in PAYLOADS:
                rows, k = SHAPES[payload]
                bodies = [encode_request(queries[i : i + rows], k, None, 10_000) for i in range(0, 64, 8)]
                for body in bodies:
                    a, b = decode_answer(await hand(body)), decode_answer(await library(body))
                    if not (np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)):
                        raise SystemExit(f"shard client, {payload}: the two clients got different answers")
                count = 600 if rows == 1 else 60
                await _burst(hand, bodies, concurrency, concurrency)()  # warm both pools
                await _burst(library, bodies, concurrency, concurrency)()
                result = Result("shard client", payload, server=True)
                for round_ in range(rounds):
                    sides = [(hand, result.a), (library, result.b)]
                    for call, tally in sides if round_ % 2 == 0 else sides[::-1]:
                        tally.add(*await timed(_burst(call, bodies, count, concurrency), count))
                out.append(result)
        finally:
            pool.close()
            await client.aclose()
        return out

    return uvloop.run(main())


# --- part: gate (router processes) -----------------------------------------------------------


def _router_files(work: Path, layout: Path, shards: Sequence[Server]) -> tuple[Path, Path]:
    from shardrec.serving.index.layout import read_layout_manifest

    manifest = read_layout_manifest(layout)
    topology = {
        "revision": 1,
        "active": {
            "layout": manifest.layout,
            "version": manifest.version,
            "shards": manifest.shards,
            "dimension": manifest.dimension,
            "metric": manifest.metric,
            "artifact_dir": str(layout),
            "endpoints": [
                {"shard": i, "replicas": [{"name": s.name, "url": s.url}]} for i, s in enumerate(shards)
            ],
        },
    }
    topology_file, config_file = work / "ab-topology.json", work / "ab-router-config.json"
    topology_file.write_text(json.dumps(topology))
    config_file.write_text(
        json.dumps({"router": {"timeoutMs": 10_000, "maxInFlight": 4096, "maxBatchSize": 256}})
    )
    return topology_file, config_file


def router_argvs(topology_file: Path, config_file: Path) -> tuple[list[str], list[str]]:
    """The two routers' command lines, the same flags for both. One worker each: the CPU read is
    one pid's, and `shardrec-router` would otherwise serve from a worker per CPU under an idle
    parent."""
    flags = router_arguments(
        host="127.0.0.1",
        port=0,
        topology_file=str(topology_file),
        router_config=str(config_file),
        workers=1,
    )
    a_argv = [sys.executable, "-m", ROUTER_MODULE, *flags]
    return a_argv, [sys.executable, str(Path(__file__).with_name("ab_router.py")), *flags]


def bench_router(  # noqa: PLR0917 - one call site
    work: Path, layout: Path, shards: Sequence[Server], queries: np.ndarray, rounds: int, concurrency: int
) -> list[Result]:
    import uvloop

    from shardrec.serving.shard.http1 import ConnectionPool

    a_argv, b_argv = router_argvs(*_router_files(work, layout, shards))
    with running([start_server("router-A", a_argv), start_server("router-B", b_argv)]) as (
        router_a,
        router_b,
    ):

        async def main() -> list[Result]:
            # The load generator is the cheapest client here; its CPU is not what is measured.
            pools = {
                router_a.pid: ConnectionPool(router_a.url, max_connections=concurrency),
                router_b.pid: ConnectionPool(router_b.url, max_connections=concurrency),
            }

            def caller(pid: int, route: str) -> Callable[[bytes], Awaitable[bytes]]:
                async def call(body: bytes) -> bytes:
                    status, answer = await pools[pid].request(
                        "POST", route, body, timeout_s=30.0, content_type="application/json"
                    )
                    if status != 200:
                        raise SystemExit(f"router answered {status}: {answer[:300]!r}")
                    return answer

                return call

            async def timed(
                pid: int, run: Callable[[], Awaitable[None]], count: int
            ) -> tuple[float, float, int]:
                cpu, wall = cpu_seconds(pid), time.perf_counter()
                await run()
                return cpu_seconds(pid) - cpu, time.perf_counter() - wall, count

            out = []
            try:
                for payload in PAYLOADS:
                    rows, k = SHAPES[payload]
                    route = "/v1/recommend" if rows == 1 else "/v1/recommend/batch"
                    bodies = [json_body(queries[i : i + rows], k) for i in range(0, 64, 8)]
                    call_a, call_b = caller(router_a.pid, route), caller(router_b.pid, route)
                    for body in bodies:
                        if await call_a(body) != await call_b(body):
                            raise SystemExit(f"gate, {payload}: the two routers answered differently")
                    await _burst(call_a, bodies, 2 * concurrency, concurrency)()
                    await _burst(call_b, bodies, 2 * concurrency, concurrency)()
                    count = 400 if rows == 1 else 40
                    result = Result("gate (router process)", payload, server=True)
                    for round_ in range(rounds):
                        sides = [(router_a.pid, call_a, result.a), (router_b.pid, call_b, result.b)]
                        for pid, call, tally in sides if round_ % 2 == 0 else sides[::-1]:
                            tally.add(*await timed(pid, _burst(call, bodies, count, concurrency), count))
                    out.append(result)
            finally:
                for pool in pools.values():
                    pool.close()
            return out

        return uvloop.run(main())


# --- report -------------------------------------------------------------------------------------


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def verdicts(results: Sequence[Result]) -> dict[str, tuple[float, str]]:
    out = {}
    for part in PARTS:
        ratios = [r.ratio for r in results if r.part == part.name]
        if ratios:
            mean = geometric_mean(ratios)
            out[part.name] = (mean, "keep" if mean >= THRESHOLD else "drop")
    return out


def render_tables(results: Sequence[Result]) -> str:
    parts = {part.name: part for part in PARTS}
    lines = [DETAIL_HEADER, DETAIL_RULE]
    for r in results:
        part = parts[r.part]
        rates = (f"{r.a.rate:,.0f}", f"{r.b.rate:,.0f}") if r.server else ("—", "—")
        lines.append(
            f"| {r.part} | {r.payload} | {part.a} | {part.b} | {r.a.cpu_us:,.1f} | {r.b.cpu_us:,.1f} "
            f"| {r.ratio:.2f}x | {rates[0]} | {rates[1]} |"
        )
    lines += ["", VERDICT_HEADER, VERDICT_RULE]
    for name, (mean, verdict) in verdicts(results).items():
        lines.append(f"| {name} | `{parts[name].module}` | {mean:.2f}x | {verdict} |")
    return "\n".join(lines)


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(
        f"{name} {version(name)}" for name in ("httpx", "fastapi", "pydantic", "uvicorn", "uvloop")
    )


def machine_line(load_start: float, load_end: float) -> str:
    return common.machine_line(
        load_start,
        load_end,
        software=_versions(),
        caveat="a shared, loaded machine: absolute numbers move from run to run, the interleaved "
        "ratios much less",
    )


def render_section(
    results: Sequence[Result], *, machine: str, rounds: int, concurrency: dict[str, int], elapsed: float
) -> str:
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
        ).stdout.strip()
        or "unknown"
    )
    return f"""{BEGIN}
## Hand-written hot path against the libraries (A/B)

Command: `{COMMAND}` (also `make bench-ab`), run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit
{commit} in {elapsed:.0f} s.

- Machine: {machine}.
- Method: A and B in one run on the same inputs, interleaved over {rounds} rounds (A first in half
  of them). CPU µs/request = process CPU time (not wall time) / requests: this process's
  (time.process_time) for the shard client; the router process's (/proc/PID/stat) for the
  gate. B/A >= {THRESHOLD}x (geometric mean over the payloads) keeps
  the hand-written part; below it, the part goes back to the library.
- Inputs: realistic router shapes, {ITEMS:,} items x {DIMENSION} dims in {SHARDS} shards (hnswlib,
  built with `build_layout`): single queries and batches of 64, k=10 and k=100. Outputs are
  checked equal before timing (shard answers; router answers byte for byte).
- Requests/s: shard client at {concurrency["client"]} concurrent requests against one real shard
  server; router at {concurrency["router"]} concurrent requests in front of {SHARDS} real shard servers
  (closed loop from this process). "—": not a server path.
- The request parser and the batch encoder were hand-written too; they lost their A/B and went
  back to pydantic and orjson (the record is in docs/router.md, "Hot path: measured, kept, dropped").

{render_tables(results)}
{END}"""


def write_section(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)


def section_of(text: str) -> str:
    """The bench-ab section of a document (markers included); ValueError when it has none."""
    if BEGIN not in text or END not in text:
        raise ValueError("no bench-ab section")
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="interleaved A/B rounds per payload (default 6)"
    )
    parser.add_argument(
        "--parts", default=",".join(part.key for part in PARTS), help="comma-separated subset"
    )
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench-out")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args()
    selected = set(args.parts.split(","))
    concurrency = {"client": 8, "router": 16}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    layout, queries = ensure_small_layout(args.work_dir)
    results: list[Result] = []
    if selected & {"client", "router"}:
        shard_servers = [start_server(f"shard-{i}", shard_argv(layout, i, 64)) for i in range(SHARDS)]
        with running(shard_servers):
            if "client" in selected:
                results += bench_shard_client(shard_servers[0], queries, args.rounds, concurrency["client"])
            if "router" in selected:
                results += bench_router(
                    args.work_dir, layout, shard_servers, queries, args.rounds, concurrency["router"]
                )
    order = [part.name for part in PARTS]
    results.sort(key=lambda r: order.index(r.part))
    machine = machine_line(load_start, os.getloadavg()[0])
    print(render_tables(results))
    print(f"\nMachine: {machine}", file=sys.stderr)
    if not args.no_write and selected == {part.key for part in PARTS}:
        section = render_section(
            results,
            machine=machine,
            rounds=args.rounds,
            concurrency=concurrency,
            elapsed=time.monotonic() - started,
        )
        write_section(args.out, section)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
