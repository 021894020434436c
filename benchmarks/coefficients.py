"""The capacity coefficients file (`benchmarks/coefficients.json`): write it, derive it, measure it.

    write_coefficients(path, measured)         what the benchmark harness calls after `make bench`
    python benchmarks/coefficients.py derive --results RESULTS.json [--out FILE]
    python benchmarks/coefficients.py measure [--items 200000 --dimension 64 --shards 4] [--out FILE]

`measure` is a short first measurement on this machine with what exists (the index builder,
in-process hnswlib, real shard and router processes on 127.0.0.1). `make bench` supersedes each
field it measures: provenance entries record which command produced which field, and a field
measured again drops out of the older entry.

Every number written here comes from a measurement on this machine; nothing is a guess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shardrec.api.commands import ROUTER_MODULE, SHARD_MODULE, router_arguments, shard_arguments
from shardrec.tools.capacity.coefficients import (
    MEASURED_FIELDS,
    Coefficients,
    dump_coefficients,
    load_coefficients,
    parse_coefficients,
)

HERE = Path(__file__).resolve().parent
DEFAULT_PATH = HERE / "coefficients.json"
QUANTILES: tuple[float, ...] = (
    0.0,
    0.01,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.97,
    0.98,
    0.99,
)
QUANTILES += (0.995, 0.999, 1.0)
EF_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)
SEARCH_REPEATS = 3


# --- writing -------------------------------------------------------------------------------------


def host_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
        memory = f"{mem_kib / 1024**2:.0f} GiB"
    except (OSError, IndexError, ValueError):
        memory = "unknown memory"
    return f"{os.cpu_count()} cores ({model}), {memory}, {platform.system()} {platform.release()}"


def write_coefficients(path: Path | str, measured: dict[str, Any]) -> Coefficients:
    """Merge `measured` into the coefficients file at `path` (created if absent) and write it.

    `measured` holds any of the fields of `shardrec.tools.capacity.coefficients.Coefficients` (see
    MEASURED_FIELDS) plus `"provenance": {"command": ..., "note": ...}` naming the command that
    measured them; `date`, `host` and `fields` are filled in when absent. Fields not in
    `measured` keep their previous values and provenance. The result must validate as a whole
    (every field measured by some command), else CoefficientsError names the problem and the
    file is left as it was."""
    path = Path(path)
    measured = dict(measured)
    provenance = dict(measured.pop("provenance", {}) or {})
    unknown = sorted(set(measured) - set(MEASURED_FIELDS))
    if unknown:
        raise ValueError(f"measured: unknown fields {unknown}; known: {', '.join(MEASURED_FIELDS)}")
    if not measured:
        raise ValueError("measured: no coefficient fields given")
    if not provenance.get("command"):
        raise ValueError("measured: provenance.command must name the command that measured the fields")
    provenance.setdefault("date", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    provenance.setdefault("host", host_description())
    provenance["fields"] = sorted(measured, key=MEASURED_FIELDS.index)
    document: dict[str, Any] = {}
    if path.exists():
        document = load_coefficients(path).model_dump(mode="json")
    kept = []
    for entry in document.get("provenance", []):
        remaining = [name for name in entry["fields"] if name not in measured]
        if remaining:
            kept.append({**entry, "fields": remaining})
    document.update(measured)
    document["provenance"] = [*kept, provenance]
    document["schema_version"] = 1
    coefficients = parse_coefficients(json.dumps(document), str(path))
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(dump_coefficients(coefficients), encoding="utf-8")
    staging.replace(path)
    return coefficients


def coefficients_from_bench(results: dict[str, Any], existing: Coefficients | None = None) -> dict[str, Any]:
    """The measured coefficient fields in a bench results document.

    Two forms are read:
    - `{"command": ..., "coefficients": {<fields of the coefficients file>}}`: taken as they are;
    - the `results.json` that `benchmarks/run.py` writes (`command`, `rows` with per-process CPU
      ms per request): from its saturating single-query router row, the router's CPU per
      request at that shard count (`router_cpu`, merged with `existing` points at other shard
      counts) and the shards' CPU per query beyond the in-process search
      (`shard_overhead_cpu_ms` = shard CPU per request / shards - in-process single-query CPU /
      shards).
    Raises ValueError when neither form yields a field."""
    command = results.get("command")
    if not isinstance(command, str) or not command:
        raise ValueError('bench results: no "command" naming how they were produced')
    section = results.get("coefficients")
    if isinstance(section, dict) and section:
        measured = {name: value for name, value in section.items() if name != "provenance"}
        measured["provenance"] = {"command": command, "note": str(results.get("note", ""))}
        return measured
    rows = results.get("rows")
    if not isinstance(rows, list):
        raise ValueError('bench results: neither "coefficients" nor "rows"')
    measured = _from_rows(rows, existing)
    if not measured:
        raise ValueError("bench results: no router row with per-process CPU (was the router benchmarked?)")
    measured["provenance"] = {
        "command": command,
        "note": "router_cpu and shard_overhead_cpu_ms from the saturating single-query router row of the "
        "benchmark (wrk); router_cpu points at other shard counts are kept from earlier measurements",
    }
    return measured


def _cpu(row: dict[str, Any], prefix: str) -> tuple[str, float] | None:
    for stats in row.get("processes", []):
        name, value = str(stats.get("name", "")), stats.get("cpu_ms_per_request")
        if name.startswith(prefix) and isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return name, float(value)
    return None


def _from_rows(rows: list[dict[str, Any]], existing: Coefficients | None) -> dict[str, Any]:
    router_row = next(
        (
            r
            for r in rows
            if r.get("scenario", "").startswith("router, single query") and "saturating" in r["scenario"]
        ),
        None,
    )
    single = next(
        (r for r in rows if r.get("scenario", "").startswith("in-process hnswlib, single query")), None
    )
    if router_row is None:
        return {}
    router, shard_stats = _cpu(router_row, "router"), _cpu(router_row, "shards x")
    if router is None or shard_stats is None:
        return {}
    shards = int(shard_stats[0].removeprefix("shards x"))
    points = [p.model_dump() for p in existing.router_cpu if p.shards != shards] if existing else []
    points.append({"shards": shards, "cpu_ms_per_request": round(router[1], 4)})
    measured: dict[str, Any] = {"router_cpu": sorted(points, key=lambda p: p["shards"])}
    inprocess = _cpu(single, "in-process") if single is not None else None
    if inprocess is not None:
        overhead = (shard_stats[1] - inprocess[1]) / shards
        measured["shard_overhead_cpu_ms"] = round(max(overhead, 0.0), 4)
    return measured


def update_from_run(results_path: Path | str, path: Path | str = DEFAULT_PATH) -> Coefficients | None:
    """What `benchmarks/run.py` calls after a full (not --quick) run: fold its results into the
    coefficients file. Returns None (and says why on stderr) when the run holds nothing to fold."""
    path = Path(path)
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    existing = load_coefficients(path) if path.exists() else None
    try:
        measured = coefficients_from_bench(results, existing)
    except ValueError as exc:
        print(f"coefficients: {path} not updated: {exc}", file=sys.stderr)
        return None
    return write_coefficients(path, measured)


# --- measuring: helpers ------------------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.findall(r"VmRSS:\s+(\d+) kB", text)[0]) * 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def quantiles_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    values = np.percentile(np.asarray(samples_s) * 1000.0, [q * 100 for q in QUANTILES])
    ms = np.maximum.accumulate(np.round(values, 4))
    return {"quantiles": list(QUANTILES), "ms": [float(v) for v in ms], "requests": len(samples_s)}


def log(message: str) -> None:
    print(f"[coefficients] {message}", file=sys.stderr, flush=True)


class Processes:
    """Shard servers and routers on 127.0.0.1, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, module: str, arguments: list[str]) -> tuple[int, str]:
        with (self.folder / f"{name}.log").open("wb") as stderr:
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *arguments],
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.running.append(popen)
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(popen.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(120)
        text = line[0].decode() if line else ""
        if " listening on " not in text:
            raise RuntimeError(f"{name} did not start ({text!r}); see {self.folder / (name + '.log')}")
        return popen.pid, text.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        for popen in self.running:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for popen in self.running:
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)
            if popen.stdout is not None:
                popen.stdout.close()
        self.running.clear()


@contextmanager
def processes(folder: Path) -> Iterator[Processes]:
    running = Processes(folder)
    try:
        yield running
    finally:
        running.stop()


def wait_ready(url: str, timeout_s: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s")


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send one HTTP/1.1 request as bytes and return the whole response as bytes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.findall(rb"(?i)content-length:\s*(\d+)", head)[0])
        while len(body) < length:
            body += sock.recv(65536)
        return head + b"\r\n\r\n" + body


def http_request(
    url: str, method: str, path: str, body: bytes, content_type: str, *, extra: str = ""
) -> bytes:
    host = url.removeprefix("http://")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


# --- measuring: steps ------------------------------------------------------------------------------


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


def baselines(folder: Path) -> dict[str, int]:
    topology = folder / "empty-topology.json"
    topology.write_text(json.dumps({"revision": 0, "active": None}))
    config = folder / "router-config.json"
    config.write_text(json.dumps({"router": {}}))
    with processes(folder) as running:
        shard_pid, _ = running.start(
            "baseline-shard",
            SHARD_MODULE,
            shard_arguments(layout_dir=None, shard=None, host="127.0.0.1", port=0),
        )
        router_pid, _ = running.start(
            "baseline-router",
            ROUTER_MODULE,
            router_arguments(
                topology_file=str(topology), router_config=str(config), host="127.0.0.1", port=0
            ),
        )
        time.sleep(2.0)
        return {"shard": rss_bytes(shard_pid), "router": rss_bytes(router_pid)}


def start_cluster(
    running: Processes, folder: Path, layout: Path, ef: int, tag: str
) -> tuple[int, list[int], list[str], str]:
    """Shards (one replica each, one search thread) and a router over `layout`."""
    manifest = json.loads((layout / "layout.json").read_text())
    shards = manifest["shards"]
    pids, urls = [], []
    for s in range(shards):
        pid, url = running.start(
            f"{tag}-shard{s}",
            SHARD_MODULE,
            shard_arguments(
                layout_dir=str(layout), shard=s, host="127.0.0.1", port=0, ef_search=ef, search_threads=1
            ),
        )
        pids.append(pid)
        urls.append(url)
    for url in urls:
        wait_ready(url)
    topology = {
        "revision": 1,
        "active": {
            "layout": manifest["layout"],
            "version": manifest["version"],
            "shards": shards,
            "dimension": manifest["dimension"],
            "metric": manifest["metric"],
            "artifact_dir": str(layout),
            "endpoints": [
                {"shard": s, "replicas": [{"name": f"{tag}-shard{s}", "url": urls[s]}]} for s in range(shards)
            ],
        },
    }
    (folder / f"{tag}-topology.json").write_text(json.dumps(topology))
    config = folder / f"{tag}-router.json"
    config.write_text(json.dumps({"router": {"timeoutMs": 5000, "maxInFlight": 4096}}))
    router_pid, router_url = running.start(
        f"{tag}-router",
        ROUTER_MODULE,
        router_arguments(
            topology_file=str(folder / f"{tag}-topology.json"),
            router_config=str(config),
            host="127.0.0.1",
            port=0,
        ),
    )
    wait_ready(router_url)
    return router_pid, pids, urls, router_url


class RawHttp:
    """A minimal keep-alive HTTP/1.1 load client over asyncio streams (pre-encoded requests), so
    the load generator spends little of the shared CPU it measures on."""

    def __init__(self, url: str, max_connections: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.url = url
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)
        self.opened: list[asyncio.StreamWriter] = []

    def recommend(self, user: int, k: int = 10) -> bytes:
        body = b'{"user_id":"user-%07d","k":%d}' % (user, k)
        return http_request(self.url, "POST", "/v1/recommend", body, "application/json")

    async def send(self, request: bytes) -> int:
        """The status code of one exchange."""
        async with self.slots:
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                self.opened.append(writer)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.findall(rb"(?i)content-length:\s*(\d+)", head)[0])
            await reader.readexactly(length)
            self.idle.append((reader, writer))
            return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        for writer in self.opened:
            writer.close()


async def closed_loop(url: str, count: int, concurrency: int, users: int) -> list[float]:
    """`count` requests from `concurrency` workers, each sending the next when the last answered."""
    client = RawHttp(url, concurrency)
    picks = np.random.default_rng(11).integers(0, users, size=count).tolist()
    requests = [client.recommend(u) for u in picks]
    latencies: list[float] = []
    failures = 0
    todo = iter(range(count))

    async def worker() -> None:
        nonlocal failures
        for i in todo:
            started = time.perf_counter()
            if await client.send(requests[i]) == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        client.close()
    if failures:
        raise RuntimeError(f"{failures} of {count} requests to {url} failed")
    return latencies


async def open_loop(url: str, rate: float, count: int, users: int) -> list[float]:
    """Poisson arrivals at `rate` per second (bounded: `count` requests)."""
    client = RawHttp(url, 256)
    rng = np.random.default_rng(12)
    gaps = rng.exponential(1.0 / rate, size=count)
    requests = [client.recommend(u) for u in rng.integers(0, users, size=count).tolist()]
    latencies: list[float] = []

    async def one(i: int) -> None:
        started = time.perf_counter()
        if await client.send(requests[i]) == 200:
            latencies.append(time.perf_counter() - started)

    tasks = []
    start = time.perf_counter()
    due = 0.0
    try:
        for i in range(count):
            due += gaps[i]
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    finally:
        client.close()
    return latencies


def cpu_per_request(
    url: str, router_pid: int, shard_pids: list[int], requests: int, users: int
) -> tuple[float, float]:
    """(router CPU ms per request, mean shard CPU ms per query) under a closed-loop load."""
    asyncio.run(closed_loop(url, 300, 16, users))  # warm up connections and caches
    router_before = cpu_seconds(router_pid)
    shards_before = [cpu_seconds(pid) for pid in shard_pids]
    asyncio.run(closed_loop(url, requests, 16, users))
    router_ms = (cpu_seconds(router_pid) - router_before) * 1000.0 / requests
    shard_ms = [
        (cpu_seconds(pid) - b) * 1000.0 / requests for pid, b in zip(shard_pids, shards_before, strict=True)
    ]
    return router_ms, float(np.mean(shard_ms))


async def shard_latencies(url: str, count: int, queries: np.ndarray) -> list[float]:
    from shardrec.serving.shard.client import ShardClient

    client = ShardClient(url)
    samples: list[float] = []
    try:
        for i in range(count + 200):
            query = queries[i % len(queries)][None, :]
            started = time.perf_counter()
            await client.search(query, 10, None, 5.0)
            if i >= 200:
                samples.append(time.perf_counter() - started)
    finally:
        await client.close()
    return samples


def wire_bytes(router_url: str, shard_url: str, query: np.ndarray) -> dict[str, float]:
    import httpx

    from shardrec.serving.shard.wire import REQUEST_CONTENT_TYPE, encode_request

    def client_exchange(k: int) -> tuple[int, int]:
        body = json.dumps({"user_id": "user-0000001", "k": k}, separators=(",", ":")).encode()
        built = httpx.Request(
            "POST", f"{router_url}/v1/recommend", content=body, headers={"Content-Type": "application/json"}
        )
        extra = "".join(
            f"{name}: {value}\r\n"
            for name, value in built.headers.items()
            if name.lower() not in ("host", "content-type", "content-length")
        )
        request = http_request(router_url, "POST", "/v1/recommend", body, "application/json", extra=extra)
        response = raw_exchange(router_url, request)
        if b" 200 " not in response.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"router answered {response[:200]!r}")
        return len(request), len(response)

    def shard_exchange(k: int) -> tuple[int, int]:
        body = encode_request(query[None, :], k, None, 1000)
        request = http_request(shard_url, "POST", "/v1/search", body, REQUEST_CONTENT_TYPE)
        return len(request), len(raw_exchange(shard_url, request))

    c_in, c_out10 = client_exchange(10)
    _, c_out1 = client_exchange(1)
    s_in, s_out10 = shard_exchange(10)
    _, s_out1 = shard_exchange(1)
    per_item = (c_out10 - c_out1) / 9.0
    per_result = (s_out10 - s_out1) / 9.0
    return {
        "client_request": float(c_in),
        "client_response_fixed": c_out1 - per_item,
        "client_response_per_item": per_item,
        "shard_request_fixed": float(s_in - 4 * len(query)),
        "shard_response_fixed": s_out1 - per_result,
        "shard_response_per_result": per_result,
    }


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
            router_pid, shard_pids, _, url = start_cluster(
                running, work, small_layout, target_ef, f"s{shards}"
            )
            router_ms, _ = cpu_per_request(url, router_pid, shard_pids, args.requests, args.users)
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
        router_pid, shard_pids, shard_urls, url = start_cluster(running, work, layout, target_ef, "main")
        router_ms, shard_ms = cpu_per_request(url, router_pid, shard_pids, args.requests, args.users)
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
    return {
        "provenance": {
            "command": command,
            "note": (
                "first short measurement (not make bench): synthetic clustered data, cosine, "
                f"{args.shards} shards x 1 replica, one search thread per shard, router load: "
                "closed loop of 16 concurrent raw HTTP/1.1 keep-alive clients on the same machine; "
                f"ef {target_ef} is "
                f"the cheapest with recall@{k} >= {args.recall}; user table without seen items; "
                "index load from a warm page cache."
            ),
        },
        "workload": {
            "items_per_shard": args.items // args.shards,
            "shards": args.shards,
            "dimension": args.dimension,
            "m": args.m,
            "ef_construction": args.ef_construction,
            "k": k,
            "metric": "cosine",
            "item_id_bytes": float(len(f"item-{0:07d}")),
            "user_id_bytes": float(len(f"user-{0:07d}")),
        },
        "search": search,
        "shard_overhead_cpu_ms": round(max(shard_ms - search_ms_at, 0.0), 4),
        "router_cpu": router_points,
        "index_file": file_points,
        "index_resident_extra_bytes_per_item": round(
            max(memory["shard_bytes"] - memory["index_bytes"], 0) / memory["count"], 2
        ),
        "shard_process_baseline_bytes": base["shard"],
        "router_process_baseline_bytes": base["router"],
        "user_resident_bytes_per_user": round(memory["users_bytes"] / max(memory["users"], 1), 2),
        "build_items_per_core_second": round(built["items"] / built["cpu_s"], 1),
        "load_bytes_per_second": round(memory["index_bytes"] / memory["load_s"], 1),
        "wire": {name: round(value, 2) for name, value in wire.items()},
        "shard_latency_ms": distribution,
    }


# --- CLI -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/coefficients.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    derive = sub.add_parser("derive", help="write coefficients from a bench results JSON")
    derive.add_argument("--results", type=Path, required=True)
    derive.add_argument("--out", type=Path, default=DEFAULT_PATH)
    run = sub.add_parser("measure", help="a short first measurement on this machine")
    run.add_argument("--items", type=int, default=200_000)
    run.add_argument("--dimension", type=int, default=64)
    run.add_argument("--shards", type=int, default=4)
    run.add_argument("--m", type=int, default=16)
    run.add_argument("--ef-construction", type=int, default=200)
    run.add_argument("--users", type=int, default=100_000)
    run.add_argument("--queries", type=int, default=1000)
    run.add_argument("--recall", type=float, default=0.95)
    run.add_argument("--requests", type=int, default=3000, help="requests per CPU measurement")
    run.add_argument("--router-items", type=int, default=20_000)
    run.add_argument("--router-shards", type=int, nargs="+", default=[1, 2, 8])
    run.add_argument("--file-points-items", type=int, default=20_000)
    run.add_argument("--latency-requests", type=int, default=3000)
    run.add_argument("--check-rates", type=float, nargs="+", default=[100.0, 300.0])
    run.add_argument("--check-requests", type=int, default=3000)
    run.add_argument("--check-out", type=Path, default=HERE / "tailsim_check.json")
    run.add_argument("--work-dir", default=None, help="where to create the work folder")
    run.add_argument("--resume", default=None, help="reuse the offline part of an earlier work folder")
    run.add_argument("--out", type=Path, default=DEFAULT_PATH)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        if args.command == "derive":
            results = json.loads(args.results.read_text(encoding="utf-8"))
            existing = load_coefficients(args.out) if args.out.exists() else None
            written = write_coefficients(args.out, coefficients_from_bench(results, existing))
        else:
            written = write_coefficients(args.out, measure(args))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        print(f"coefficients: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(written.provenance)} provenance entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
