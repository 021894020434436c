"""Measured latency of a small local cluster, closed and open loop, to check the tail simulation.

    nice -n 10 python benchmarks/tail_check.py [--items 20000] [--shards 4] [--requests 3000]
        [--clients 1 4] [--rates 50 100 200 300] [--out benchmarks/tail_check.json]

Builds a small layout, starts `--shards` shard servers (one replica, one search thread each) and a
router on 127.0.0.1, then runs, each bounded by `--requests`:
- closed loops of 1 and 4 clients (each sends its next request when the last answered), and
- open loops (Poisson arrivals at a fixed rate; a request is sent when due, whatever is pending).
For every run it records p50/p99 latency, the CPU the router, the shards and this load generator
spent per request (from /proc), the 1-minute load average, and for open loops how late the
generator sent (`send_lag`): the time from a request's due time to its send. Latency is measured
both from the send and from the due time (the second counts the generator's own lateness).
It also records the unloaded per-shard wall latency (sequential `ShardClient` searches), which the
simulation needs to split wall latency into CPU (occupancy) and the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from coefficient_derivation import quantiles_ms
from coefficient_harness import (
    closed_loop,
    log,
    open_loop_run,
    processes,
    shard_latencies,
    start_cluster,
    worker_count,
)
from coefficient_measure import build, make_embeddings
from common import cpu_seconds, group_cpu_seconds

HERE = Path(__file__).resolve().parent
STALL_S = 0.05


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stalls(due_at: list[float], from_due: list[float], slow_s: float = STALL_S) -> dict[str, Any]:
    """Requests slower than `slow_s` and the episodes they cluster in (due within 1 s of each other):
    many slow requests in few episodes is a stall of the serving processes, not queueing."""
    slow = sorted(d for d, latency in zip(due_at, from_due, strict=True) if latency > slow_s)
    episodes = 1 + sum(1 for a, b in itertools.pairwise(slow) if b - a > 1.0) if slow else 0
    return {"slow_requests": len(slow), "slow_over_ms": slow_s * 1000.0, "episodes": episodes}


def warm_up(url: str, users: int) -> None:
    """Until 300 requests in a row succeed: the router's second worker may still be loading."""
    for _ in range(30):
        try:
            asyncio.run(closed_loop(url, 300, 4, users))
            return
        except RuntimeError as failed:
            log(f"warming up: {failed}")
            time.sleep(1.0)
    raise RuntimeError(f"{url} kept failing during the warm-up")


def ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 3)


def one_run(
    kind: str,
    level: float,
    url: str,
    router_pids: list[int],
    shard_pids: list[int],
    *,
    args: argparse.Namespace,
) -> dict[str, Any]:
    router_before = group_cpu_seconds(router_pids)
    shards_before = [cpu_seconds(pid) for pid in shard_pids]
    self_before = self_cpu_seconds()
    started = time.perf_counter()
    row: dict[str, Any] = {"loop": kind}
    if kind == "closed":
        latencies = asyncio.run(closed_loop(url, args.requests, int(level), args.users))
        row["clients"] = int(level)
    else:
        observed = asyncio.run(open_loop_run(url, level, args.requests, args.users, seed=12))
        latencies = observed["from_send"]
        row["offered_qps"] = level
        row["failed_by_status"] = {str(k): v for k, v in sorted(observed["failed"].items())}
        row["p50_from_due_ms"] = ms(observed["from_due"], 50)
        row["p99_from_due_ms"] = ms(observed["from_due"], 99)
        row["send_lag_p50_ms"] = ms(observed["send_lag"], 50)
        row["send_lag_p99_ms"] = ms(observed["send_lag"], 99)
        row["stalls"] = stalls(observed["due_at"], observed["from_due"])
    wall = time.perf_counter() - started
    n = len(latencies)
    row.update(
        {
            "requests": n,
            "achieved_qps": round(n / wall, 1),
            "p50_ms": ms(latencies, 50),
            "p99_ms": ms(latencies, 99),
            "router_cpu_ms": round((group_cpu_seconds(router_pids) - router_before) * 1000.0 / n, 4),
            "shard_cpu_ms": round(
                float(
                    np.mean(
                        [
                            (cpu_seconds(p) - b) * 1000.0 / n
                            for p, b in zip(shard_pids, shards_before, strict=True)
                        ]
                    )
                ),
                4,
            ),
            "loadgen_cpu_ms": round((self_cpu_seconds() - self_before) * 1000.0 / n, 4),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
    )
    log(f"{kind} {level:g}: {json.dumps(row)}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/tail_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dimension", type=int, default=64)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--ef", type=int, default=24)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--shard-samples", type=int, default=2000)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--rates", type=float, nargs="*", default=[50.0, 100.0, 200.0, 300.0])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "tail_check.json")
    args = parser.parse_args(argv)
    if args.requests > 20_000 or any(r > 1000 for r in args.rates):
        parser.error("bounded on purpose: --requests <= 20000 and --rates <= 1000 req/s")
    work = Path(tempfile.mkdtemp(prefix="shardrec-tailcheck-", dir=args.work_dir))
    log(f"working in {work}")
    queries = make_embeddings(work / "emb", args.items, args.dimension, args.users, 200)
    layout = work / "layout"
    build(work / "emb", layout, args.shards, 16, 200)
    runs: list[dict[str, Any]] = []
    with processes(work) as running:
        router_pids, shard_pids, shard_urls, url = start_cluster(running, work, layout, args.ef, "tail")
        warm_up(url, args.users)
        shard_before = cpu_seconds(shard_pids[0])
        unloaded = asyncio.run(shard_latencies(shard_urls[0], args.shard_samples, queries))
        shard_cpu_sequential = (
            (cpu_seconds(shard_pids[0]) - shard_before) * 1000.0 / (args.shard_samples + 200)
        )
        for clients in args.clients:
            runs.append(one_run("closed", clients, url, router_pids, shard_pids, args=args))
        for rate in args.rates:
            runs.append(one_run("open", rate, url, router_pids, shard_pids, args=args))
    result = {
        "command": " ".join(["python benchmarks/tail_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": f"{os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.2f}",
        "shards": args.shards,
        "replicas": 1,
        "search_threads": 1,
        "router_workers": worker_count(router_pids),
        "items": args.items,
        "ef_search": args.ef,
        "unloaded_shard_ms": quantiles_ms(unloaded),
        "unloaded_shard_cpu_ms": round(shard_cpu_sequential, 4),
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
