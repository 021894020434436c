"""The short first measurement of the capacity coefficients (`coefficients.py measure`).

Offline (the index builder and in-process hnswlib): build rate, index file bytes, recall and
search cost by efSearch, resident memory. Then real shard and router processes on 127.0.0.1
(coefficient_harness): CPU per request, the shard latency distribution, bytes on the wire and a
latency check against the tail simulation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from coefficient_derivation import coefficients_from_measurement, quantiles_ms
from coefficient_harness import (
    baselines,
    closed_loop,
    cpu_per_request,
    log,
    open_loop,
    processes,
    shard_latencies,
    start_cluster,
    wire_bytes,
    worker_count,
)

EF_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)
SEARCH_REPEATS = 3


def make_embeddings(folder: Path, items: int, dimension: int, users: int, queries: int) -> np.ndarray:
    """Clustered items and users (ids `item-0000001`, `user-0000001`); returns held-out queries."""
    from shardrec.serving.index.embeddings import write_embeddings_dir
    from shardrec.serving.index.synthetic import clustered

    vectors = clustered(items + queries + users, dimension, seed=7)
    item_ids = [f"item-{i:07d}" for i in range(items)]
    user_ids = [f"user-{u:07d}" for u in range(users)]
    write_embeddings_dir(
        folder,
        np.ascontiguousarray(vectors[:items]),
        item_ids,
        users=np.ascontiguousarray(vectors[items + queries :]) if users else None,
        user_ids=user_ids if users else None,
    )
    return np.ascontiguousarray(vectors[items : items + queries])


def build(embeddings: Path, out: Path, shards: int, m: int, ef_construction: int) -> dict[str, float]:
    from shardrec.serving.index.build import build_layout

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    manifest = build_layout(
        embeddings,
        out,
        version="v1",
        shards=shards,
        metric="cosine",
        m=m,
        ef_construction=ef_construction,
        progress=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"items": manifest.item_count, "wall_s": wall, "cpu_s": cpu}


def index_file_point(dimension: int, m: int, items: int, folder: Path) -> dict[str, Any]:
    import hnswlib

    from shardrec.serving.index.synthetic import clustered

    index = hnswlib.Index(space="cosine", dim=dimension)
    index.init_index(max_elements=items, ef_construction=100, M=m, random_seed=1)
    index.add_items(clustered(items, dimension, seed=3), np.arange(items))
    path = folder / f"index-d{dimension}-m{m}.bin"
    index.save_index(str(path))
    point = {
        "dimension": dimension,
        "m": m,
        "items": items,
        "file_bytes_per_item": path.stat().st_size / items,
    }
    path.unlink()
    return point


def search_sweep(layout: Path, queries: np.ndarray, k: int, items: np.ndarray) -> list[dict[str, Any]]:
    """Recall@k (all shards merged, against brute force) and CPU ms per query per shard by ef."""
    from shardrec.serving.index.scoring import exact_top_k
    from shardrec.serving.index.shard_index import ShardIndex

    layout_json = json.loads((layout / "layout.json").read_text())
    shards = [ShardIndex.load(layout, s, ef_search=64) for s in range(layout_json["shards"])]
    truth = exact_top_k("cosine", queries, items, k)
    truth_ids = [{f"item-{i:07d}" for i in row} for row in truth.tolist()]
    points = []
    for ef in EF_SWEEP:
        cpu = 0.0
        found: list[list[tuple[float, str]]] = [[] for _ in range(len(queries))]
        for shard in shards:
            shard.index.set_ef(ef)
            best = float("inf")
            answers: list[tuple[Any, Any]] = []
            for _ in range(SEARCH_REPEATS):  # the least disturbed of a few runs on a shared machine
                answers = []
                started = time.thread_time()
                for row in range(len(queries)):
                    answers.append(shard.index.knn_query(queries[row : row + 1], k=k, num_threads=1))
                best = min(best, time.thread_time() - started)
            cpu += best
            for row, (labels, distances) in enumerate(answers):
                found[row].extend(
                    (1.0 - float(d), shard.ids[int(label)])
                    for label, d in zip(labels[0], distances[0], strict=True)
                )
        recall = float(
            np.mean(
                [
                    len({item for _, item in sorted(row, reverse=True)[:k]} & truth_ids[i]) / k
                    for i, row in enumerate(found)
                ]
            )
        )
        search_ms = cpu * 1000.0 / (len(queries) * len(shards))
        points.append({"ef_search": ef, "recall_at_k": round(recall, 4), "search_ms": round(search_ms, 5)})
        log(f"ef {ef}: recall@{k} {recall:.4f}, {search_ms:.4f} ms/query/shard")
    return points


_RSS_PROBE = """
import json, re, sys, time
from pathlib import Path
def rss():
    return int(re.findall(r"VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[0]) * 1024
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.users import load_user_table
layout = Path(sys.argv[1])
before = rss()
started = time.perf_counter()
shard = ShardIndex.load(layout, 0, ef_search=64)
load_s = time.perf_counter() - started
after_shard = rss()
users = load_user_table(layout)
# Memory-mapped: loading touches no vector. A router serving its users holds them all resident.
touched = float(users.vectors.sum()) + float(users.seen_indptr.sum())
after_users = rss()
print(json.dumps({"shard_bytes": after_shard - before, "count": shard.count,
                  "index_bytes": shard.index_bytes, "load_s": load_s,
                  "users_bytes": after_users - after_shard, "users": len(users)}))
"""


def resident_memory(layout: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(layout)], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_offline(args: argparse.Namespace, work: Path, layout: Path, k: int) -> dict[str, Any]:
    """Build the main layout and measure what needs no server: build rate, index file bytes,
    recall and search cost by efSearch, resident memory."""
    queries = make_embeddings(work / "emb", args.items, args.dimension, args.users, args.queries)
    np.save(work / "queries.npy", queries)
    items = np.load(work / "emb" / "items.npy")
    log(f"building {args.items} x {args.dimension} into {args.shards} shards (M {args.m})")
    built = build(work / "emb", layout, args.shards, args.m, args.ef_construction)
    log(f"built in {built['wall_s']:.1f}s wall, {built['cpu_s']:.1f}s CPU")
    manifest = json.loads((layout / "layout.json").read_text())
    index_files = []
    for entry in manifest["shard_entries"]:
        shard_manifest = json.loads((layout / entry["directory"] / "manifest.json").read_text())
        index_files.append(next(f["bytes"] for f in shard_manifest["files"] if f["name"] == "index.bin"))
    main_point = {
        "dimension": args.dimension,
        "m": args.m,
        "items": args.items,
        "file_bytes_per_item": sum(index_files) / args.items,
    }
    file_points = [main_point]
    for dimension, m in ((args.dimension, 8), (args.dimension, 32), (2 * args.dimension, args.m)):
        file_points.append(index_file_point(dimension, m, args.file_points_items, work))
        log(f"index file at D={dimension} M={m}: {file_points[-1]['file_bytes_per_item']:.1f} B/item")
    search = search_sweep(layout, queries, k, items)
    del items
    memory = resident_memory(layout)
    log(f"resident: {memory}")
    return {"built": built, "file_points": file_points, "search": search, "memory": memory}


def measure(args: argparse.Namespace) -> dict[str, Any]:  # noqa: PLR0915 - one linear script
    from shardrec.tools.capacity.tailsim import ServiceTime

    k = 10
    if args.resume is not None:
        work = Path(args.resume)
    else:
        work = Path(tempfile.mkdtemp(prefix="shardrec-coefficients-", dir=args.work_dir))
    log(f"working in {work}")
    layout = work / "layout-main"
    offline_file = work / "offline.json"
    if offline_file.exists():
        # The offline part (build, index files, search sweep, memory) of an earlier run of this
        # folder: real processes failing later need not repeat it.
        offline = json.loads(offline_file.read_text())
        queries = np.load(work / "queries.npy")
        log(f"reusing {offline_file}")
    else:
        offline = measure_offline(args, work, layout, k)
        queries = np.load(work / "queries.npy")
        offline_file.write_text(json.dumps(offline, indent=2))
    built, file_points, search, memory = (
        offline["built"],
        offline["file_points"],
        offline["search"],
        offline["memory"],
    )
    base = baselines(work)
    log(f"process baselines: {base}")
    target_ef = next((p["ef_search"] for p in search if p["recall_at_k"] >= args.recall), EF_SWEEP[-1])
    search_ms_at = next(p["search_ms"] for p in search if p["ef_search"] == target_ef)

    # Real processes: router CPU by shard count (small layouts), then the main layout.
    small = work / "emb-small"
    make_embeddings(small, args.router_items, args.dimension, args.users, 10)
    router_points = []
    sequential: list[dict[str, Any]] = []
    for shards in args.router_shards:
        small_layout = work / f"layout-small-{shards}"
        if not (small_layout / "layout.json").exists():
            build(small, small_layout, shards, args.m, args.ef_construction)
        with processes(work) as running:
            router_pids, shard_pids, _, url = start_cluster(
                running, work, small_layout, target_ef, f"s{shards}"
            )
            router_ms, _ = cpu_per_request(url, router_pids, shard_pids, args.requests, args.users)
            started = time.perf_counter()
            observed = asyncio.run(closed_loop(url, args.check_requests, 1, args.users))
            rate = len(observed) / (time.perf_counter() - started)
            p50, p99 = np.percentile(np.asarray(observed) * 1000.0, [50, 99])
            sequential.append(
                {
                    "shards": shards,
                    "replicas": 1,
                    "offered_qps": round(rate, 1),
                    "requests": len(observed),
                    "arrivals": "sequential",
                    "load_average": round(os.getloadavg()[0], 2),
                    "p50_ms": round(float(p50), 3),
                    "p99_ms": round(float(p99), 3),
                    "router_cpu_ms": round(router_ms, 4),
                }
            )
        router_points.append({"shards": shards, "cpu_ms_per_request": round(router_ms, 4)})
        log(
            f"router at {shards} shards: {router_ms:.3f} ms CPU/request; "
            f"sequential p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )

    with processes(work) as running:
        router_pids, shard_pids, shard_urls, url = start_cluster(running, work, layout, target_ef, "main")
        router_workers = worker_count(router_pids)
        router_ms, shard_ms = cpu_per_request(url, router_pids, shard_pids, args.requests, args.users)
        router_points.append({"shards": args.shards, "cpu_ms_per_request": round(router_ms, 4)})
        log(f"main: router {router_ms:.3f} ms, shard {shard_ms:.3f} ms CPU per request")
        latencies = asyncio.run(shard_latencies(shard_urls[0], args.latency_requests, queries))
        distribution = quantiles_ms(latencies)
        wire = wire_bytes(url, shard_urls[0], queries[0])
        service = ServiceTime(tuple(distribution["quantiles"]), tuple(distribution["ms"]))
        checks: list[dict[str, Any]] = []
        started = time.perf_counter()
        observed = asyncio.run(closed_loop(url, args.check_requests, 1, args.users))
        sequential_rate = len(observed) / (time.perf_counter() - started)
        for offered in (None, *args.check_rates):
            rate = round(sequential_rate, 1) if offered is None else offered
            if offered is not None:
                observed = asyncio.run(open_loop(url, rate, args.check_requests, args.users))
            p50, p99 = np.percentile(np.asarray(observed) * 1000.0, [50, 99])
            checks.append(
                {
                    "shards": args.shards,
                    "replicas": 1,
                    "offered_qps": rate,
                    "requests": len(observed),
                    "arrivals": "sequential" if len(checks) == 0 else "poisson",
                    "load_average": round(os.getloadavg()[0], 2),
                    "p50_ms": round(float(p50), 3),
                    "p99_ms": round(float(p99), 3),
                    "utilisation": round(rate * service.mean_ms / 1000.0, 4),
                    "router_cpu_ms": round(router_ms, 4),
                }
            )
            log(f"check at {rate} req/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    for entry in sequential:
        entry["utilisation"] = round(entry["offered_qps"] * service.mean_ms / 1000.0, 4)
    checks = sorted(sequential, key=lambda c: c["shards"]) + checks
    (work / "router-latency-check.json").write_text(json.dumps(checks, indent=2))
    if args.check_out:
        Path(args.check_out).write_text(json.dumps(checks, indent=2) + "\n")

    router_points.sort(key=lambda p: p["shards"])
    command = " ".join(["python benchmarks/coefficients.py", *args.argv]).strip()
    return coefficients_from_measurement(
        command=command,
        items=args.items,
        shards=args.shards,
        dimension=args.dimension,
        m=args.m,
        ef_construction=args.ef_construction,
        recall=args.recall,
        k=k,
        target_ef=target_ef,
        search=search,
        search_ms_at=search_ms_at,
        shard_ms=shard_ms,
        router_points=router_points,
        file_points=file_points,
        memory=memory,
        base=base,
        built=built,
        wire=wire,
        distribution=distribution,
        router_workers=router_workers,
    )
