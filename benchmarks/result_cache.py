"""The router's result cache and fallback answers under load: cache on vs off, side by side in one run.

    python benchmarks/result_cache.py [--users 100000] [--seconds 10] [--write-doc]

Real processes on 127.0.0.1: one layout on 2 shard servers, and six routers over the same shards:
cache off / on (Zipf rows, default maxInFlight) and, with a small `maxInFlight` (spike rows), cache
and fallback off / cache + cached fallback / popular fallback only / cache + both fallbacks. User
queries follow a Zipf law (s = 1.1 over every user of the layout); wrk replays them. Each router
first gets `--warmup` seconds of the same load (unmeasured, so the cache holds the head of the
distribution, as a router that has served a while does), then the measured run. The spike offers
10x the connections of the normal run against maxInFlight = the normal connection count, for
`--seconds` (bounded). Rates come from each router's own /metrics (deltas over the measured run):
served = 200 without a fallback flag, fallback = answers counted by
shardrec_router_fallback_answers_total, shed = 503.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Server,
    machine_line,
    router_argv,
    run_wrk,
    running,
    shard_argv,
    start_server,
    write_bodies,
    write_marked_section,
)

from shardrec.api.topology import LayoutTopology, ReplicaEndpoint, ShardEndpoints, Topology
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.tools.local.state import atomic_write_text

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- result-cache:begin -->", "<!-- result-cache:end -->"
SHARDS = 2
ZIPF_S = 1.1
CACHE = {"enabled": True, "maxBytes": 64 * 1024 * 1024, "ttlSeconds": 300}


@dataclass(frozen=True)
class Counts:
    ok: float
    shed: float
    other: float
    fallback: float
    popular: float
    hits: float
    misses: float
    cache_bytes: float
    entries: float


@dataclass(frozen=True)
class Measured:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    seconds: float
    delta: Counts


def zipf_users(users: int, count: int, seed: int) -> list[int]:
    """`count` user numbers, user of popularity rank r drawn with probability ~ r^-s (ranks
    shuffled over the users, so popularity does not follow the id order)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, users + 1, dtype=np.float64) ** ZIPF_S
    ranks = rng.choice(users, size=count, p=weights / weights.sum())
    return rng.permutation(users)[ranks].tolist()  # type: ignore[no-any-return]


def user_id(number: int) -> str:
    return f"user-{number:07d}"


SEEN_PER_USER = 5


def build(work: Path, users: int, items: int, dimension: int) -> Path:
    """The layout; each user has seen SEEN_PER_USER items drawn Zipf-like over the items, so the
    build stores a popular list (the popular fallback's answers)."""
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, items + 1, dtype=np.float64) ** ZIPF_S
    seen_items = rng.choice(items, size=(users, SEEN_PER_USER), p=weights / weights.sum())
    source = write_embeddings_dir(
        work / "embeddings",
        rng.normal(size=(items, dimension)).astype(np.float32),
        [f"item-{i}" for i in range(items)],
        users=rng.normal(size=(users, dimension)).astype(np.float32),
        user_ids=[user_id(u) for u in range(users)],
        seen=((user_id(u), f"item-{i}") for u in range(users) for i in seen_items[u]),
    )
    out = work / "layout"
    build_layout(source, out, version="v1", shards=SHARDS, metric="ip", progress=False)
    return out


def topology(layout: Path, dimension: int, shards: Sequence[Server]) -> Topology:
    active = LayoutTopology(
        layout=layout.name,
        version="v1",
        shards=SHARDS,
        dimension=dimension,
        metric="ip",
        artifact_dir=str(layout),
        endpoints=[
            ShardEndpoints(shard=s, replicas=[ReplicaEndpoint(name=f"s{s}", url=shards[s].url)])
            for s in range(SHARDS)
        ],
    )
    return Topology(revision=1, active=active)


def counts(url: str) -> Counts:
    text = httpx.get(url + "/metrics", timeout=5).text

    def total(name: str, *labels: str) -> float:
        value = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {" and all(label in line for label in labels):
                value += float(line.rsplit(" ", 1)[1])
        return value

    requests = "shardrec_router_requests_total"
    ok = total(requests, 'code="200"')
    shed = total(requests, 'code="503"')
    return Counts(
        ok=ok,
        shed=shed,
        other=total(requests) - ok - shed,
        fallback=total("shardrec_router_fallback_answers_total"),
        popular=total("shardrec_router_fallback_answers_total", 'source="popular"'),
        hits=total("shardrec_router_cache_hits_total"),
        misses=total("shardrec_router_cache_misses_total"),
        cache_bytes=total("shardrec_router_cache_bytes"),
        entries=total("shardrec_router_cache_entries"),
    )


def load(work: Path, router: Server, bodies: tuple[Path, int], seconds: float, connections: int) -> Measured:
    before = counts(router.url)
    result, _ = run_wrk(
        work, router.url + "/v1/recommend", "/v1/recommend", "application/json", *bodies,
        seconds=seconds, connections=connections,
    )  # fmt: skip
    after = counts(router.url)
    delta = Counts(
        ok=after.ok - before.ok,
        shed=after.shed - before.shed,
        other=after.other - before.other,
        fallback=after.fallback - before.fallback,
        popular=after.popular - before.popular,
        hits=after.hits - before.hits,
        misses=after.misses - before.misses,
        cache_bytes=after.cache_bytes,
        entries=after.entries,
    )
    return Measured(router.name, result.requests_per_s, result.p50_ms, result.p99_ms, result.seconds, delta)


def zipf_table(rows: Sequence[Measured], users: int, connections: int) -> str:
    lines = [
        f"| router (Zipf s={ZIPF_S} over {users:,} users, wrk -c{connections}) | requests/s | p50 ms "
        "| p99 ms | hit ratio | cache MB | entries |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        d = row.delta
        looked = d.hits + d.misses
        ratio = f"{d.hits / looked:.3f}" if looked else "-"
        size = f"{d.cache_bytes / 2**20:.1f}" if looked else "-"
        entries = f"{d.entries:,.0f}" if looked else "-"
        lines.append(
            f"| {row.name} | {row.requests_per_s:,.0f} | {row.p50_ms:.2f} | {row.p99_ms:.2f} | {ratio} "
            f"| {size} | {entries} |"
        )
    return "\n".join(lines)


def spike_table(rows: Sequence[Measured], connections: int, max_in_flight: int) -> str:
    lines = [
        f"| router (spike: wrk -c{connections}, maxInFlight {max_in_flight}) | served/s | fallback/s "
        "| of which popular/s | shed (503)/s | other/s | answered share | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        d, s = row.delta, row.seconds
        served = d.ok - d.fallback
        total = d.ok + d.shed + d.other
        share = f"{d.ok / total:.3f}" if total else "-"
        lines.append(
            f"| {row.name} | {served / s:,.0f} | {d.fallback / s:,.0f} | {d.popular / s:,.0f} "
            f"| {d.shed / s:,.0f} | {d.other / s:,.0f} | {share} | {row.p99_ms:.2f} |"
        )
    return "\n".join(lines)


INTRO = """## Result cache and fallback answers

Answers are deterministic per (layout, query), so the router may keep them (`spec.router.cache`,
per router replica, LRU by bytes with a TTL) and, when `spec.router.fallback.cached` allows it,
answer a shed request (or, under strict, one with a shard down) from that cache instead of a 503
(docs/router.md). Two shard servers and six routers on this machine's 2 cores (shared with the
load generator); user queries follow Zipf s = 1.1 over every user; each router is warmed with the
same load first (one worker process each). Served = 200 from the shards or a fresh cache hit;
fallback = 200 flagged `fallback: "cached"` or `"popular"` (`spec.router.fallback.popular`: the
layout's most-seen items, stored at index build; each user here has seen 5 items drawn Zipf-like);
shed = 503. wrk is a closed loop: a refused connection asks again at once,
so the spike rows offer far more than 10x the capacity while shedding (a client that honours
Retry-After would offer less); "answered share" is the 200s over all answers."""


def write_doc(text: str, command: str, machine: str) -> None:
    """Replace (or append) this command's marked section of docs/benchmarks.md; `make bench`
    keeps every marked section when it rewrites the rest."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"{BEGIN}\n{INTRO}\n\n`{command}` on {when}, {machine}:\n\n{text}\n{END}"
    write_marked_section(DOC, block)


def start_router(work: Path, name: str, topology_file: Path, router: dict[str, object]) -> Server:
    config = work / f"{name}.json"
    config.write_text(json.dumps({"router": router}))
    # One worker: maxInFlight bounds each worker, and these rows compare with earlier runs.
    return start_server(name, router_argv(topology_file, config, workers=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dimension", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured run")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured load before each run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200_000, help="Zipf queries wrk cycles through")
    parser.add_argument("--write-doc", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args(argv)
    command = " ".join(
        ["python benchmarks/result_cache.py", *(a for a in (argv or []) if a != "--write-doc")]
    )
    spike_connections = 10 * args.connections
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="shardrec-cache-bench-") as tmp:
        work = Path(tmp)
        layout = build(work, args.users, args.items, args.dimension)
        queries = [
            json.dumps({"user_id": user_id(u), "k": 10}).encode()
            for u in zipf_users(args.users, args.requests, seed=11)
        ]
        bodies = write_bodies(work, "zipf", queries)
        servers: list[Server] = []
        with running(servers):
            for shard in range(SHARDS):
                servers.append(start_server(f"shard-{shard}", shard_argv(layout, shard)))
            topology_file = work / "topology.json"
            atomic_write_text(topology_file, topology(layout, args.dimension, servers).model_dump_json())
            small = {"maxInFlight": args.connections}
            routers = {
                "cache off": {},
                "cache on": {"cache": CACHE},
                "spike: cache and fallback off": small,
                "spike: cache + fallback on": {**small, "cache": CACHE, "fallback": {"cached": True}},
                "spike: popular fallback only": {**small, "fallback": {"popular": True}},
                "spike: cache + cached and popular fallback": {
                    **small,
                    "cache": CACHE,
                    "fallback": {"cached": True, "popular": True},
                },
            }
            started = {}
            for name, config in routers.items():
                server = start_router(work, name.replace(" ", "-").replace(":", ""), topology_file, config)
                server.name = name
                servers.append(server)
                started[name] = server
            normal, spike = [], []
            for name, server in started.items():
                load(work, server, bodies, args.warmup, args.connections)
                if name.startswith("spike"):
                    spike.append(load(work, server, bodies, args.seconds, spike_connections))
                else:
                    normal.append(load(work, server, bodies, args.seconds, args.connections))
    text = (
        zipf_table(normal, args.users, args.connections)
        + "\n\n"
        + spike_table(spike, spike_connections, args.connections)
    )
    print(text)
    # These rows are requests/s on a shared machine: the load around the run says how much to
    # trust them (a run beside a busy neighbour once read 9x fewer requests/s with the cache off).
    machine = machine_line(load_start, os.getloadavg()[0])
    print(machine)
    if args.write_doc:
        write_doc(text, command, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
