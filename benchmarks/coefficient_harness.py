"""Processes and load for the coefficient measurement: shard servers and routers on 127.0.0.1,
their CPU and memory from /proc, and the bounded load loops that drive them."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from coefficient_derivation import CPU_CLIENTS
from common import cpu_seconds, group_cpu_seconds, process_group
from raw_http import RawHttp, http_request, raw_exchange

from shardrec.api.commands import ROUTER_MODULE, SHARD_MODULE, router_arguments, shard_arguments
from shardrec.serving.cpus import usable_cpus


def log(message: str) -> None:
    print(f"[coefficients] {message}", file=sys.stderr, flush=True)


def rss_bytes(pid: int | str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.findall(r"VmRSS:\s+(\d+) kB", text)[0]) * 1024


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
        # Per worker process, the supervisor's share included: the planner multiplies it by the
        # workers a pod starts, so the pod's total is what this router's processes hold together.
        group = router_group(router_pid)
        return {
            "shard": rss_bytes(shard_pid),
            "router": round(sum(rss_bytes(pid) for pid in group) / worker_count(group)),
        }


def router_group(pid: int, timeout_s: float = 60.0) -> list[int]:
    """The router's processes once all have started: with more than one usable CPU, a supervisor
    and one worker per CPU (router/workers.py), whose CPU and memory are the router's."""
    expected = usable_cpus()
    deadline = time.monotonic() + timeout_s
    while True:
        group = process_group(pid)
        if expected == 1 or len(group) == 1 + expected or time.monotonic() > deadline:
            return group
        time.sleep(0.1)


def worker_count(group: list[int]) -> int:
    """Worker processes in a router's `router_group`: the processes beside its supervisor, or the
    one process of a router that started no workers."""
    return max(len(group) - 1, 1)


def start_cluster(
    running: Processes, folder: Path, layout: Path, ef: int, tag: str
) -> tuple[list[int], list[int], list[str], str]:
    """Shards (one replica each, one search thread) and a router over `layout`; returns the
    router's processes (`router_group`), the shards' pids and URLs, and the router's URL."""
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
    return router_group(router_pid), pids, urls, router_url


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


async def open_loop_run(url: str, rate: float, count: int, users: int, seed: int) -> dict[str, Any]:
    """Poisson arrivals at `rate` per second (bounded: `count` requests): latencies of the answered
    ones from their send and from their due time, due times, how late each was sent, and failures by
    status. One generator for the coefficient check and benchmarks/tail_check.py."""
    client = RawHttp(url, 256)
    rng = np.random.default_rng(seed)
    due = np.cumsum(rng.exponential(1.0 / rate, size=count))
    requests = [client.recommend(u) for u in rng.integers(0, users, size=count).tolist()]
    from_send: list[float] = []
    from_due: list[float] = []
    due_at: list[float] = []
    lag: list[float] = []
    failures: dict[int, int] = {}
    start = time.perf_counter()

    async def one(i: int) -> None:
        sent = time.perf_counter()
        status = await client.send(requests[i])
        done = time.perf_counter()
        if status != 200:
            failures[status] = failures.get(status, 0) + 1
            return
        from_send.append(done - sent)
        from_due.append(done - (start + due[i]))
        due_at.append(float(due[i]))
        lag.append(sent - (start + due[i]))

    tasks = []
    try:
        for i in range(count):
            delay = start + due[i] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    finally:
        client.close()
    return {
        "from_send": from_send,
        "from_due": from_due,
        "due_at": due_at,
        "send_lag": lag,
        "failed": failures,
    }


async def open_loop(url: str, rate: float, count: int, users: int) -> list[float]:
    """Latencies (from the send) of the answered requests of `open_loop_run` with seed 12."""
    run = await open_loop_run(url, rate, count, users, seed=12)
    latencies: list[float] = run["from_send"]
    return latencies


def cpu_per_request(
    url: str, router_pids: list[int], shard_pids: list[int], requests: int, users: int
) -> tuple[float, float]:
    """(router CPU ms per request over all its processes, mean shard CPU ms per query) under a
    closed-loop load."""
    asyncio.run(closed_loop(url, 300, CPU_CLIENTS, users))  # warm up connections and caches
    router_before = group_cpu_seconds(router_pids)
    shards_before = [cpu_seconds(pid) for pid in shard_pids]
    asyncio.run(closed_loop(url, requests, CPU_CLIENTS, users))
    router_ms = (group_cpu_seconds(router_pids) - router_before) * 1000.0 / requests
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
