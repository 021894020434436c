"""One shard server alone under wrk: single-query and batched bodies over the binary protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from common import (
    Dataset,
    ProcessStats,
    Row,
    WrkResult,
    rss_mb,
    run_wrk,
    running,
    shard_argv,
    start_server,
    write_bodies,
)

from shardrec.serving.index.layout import read_layout_manifest
from shardrec.serving.shard.wire import REQUEST_CONTENT_TYPE, encode_request


def _stats(name: str, pid: int, cpu_s: float, result: WrkResult) -> ProcessStats:
    rss, peak = rss_mb(pid)
    return ProcessStats(name, 1000 * cpu_s / result.requests, cpu_s / result.seconds, rss, peak)


def shard_rows(
    work: Path,
    layout: Path,
    data: Dataset,
    *,
    ef: int,
    k: int,
    seconds: float,
    connections: int,
    batch: int = 64,
) -> list[Row]:
    manifest = read_layout_manifest(layout)
    index_mb = (layout / manifest.shard_entries[0].directory / "index.bin").stat().st_size / 2**20
    goal_mb = 1.2 * index_mb + 150
    queries = data.queries
    singles = [encode_request(queries[i : i + 1], k, None, 5000) for i in range(min(512, len(queries)))]
    batches = [encode_request(np.roll(queries, -i * 7, axis=0)[:batch], k, None, 5000) for i in range(64)]
    single_file, single_size = write_bodies(work, "shard-single", singles)
    batch_file, batch_size = write_bodies(work, f"shard-batch{batch}", batches)
    rows: list[Row] = []
    with running([start_server("shard-0", shard_argv(layout, 0, ef))]) as servers:
        shard = servers[0]
        for name, body_file, size, per_request, conns in (
            ("single query", single_file, single_size, 1, connections),
            (f"batches of {batch}", batch_file, batch_size, batch, max(2, connections // 4)),
        ):
            # warm-up so first-connection and first-touch costs stay out of the numbers
            run_wrk(
                work,
                shard.url,
                "/v1/search",
                REQUEST_CONTENT_TYPE,
                body_file,
                size,
                seconds=1,
                connections=conns,
            )
            result, used = run_wrk(
                work,
                shard.url,
                "/v1/search",
                REQUEST_CONTENT_TYPE,
                body_file,
                size,
                seconds=seconds,
                connections=conns,
                watch=[shard.pid],
            )
            wrk = ProcessStats("wrk", result.wrk_cpu_ms_per_request, math.nan, math.nan, math.nan)
            stats = _stats("shard", shard.pid, used[shard.pid], result)
            rows.append(
                Row(
                    f"shard server alone (shard 0 of {manifest.shards}), {name}, wrk -c{conns}",
                    result.requests_per_s * per_request,
                    result.requests_per_s,
                    result.p50_ms,
                    result.p99_ms,
                    math.nan,
                    ef,
                    [stats, wrk],
                    f"errors {result.errors}; index {index_mb:.0f} MB, RSS goal <= {goal_mb:.0f} MB "
                    f"({'met' if stats.peak_rss_mb <= goal_mb else 'MISSED'}: "
                    f"peak {stats.peak_rss_mb:.0f} MB)",
                )
            )
    return rows
