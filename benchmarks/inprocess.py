"""In-process hnswlib baselines over the same partitions the servers use: search every shard of
a layout in this process and max-merge, with no HTTP. Importable by other benchmark scripts
(`from inprocess import InProcessShards, tune_ef, single_query_baseline, batched_baseline`) so
router rows are compared against exactly these numbers.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt
from common import Dataset, ProcessStats, Row, recall_at_k

from shardrec.serving.index.layout import read_layout_manifest
from shardrec.serving.index.shard_index import ShardIndex

Floats = npt.NDArray[np.float32]
EF_CANDIDATES = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass
class InProcessShards:
    """Every shard of a layout loaded in this process (verified like a shard server does)."""

    indexes: list[hnswlib.Index]
    ids: list[npt.NDArray[np.object_]]

    @classmethod
    def load(cls, layout: Path, ef_search: int = 64) -> InProcessShards:
        shards = read_layout_manifest(layout).shards
        loaded = [ShardIndex.load(layout, shard, ef_search=ef_search) for shard in range(shards)]
        return cls([s.index for s in loaded], [np.array(s.ids, dtype=object) for s in loaded])

    def set_ef(self, ef_search: int) -> None:
        for index in self.indexes:
            index.set_ef(ef_search)

    def search_merge(self, queries: Floats, k: int, threads: int = 1) -> npt.NDArray[np.object_]:
        """Top-k item ids per query over all shards. hnswlib distances are "lower is better" for
        every metric and each score is a decreasing function of them, so merging distances is
        the same max-merge of scores that the router does."""
        labels, distances = zip(
            *(index.knn_query(queries, k=k, num_threads=threads) for index in self.indexes), strict=True
        )
        merged = np.concatenate(distances, axis=1)
        names = np.concatenate([ids[found] for ids, found in zip(self.ids, labels, strict=True)], axis=1)
        best = np.argpartition(merged, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(merged, best, axis=1).argsort(axis=1)
        result: npt.NDArray[np.object_] = np.take_along_axis(
            names, np.take_along_axis(best, order, axis=1), axis=1
        )
        return result


def tune_ef(
    shards: InProcessShards, data: Dataset, k: int, target: float = 0.95
) -> tuple[int, float, list[tuple[int, float]]]:
    """Smallest efSearch whose recall@k over the held-out queries reaches `target`."""
    curve: list[tuple[int, float]] = []
    for ef in EF_CANDIDATES:
        if ef < k:
            continue
        shards.set_ef(ef)
        found = shards.search_merge(data.queries, k, threads=os.cpu_count() or 1)
        recall = recall_at_k(found.tolist(), data.exact, data.item_ids)
        curve.append((ef, recall))
        if recall >= target:
            return ef, recall, curve
    return curve[-1][0], curve[-1][1], curve


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    values = np.array(latencies) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def single_query_baseline(
    shards: InProcessShards, queries: Floats, k: int, seconds: float, *, recall: float, ef: int
) -> Row:
    """One query at a time, one thread: search each shard, merge. The floor a router adds to."""
    latencies: list[float] = []
    cpu, wall = time.process_time(), time.perf_counter()
    done = 0
    while time.perf_counter() - wall < seconds:
        query = queries[done % len(queries)][None, :]
        started = time.perf_counter()
        shards.search_merge(query, k, threads=1)
        latencies.append(time.perf_counter() - started)
        done += 1
    elapsed, used = time.perf_counter() - wall, time.process_time() - cpu
    p50, p99 = _percentiles(latencies)
    stats = ProcessStats("in-process", 1000 * used / done, used / elapsed, math.nan, math.nan)
    return Row(
        "in-process hnswlib, single query, 1 thread",
        done / elapsed,
        done / elapsed,
        p50,
        p99,
        recall,
        ef,
        [stats],
        f"{len(shards.indexes)} shards searched + merged per query",
    )


def batched_baseline(
    shards: InProcessShards, queries: Floats, k: int, seconds: float, *, batch: int, recall: float, ef: int
) -> Row:
    """Batches of `batch` queries on every core: one Python thread per core, each calling
    knn_query with num_threads=1 (hnswlib releases the GIL; its own num_threads would start
    threads on every call, which costs more than it gains for batches this size)."""
    workers = len(os.sched_getaffinity(0))
    stop_at = time.perf_counter() + seconds

    def loop(offset: int) -> tuple[int, list[float]]:
        done, start, latencies = 0, offset * batch, []
        while time.perf_counter() < stop_at:
            chunk = queries[start : start + batch]
            if len(chunk) < batch:
                start, chunk = 0, queries[:batch]
            started = time.perf_counter()
            shards.search_merge(chunk, k, threads=1)
            latencies.append(time.perf_counter() - started)
            done += len(chunk)
            start += batch
        return done, latencies

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(loop, range(workers)))
    elapsed, used = time.perf_counter() - wall, time.process_time() - cpu
    done = sum(count for count, _ in results)
    latencies = [value for _, values in results for value in values]
    p50, p99 = _percentiles(latencies)
    requests = len(latencies)
    stats = ProcessStats("in-process", 1000 * used / requests, used / elapsed, math.nan, math.nan)
    return Row(
        f"in-process hnswlib, batches of {batch}, {workers} threads",
        done / elapsed,
        requests / elapsed,
        p50,
        p99,
        recall,
        ef,
        [stats],
        "latency and CPU per batch",
    )
