"""Router rows of the benchmark: the router over S shard servers (one replica each) on the same
layout and efSearch as the in-process baselines, under wrk.

    run(context) -> list[Row]     called by benchmarks/run.py (through benchmarks/router_bench.py)

Rows: the single-query endpoint at the harness's concurrency and at four times it (coalescing makes
the router cheaper per request as concurrency grows; the better one is "saturating"); the same
endpoint near half of the saturating load (wrk is closed-loop, so "half" is reached with fewer
connections; the row says which); the batch endpoint at two concurrencies; then concurrency spikes
against a router with a small admission bound (clients honouring Retry-After, and not).
Each row lists CPU ms per request for the router, for all shards together, and for wrk, and its
ratio to the matching in-process baseline. Recall is measured through the router's batch endpoint
against the same exact top-k as the baselines.

Given a context with `baselines` (run.py: the in-process baselines, measured on demand), the
serving issue's three ratio goals are then measured again, interleaved: each round measures the
in-process baselines and the router back to back, in an order that flips every round, so a change
in the shared machine's speed during the run hits both sides of a ratio. `context.headline` gets
the per-round ratios, their medians and a verdict per goal by the median (`headline_table`).
"""

from __future__ import annotations

import base64
import json
import math
import os
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import (
    WRK_SCRIPT,
    ProcessStats,
    Row,
    Server,
    WrkResult,
    cpu_seconds,
    process_group,
    recall_at_k,
    router_argv,
    rss_mb,
    run_wrk,
    running,
    shard_argv,
    start_server,
    write_bodies,
)

from shardrec.api.commands import RouterFlags
from shardrec.serving.index.layout import read_layout_manifest
from shardrec.tools.pipeline.router_client import post_until_served

JSON = "application/json"
HEADLINE_ROUNDS = 5  # medians of 5: one round on a shared machine moves a ratio by up to 10%


@dataclass(frozen=True)
class HeadlineRound:
    """One round of the interleaved pass: the router against the in-process baselines measured
    beside it."""

    single: float  # router single-query requests/s at the saturating concurrency / in-process single q/s
    batched: float  # router batch-endpoint queries/s / in-process batched q/s
    router_cpu: float  # router CPU per single query / the shards' CPU for it
    batched_b64: float  # the same batches with their vectors as vector_b64 / in-process batched q/s


@dataclass(frozen=True)
class Goal:
    label: str
    field: str
    target: float
    at_least: bool  # the ratio must be >= target (else <=)

    def met(self, value: float) -> bool:
        return value >= self.target if self.at_least else value <= self.target


def headline_goals(single_connections: int, batch_connections: int, batch: int) -> tuple[Goal, ...]:
    """The serving issue's ratio goals, named by the rows they compare."""
    return (
        Goal(f"single query, wrk -c{single_connections} / in-process single (>= 0.75)", "single", 0.75, True),
        Goal(
            f"batches of {batch}, wrk -c{batch_connections} / in-process batched (>= 0.9)",
            "batched",
            0.9,
            True,
        ),
        Goal("router CPU per single query / the shards' (<= 0.5)", "router_cpu", 0.5, False),
        Goal(
            f"batches of {batch} as vector_b64, wrk -c{batch_connections} / in-process batched (>= 0.9)",
            "batched_b64",
            0.9,
            True,
        ),
    )


def headline_rounds(
    baselines: Callable[[float], tuple[float, float]],
    router_single: Callable[[float], tuple[float, float]],
    router_batched: Callable[[float], tuple[float, float]],
    *,
    rounds: int,
    seconds: float,
) -> list[HeadlineRound]:
    """`rounds` rounds of: the in-process baselines (single q/s, batched q/s) and the router
    (single requests/s with its CPU ratio to the shards'; batched q/s with vectors as numbers,
    then as base64), back to back; the in-process side goes first in even rounds and last in odd
    ones."""
    measured = []
    for number in range(rounds):
        if number % 2 == 0:
            single_base, batched_base = baselines(seconds)
        (single, cpu_ratio), (batched, batched_b64) = router_single(seconds), router_batched(seconds)
        if number % 2 == 1:
            single_base, batched_base = baselines(seconds)
        measured.append(
            HeadlineRound(single / single_base, batched / batched_base, cpu_ratio, batched_b64 / batched_base)
        )
    return measured


HEADLINE_HEADING = "### The ratio goals, measured interleaved"


def headline_section(rounds: list[HeadlineRound], goals: tuple[Goal, ...], seconds: float) -> str:
    """The interleaved pass as a markdown section: how it was measured, then per goal each
    round's ratio, the median, how many rounds met the goal and the verdict by the median."""
    return f"""{HEADLINE_HEADING}

The serving issue's ratio goals once more, after the rows above, with the router and the
in-process baselines measured back to back in each of {len(rounds)} rounds (the order flips every
round; each measurement {seconds:g} s). On shared cores the machine's speed drifts during a run,
and a baseline measured once at the start can be 10% off by the time the router rows run.

{headline_table(rounds, goals)}"""


def headline_table(rounds: list[HeadlineRound], goals: tuple[Goal, ...]) -> str:
    """Per goal, each round's ratio, the median, how many rounds met the goal and the verdict by
    the median."""
    header = " | ".join(f"round {n}" for n in range(1, len(rounds) + 1))
    lines = [
        f"| goal | {header} | median | rounds met | verdict by the median |",
        "|---|" + "---:|" * (len(rounds) + 2) + "---|",
    ]
    for goal in goals:
        values = [getattr(measured, goal.field) for measured in rounds]
        median = statistics.median(values)
        cells = " | ".join(f"{value:.2f}" for value in values)
        met = sum(goal.met(value) for value in values)
        verdict = "met" if goal.met(median) else "not met"
        lines.append(f"| {goal.label} | {cells} | {median:.2f} | {met} of {len(values)} | {verdict} |")
    return "\n".join(lines)


def _padded(bodies: list[bytes]) -> list[bytes]:
    """wrk's script needs bodies of one size; trailing spaces are valid JSON whitespace."""
    size = max(len(body) for body in bodies)
    return [body + b" " * (size - len(body)) for body in bodies]


def _vector_body(vector: np.ndarray, k: int) -> bytes:
    return json.dumps({"vector": [round(float(x), 6) for x in vector], "k": k}).encode()


def _batch_body(vectors: np.ndarray, k: int) -> bytes:
    queries = [{"vector": [round(float(x), 6) for x in row], "k": k} for row in vectors]
    return json.dumps({"queries": queries}).encode()


def _batch_body_b64(vectors: np.ndarray, k: int) -> bytes:
    """The same queries with their vectors as `vector_b64` (base64 of little-endian float32)."""
    queries = [
        {"vector_b64": base64.b64encode(row.astype("<f4").tobytes()).decode(), "k": k} for row in vectors
    ]
    return json.dumps({"queries": queries}).encode()


def _write_router_bodies(
    work: Path, queries: np.ndarray, k: int, batch: int
) -> tuple[tuple[Path, int], tuple[Path, int], tuple[Path, int]]:
    """wrk's body files: single queries, batches with vectors as numbers, the same batches with
    vectors as base64."""
    singles = _padded([_vector_body(queries[i], k) for i in range(min(512, len(queries)))])
    blocks = [np.roll(queries, -i * 7, axis=0)[:batch] for i in range(32)]
    return (
        write_bodies(work, "router-single", singles),
        write_bodies(work, f"router-batch{batch}", _padded([_batch_body(block, k) for block in blocks])),
        write_bodies(
            work, f"router-batch{batch}-b64", _padded([_batch_body_b64(block, k) for block in blocks])
        ),
    )


def _write_config(
    work: Path,
    layout: Path,
    shards: list[Server],
    batch: int,
    *,
    max_in_flight: int = 4096,
    name: str = "router",
) -> tuple[Path, Path]:
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
                {"shard": i, "replicas": [{"name": server.name, "url": server.url}]}
                for i, server in enumerate(shards)
            ],
        },
    }
    topology_file = work / f"{name}-topology.json"
    topology_file.write_text(json.dumps(topology))
    config_file = work / f"{name}-config.json"
    config_file.write_text(
        json.dumps(
            {
                "router": {
                    "timeoutMs": 5000,
                    "maxInFlight": max_in_flight,
                    "maxBatchSize": max(256, batch),
                    "hedging": {"enabled": True, "afterMs": 50, "budgetPercent": 5},
                }
            }
        )
    )
    return topology_file, config_file


def _recall(router: Server, context: Any) -> float:
    queries, k, batch = context.data.queries, context.k, context.batch
    found: list[list[str]] = []
    with httpx.Client(base_url=router.url, timeout=30) as client:
        for start in range(0, len(queries), batch):
            # A router still loading or shedding for a moment says when to come back.
            response = post_until_served(
                client, "/v1/recommend/batch", content=_batch_body(queries[start : start + batch], k)
            )
            response.raise_for_status()
            found += [[item["item_id"] for item in r["items"]] for r in response.json()["results"]]
    return recall_at_k(found, context.data.exact, context.data.item_ids)


def router_pids(router: Server) -> list[int]:
    """The router's process and its worker processes (router/workers.py), if it has any."""
    return process_group(router.pid)


def _stats(
    router: Server, shards: list[Server], used: dict[int, float], result: WrkResult
) -> list[ProcessStats]:
    per_request = 1000 / result.requests
    group = router_pids(router)
    router_cpu = sum(used.get(pid, 0.0) for pid in group)
    router_rss = [rss_mb(pid) for pid in group]
    shard_cpu = sum(used[s.pid] for s in shards)
    shard_rss = [rss_mb(s.pid) for s in shards]
    return [
        ProcessStats(
            "router" if len(group) == 1 else f"router+{len(group) - 1} workers",
            router_cpu * per_request,
            router_cpu / result.seconds,
            sum(r for r, _ in router_rss),
            sum(p for _, p in router_rss),
        ),
        ProcessStats(
            f"shards x{len(shards)}",
            shard_cpu * per_request,
            shard_cpu / result.seconds,
            sum(r for r, _ in shard_rss),
            sum(p for _, p in shard_rss),
        ),
        ProcessStats("wrk", result.wrk_cpu_ms_per_request, math.nan, math.nan, math.nan),
    ]


def run(
    context: Any, *, workers: int | None = None, sockets: str = "reuseport", spikes: bool = True
) -> list[Row]:
    """The router rows; `workers` (None: the router's default, one per usable CPU) and `sockets`
    are passed as --workers/--worker-sockets, and named in each row then."""
    work: Path = context.work
    layout: Path = context.layout
    k, batch, seconds = context.k, context.batch, context.seconds
    shards_count = read_layout_manifest(layout).shards
    queries = context.data.queries
    (single_file, single_size), (batch_file, batch_size), (b64_file, b64_size) = _write_router_bodies(
        work, queries, k, batch
    )
    shard_servers = [
        start_server(f"shard-{i}", shard_argv(layout, i, context.ef_search)) for i in range(shards_count)
    ]
    rows: list[Row] = []
    with running(shard_servers):
        topology_file, config_file = _write_config(work, layout, shard_servers, batch)
        argv = router_argv(topology_file, config_file, workers=workers)
        label = "router"
        if workers is not None:
            argv += [RouterFlags.WORKER_SOCKETS, sockets]  # router_arguments leaves it at its default
            label = f"router ({workers} worker{'s' if workers > 1 else ''}, {sockets})"
        with running([start_server("router", argv)]) as (router,):
            recall = _recall(router, context)
            watch = [*router_pids(router), *(s.pid for s in shard_servers)]

            def measure(
                body_file: Path, size: int, route: str, connections: int, duration: float
            ) -> tuple[WrkResult, dict[int, float]]:
                run_wrk(work, router.url, route, JSON, body_file, size, seconds=1, connections=connections)
                return run_wrk(
                    work, router.url, route, JSON, body_file, size,
                    seconds=duration, connections=connections, watch=watch,
                )  # fmt: skip

            single_base = context.inprocess_single.queries_per_s
            batch_base = context.inprocess_batched.queries_per_s
            # Coalescing makes the router more efficient as concurrency grows, so "saturating"
            # is the best of the harness's concurrency and four times it.
            runs = []
            for connections in (context.connections, 4 * context.connections):
                result, used = measure(single_file, single_size, "/v1/recommend", connections, seconds)
                runs.append((result.requests_per_s, connections, result, used))
            best = max(runs, key=lambda run: run[0])
            for rate, connections, result, used in runs:
                cpu = _stats(router, shard_servers, used, result)
                rows.append(
                    Row(
                        f"{label}, single query, wrk -c{connections}"
                        + (" (saturating)" if connections == best[1] else ""),
                        rate,
                        rate,
                        result.p50_ms,
                        result.p99_ms,
                        recall,
                        context.ef_search,
                        cpu,
                        f"ratio {rate / single_base:.2f} x in-process single (goal >= 0.75); router CPU "
                        f"per query {cpu[0].cpu_ms_per_request / cpu[1].cpu_ms_per_request:.2f} x the "
                        f"shards' (goal <= 0.5); errors {result.errors}",
                    )
                )
            _, saturating_connections, saturated, _ = best
            half = 0.5 * saturated.requests_per_s
            chosen: tuple[int, WrkResult, dict[int, float]] | None = None
            for connections in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
                result, used_half = measure(
                    single_file, single_size, "/v1/recommend", connections, max(2.0, seconds / 2)
                )
                if chosen is None or result.requests_per_s <= 1.1 * half:
                    chosen = (connections, result, used_half)
                if result.requests_per_s >= 0.9 * half:
                    break
            assert chosen is not None
            connections, result, used_half = chosen
            rows.append(
                Row(
                    f"{label}, single query, wrk -c{connections} (~half load)",
                    result.requests_per_s,
                    result.requests_per_s,
                    result.p50_ms,
                    result.p99_ms,
                    recall,
                    context.ef_search,
                    _stats(router, shard_servers, used_half, result),
                    f"{result.requests_per_s / saturated.requests_per_s:.2f} of the saturating load "
                    f"(wrk -c{saturating_connections}); p99 goal "
                    f"<= 10 ms: {'met' if result.p99_ms <= 10 else 'MISSED'}; errors {result.errors}",
                )
            )
            # The batch rows: vectors as numbers at two concurrencies, then the same batches with
            # base64 vectors (docs/router.md), which is what the encoding saves the router.
            for name, (body_file, body_size), conns in (
                ("", (batch_file, batch_size), max(2, context.connections // 4)),
                ("", (batch_file, batch_size), context.connections),
                (" as vector_b64", (b64_file, b64_size), context.connections),
            ):
                batched, used_batch = measure(body_file, body_size, "/v1/recommend/batch", conns, seconds)
                rows.append(
                    Row(
                        f"{label}, batches of {batch}{name}, wrk -c{conns}",
                        batched.requests_per_s * batch,
                        batched.requests_per_s,
                        batched.p50_ms,
                        batched.p99_ms,
                        recall,
                        context.ef_search,
                        _stats(router, shard_servers, used_batch, batched),
                        f"ratio {batched.requests_per_s * batch / batch_base:.2f} x in-process batched "
                        f"(goal >= 0.9); CPU per batch of {batch}; body {body_size:,} bytes; "
                        f"errors {batched.errors}",
                    )
                )
            if getattr(context, "baselines", None) is not None:
                context.headline = _interleaved(
                    context,
                    lambda duration: measure(
                        single_file, single_size, "/v1/recommend", saturating_connections, duration
                    ),
                    lambda duration: (
                        measure(batch_file, batch_size, "/v1/recommend/batch", context.connections, duration),
                        measure(b64_file, b64_size, "/v1/recommend/batch", context.connections, duration),
                    ),
                    lambda result, used: _stats(router, shard_servers, used, result),
                    saturating_connections,
                )
        if spikes:
            rows += _spike_rows(context, shard_servers, single_file, single_size, recall)
    return rows


def _interleaved(
    context: Any,
    single: Callable[[float], tuple[WrkResult, dict[int, float]]],
    batched: Callable[[float], tuple[tuple[WrkResult, dict[int, float]], tuple[WrkResult, dict[int, float]]]],
    stats: Callable[[WrkResult, dict[int, float]], list[ProcessStats]],
    single_connections: int,
) -> str:
    """The interleaved pass against a running router (see the module doc): its section."""

    def router_single(duration: float) -> tuple[float, float]:
        result, used = single(duration)
        cpu = stats(result, used)
        return result.requests_per_s, cpu[0].cpu_ms_per_request / cpu[1].cpu_ms_per_request

    def router_batched(duration: float) -> tuple[float, float]:
        (numbers, _), (b64, _) = batched(duration)
        return numbers.requests_per_s * int(context.batch), b64.requests_per_s * int(context.batch)

    seconds = max(2.0, context.seconds / 2)
    rounds = headline_rounds(
        context.baselines, router_single, router_batched, rounds=HEADLINE_ROUNDS, seconds=seconds
    )
    goals = headline_goals(single_connections, context.connections, context.batch)
    return headline_section(rounds, goals, seconds)


BACKOFF_LUA = r"""
-- Well-behaved clients: every 503 makes one connection wait Retry-After (1 s) before its next
-- request. (wrk's Lua state is per thread, so the pause goes to the next connection that sends;
-- in aggregate each refusal still costs one second of one client's time.)
local backoffs = 0
response = function(status, headers, body)
  if status == 503 then backoffs = backoffs + 1 end
end
delay = function()
  if backoffs > 0 then
    backoffs = backoffs - 1
    return 1000
  end
  return 0
end
"""


def _wrk_with_backoff(
    work: Path, url: str, bodies: tuple[Path, int], *, seconds: float, connections: int, watch: list[int]
) -> tuple[WrkResult, dict[int, float]]:
    body_file, size = bodies
    script = work / "bodies-backoff.lua"
    script.write_text(WRK_SCRIPT + BACKOFF_LUA)
    env = {**os.environ, "BODY_FILE": str(body_file), "BODY_SIZE": str(size), "BODY_PATH": "/v1/recommend",
           "BODY_TYPE": JSON}  # fmt: skip
    before = {pid: cpu_seconds(pid) for pid in watch}
    process = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
         "-s", str(script), url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    used = {pid: cpu_seconds(pid) - start for pid, start in before.items()}
    output = process.stdout.read().decode() if process.stdout else ""
    if status != 0 or "WRK_RESULT" not in output:
        raise RuntimeError(f"wrk failed: {output}")
    data = json.loads(output.split("WRK_RESULT", 1)[1].strip().splitlines()[0])
    requests = max(1, int(data["requests"]))
    result = WrkResult(
        requests, data["duration_us"] / 1e6, int(data["errors"]), data["p50_us"] / 1000,
        data["p99_us"] / 1000, 1000 * (usage.ru_utime + usage.ru_stime) / requests,
    )  # fmt: skip
    return result, used


def _spike_rows(context: Any, shards: list[Server], body_file: Path, size: int, recall: float) -> list[Row]:
    """Concurrency spikes against a router whose admission bound is 2x the normal concurrency:
    the excess is refused at once with 503 + Retry-After. Two kinds of clients: ones that honour
    Retry-After (10x the normal connections), and ones that retry at once (16x; the worst case,
    where refusals themselves eat the router's CPU). Admitted requests' latency comes from the
    router's own histogram (by status code), so fast refusals do not hide it. Each spike is followed
    by normal load, to show the router recovers by itself."""
    work: Path = context.work
    bound = 2 * context.connections
    topology_file, config_file = _write_config(
        work, context.layout, shards, context.batch, max_in_flight=bound, name="spike"
    )
    rows: list[Row] = []
    with running([start_server("router-spike", router_argv(topology_file, config_file))]) as (router,):
        watch = [*router_pids(router), *(s.pid for s in shards)]
        for factor, honours in ((10, True), (16, False)):
            connections = factor * context.connections
            before = httpx.get(f"{router.url}/metrics", timeout=10).text
            if honours:
                result, used = _wrk_with_backoff(
                    work, router.url, (body_file, size), seconds=context.seconds, connections=connections,
                    watch=watch,
                )  # fmt: skip
            else:
                result, used = run_wrk(
                    work, router.url, "/v1/recommend", JSON, body_file, size,
                    seconds=context.seconds, connections=connections, watch=watch,
                )  # fmt: skip
            after_spike = httpx.get(f"{router.url}/metrics", timeout=10).text
            stats = _stats(router, shards, used, result)
            recovery, _ = run_wrk(
                work, router.url, "/v1/recommend", JSON, body_file, size,
                seconds=max(2.0, context.seconds / 2), connections=context.connections,
            )  # fmt: skip
            shed = _sample(after_spike, "shardrec_router_shed_requests_total") - _sample(
                before, "shardrec_router_shed_requests_total"
            )
            admitted = _bucket_delta(before, after_spike, ('code="200"', 'route="/v1/recommend"'))
            served = result.requests - result.errors
            kind = "clients honour Retry-After" if honours else "clients retry at once (worst case)"
            rows.append(
                Row(
                    f"router, {factor}x spike: wrk -c{connections}, {kind}, maxInFlight {bound}",
                    served / result.seconds,
                    result.requests_per_s,
                    result.p50_ms,
                    result.p99_ms,
                    recall,
                    context.ef_search,
                    stats,
                    f"{served / result.seconds:,.0f}/s answered, {shed / result.seconds:,.0f}/s shed with "
                    f"503; wrk's p50/p99 mix both, answered requests alone: p50 <= "
                    f"{_quantile(admitted, 0.5) * 1000:.1f} ms, p99 <= "
                    f"{_quantile(admitted, 0.99) * 1000:.1f} ms (router histogram buckets); right after: "
                    f"{recovery.requests_per_s:,.0f} req/s, p99 {recovery.p99_ms:.1f} ms, "
                    f"non-2xx {recovery.errors}",
                )
            )
    return rows


def _bucket_delta(before: str, after: str, labels: tuple[str, ...]) -> list[tuple[float, float]]:
    old = dict(_buckets(before, labels))
    return [(bound, count - old.get(bound, 0.0)) for bound, count in _buckets(after, labels)]


def _buckets(metrics: str, labels: tuple[str, ...]) -> list[tuple[float, float]]:
    """Cumulative buckets of shardrec_router_request_duration_seconds with these labels."""
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith("shardrec_router_request_duration_seconds_bucket{") and all(
            label in line for label in labels
        ):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if bound == "+Inf" else float(bound), float(line.split()[-1])))
    return sorted(buckets)


def _quantile(buckets: list[tuple[float, float]], quantile: float) -> float:
    """Upper bound of the bucket holding `quantile` of the observations."""
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= quantile * total:
            return bound
    return math.nan


def _sample(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))
