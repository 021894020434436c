"""Real processes on 127.0.0.1: shard servers (2 shards x 2 replicas) and routers over layouts
built by the index builder. Replicas die by SIGKILL during bounded bursts of requests.

Every loop is bounded in count and time; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shardrec.serving.index.build import build_layout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DIM = 8
ITEMS = 300
USERS = 20
START_TIMEOUT_S = 60.0


def write_embeddings(folder: Path, prefix: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "items.npy", rng.normal(size=(ITEMS, DIM)).astype(np.float32))
    (folder / "item_ids.txt").write_text("".join(f"{prefix}-item-{i}\n" for i in range(ITEMS)))
    np.save(folder / "users.npy", rng.normal(size=(USERS, DIM)).astype(np.float32))
    (folder / "user_ids.txt").write_text("".join(f"user-{u}\n" for u in range(USERS)))
    seen = "".join(f"user-{u}\t{prefix}-item-{(u * 7 + j) % ITEMS}\n" for u in range(USERS) for j in range(3))
    (folder / "seen.tsv").write_text(seen)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two index versions whose item ids differ by prefix, so a mixed answer would show."""
    root = tmp_path_factory.mktemp("layouts")
    built = {}
    for version, seed in (("v1", 1), ("v2", 2)):
        embeddings = root / f"emb-{version}"
        write_embeddings(embeddings, version, seed)
        out = root / f"layout-{version}"
        build_layout(
            embeddings,
            out,
            version=version,
            shards=2,
            metric="ip",
            m=8,
            ef_construction=32,
            workers=1,
            progress=False,
        )
        built[version] = out
    return built


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    url: str

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


@dataclass
class Cluster:
    tmp: Path
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, module: str, *args: str) -> Process:
        log = (self.tmp / f"{name}.log").open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=self.tmp,
        )
        line = _first_line(popen, START_TIMEOUT_S)
        if " listening on " not in line:
            popen.kill()
            popen.wait(10)
            if popen.stdout is not None:
                popen.stdout.close()
            raise RuntimeError(f"{name} did not start: {line!r}; see {self.tmp / f'{name}.log'}")
        process = Process(name, popen, line.rsplit(" ", 1)[1].strip())
        self.processes.append(process)
        return process

    def shard(self, layout: Path, shard: int, replica: int) -> Process:
        return self.start(
            f"{layout.name}-s{shard}-r{replica}",
            "shardrec.serving.shard.main",
            "--layout-dir",
            str(layout),
            "--shard",
            str(shard),
            "--search-threads",
            "1",
        )

    def router(
        self,
        name: str,
        topology: Path,
        router: dict[str, Any],
        keys: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> Process:
        config = self.tmp / f"{name}-config.json"
        config.write_text(json.dumps({"router": router}))
        args = ["--topology-file", str(topology), "--router-config", str(config)]
        if keys is not None:
            (self.tmp / f"{name}-keys").write_text(keys)
            args += ["--api-keys-file", str(self.tmp / f"{name}-keys")]
        # One worker process unless a test asks for more (`extra` comes last and wins): the result
        # cache and the canary's windows are per worker, so tests of them need one.
        return self.start(name, "shardrec.serving.router.main", *args, "--workers", "1", *extra)

    def stop(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in self.processes:
            try:
                process.popen.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.popen.stdout is not None:
                process.popen.stdout.close()


def _first_line(popen: subprocess.Popen[bytes], timeout_s: float) -> str:
    result: list[bytes] = []
    stdout = popen.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0].decode() if result else ""


def wait_ready(url: str, timeout_s: float = START_TIMEOUT_S, version: str | None = None) -> dict[str, Any]:
    """Bounded wait until `url` is ready (and serves `version`, when given)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200 and version in (None, response.json().get("index_version")):
                return response.json()  # type: ignore[no-any-return]
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout_s}s: {last}")


def write_topology(path: Path, revision: int, layout: Path, replicas: dict[int, list[Process]]) -> None:
    manifest = json.loads((layout / "layout.json").read_text())
    topology = {
        "revision": revision,
        "active": {
            "layout": manifest["layout"],
            "version": manifest["version"],
            "shards": 2,
            "dimension": DIM,
            "metric": "ip",
            "artifact_dir": str(layout),
            "endpoints": [
                {"shard": shard, "replicas": [{"name": p.name, "url": p.url} for p in procs]}
                for shard, procs in replicas.items()
            ],
        },
    }
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(topology))
    staging.replace(path)  # atomic, as the local runtime writes it


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def start_layout(cluster: Cluster, layout: Path, replicas: int) -> dict[int, list[Process]]:
    shards = {s: [cluster.shard(layout, s, r) for r in range(replicas)] for s in range(2)}
    for procs in shards.values():
        for process in procs:
            wait_ready(process.url)
    return shards


async def burst(
    url: str, count: int, concurrency: int, on_progress: Any = None
) -> list[httpx.Response | Exception]:
    """`count` requests from `concurrency` workers; calls on_progress(done) as they complete."""
    results: list[httpx.Response | Exception] = []
    queue = iter(range(count))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def worker() -> None:
            for index in queue:
                body = (
                    {"user_id": f"user-{index % USERS}", "k": 10}
                    if index % 2
                    else {"vector": [float((index + d) % 5) - 2 for d in range(DIM)], "k": 10}
                )
                try:
                    results.append(await client.post("/v1/recommend", json=body))
                except httpx.HTTPError as exc:
                    results.append(exc)
                if on_progress is not None:
                    on_progress(len(results))
                await asyncio.sleep(0.002)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def failures(results: list[httpx.Response | Exception]) -> list[str]:
    return [
        repr(r) if isinstance(r, Exception) else f"{r.status_code} {r.text[:200]}"
        for r in results
        if isinstance(r, Exception) or r.status_code != 200
    ]


ROUTER = {
    "timeoutMs": 2000,
    "maxRetries": 2,
    "hedging": {"enabled": True, "afterMs": 50, "budgetPercent": 10},
}


def test_killing_one_replica_per_shard_during_a_burst_fails_no_request(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    shards = start_layout(cluster, layouts["v1"], replicas=2)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    router = cluster.router("router", topology, {**ROUTER, "consistency": "strict"})
    wait_ready(router.url)
    killed = threading.Event()

    def kill_at(done: int) -> None:
        if done >= 100 and not killed.is_set():
            killed.set()
            shards[0][0].kill()
            shards[1][1].kill()

    results = asyncio.run(burst(router.url, count=500, concurrency=8, on_progress=kill_at))
    assert killed.is_set()
    assert len(results) == 500
    assert failures(results) == []
    assert {r.json()["index_version"] for r in results if isinstance(r, httpx.Response)} == {"v1"}
    metrics = httpx.get(f"{router.url}/metrics").text
    assert "shardrec_router_ejections_total" in metrics


def test_a_dead_shard_is_503_under_strict_and_partial_under_available(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    shards = start_layout(cluster, layouts["v1"], replicas=2)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    strict = cluster.router("strict", topology, {**ROUTER, "consistency": "strict"})
    available = cluster.router("available", topology, {**ROUTER, "consistency": "available"})
    wait_ready(strict.url)
    wait_ready(available.url)
    body = {"user_id": "user-3", "k": 10}
    assert httpx.post(f"{strict.url}/v1/recommend", json=body).json()["partial"] is False
    for process in shards[1]:
        process.kill()
    refused = httpx.post(f"{strict.url}/v1/recommend", json=body, timeout=10)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "shard 1" in refused.json()["error"]["message"]
    partial = httpx.post(f"{available.url}/v1/recommend", json=body, timeout=10)
    assert partial.status_code == 200
    answer = partial.json()
    assert answer["partial"] is True and answer["shards"] == {"answered": 1, "total": 2}
    assert len(answer["items"]) == 10


def test_switching_to_a_new_version_during_traffic_fails_nothing_and_mixes_nothing(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    old = start_layout(cluster, layouts["v1"], replicas=1)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], old)
    router = cluster.router("router", topology, {**ROUTER, "consistency": "strict"})
    wait_ready(router.url)
    new = start_layout(cluster, layouts["v2"], replicas=1)
    switched = threading.Event()

    def switch_at(done: int) -> None:
        if done >= 150 and not switched.is_set():
            switched.set()
            write_topology(topology, 2, layouts["v2"], new)

    during = asyncio.run(burst(router.url, count=600, concurrency=8, on_progress=switch_at))
    assert switched.is_set()
    wait_ready(router.url, version="v2")  # bounded wait for the watcher
    after = asyncio.run(burst(router.url, count=100, concurrency=4))
    assert failures(during) == [] and failures(after) == []
    versions = []
    for response in during + after:
        assert isinstance(response, httpx.Response)
        answer = response.json()
        version = answer["index_version"]
        versions.append(version)
        assert answer["items"], answer
        # Item ids carry their version's prefix: one foreign id would be a mixed answer.
        assert {item["item_id"].split("-")[0] for item in answer["items"]} == {version}
    assert versions[0] == "v1"
    assert set(versions[len(during) :]) == {"v2"}


def test_bad_inputs_get_the_right_4xx_from_the_real_process(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    shards = start_layout(cluster, layouts["v1"], replicas=1)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    router = cluster.router("router", topology, {**ROUTER, "maxBatchSize": 8}, keys="tester:secret-key\n")
    wait_ready(router.url)
    auth = {"x-api-key": "secret-key", "content-type": "application/json"}
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("/v1/recommend", b'{"user_id": "user-1"}', {}, 401),
        ("/v1/recommend", b'{"user_id": "user-1"}', {"x-api-key": "nope"}, 403),
        ("/v1/recommend", b"\x00garbage{", auth, 400),
        ("/v1/recommend", b'{"user_id": 12}', auth, 422),
        ("/v1/recommend", b'{"user_id": "user-1", "k": 100000}', auth, 422),
        ("/v1/recommend", b'{"vector": [NaN, 1, 1, 1, 1, 1, 1, 1]}', auth, 400),
        ("/v1/recommend", b'{"vector": [1e39, 1, 1, 1, 1, 1, 1, 1]}', auth, 422),
        ("/v1/recommend", b'{"vector": [1, 2]}', auth, 422),
        ("/v1/recommend", b'{"user_id": "no-such-user"}', auth, 404),
        ("/v1/recommend/batch", json.dumps({"queries": [{"user_id": "user-1"}] * 9}).encode(), auth, 413),
        ("/v1/similar", b'{"item_id": "v1-item-999999"}', auth, 404),
        ("/v1/recommend", b"{" + b" " * (5 * 1024 * 1024) + b"}", auth, 413),
    ]
    with httpx.Client(base_url=router.url, timeout=10) as client:
        for path, body, headers, status in cases:
            response = client.post(path, content=body, headers=headers)
            assert response.status_code == status, (path, body[:50], response.text)
            assert set(response.json()["error"]) == {"code", "message"}
        ok = client.post("/v1/similar", json={"item_id": "v1-item-5", "k": 3}, headers=auth)
        assert ok.status_code == 200 and "v1-item-5" not in {i["item_id"] for i in ok.json()["items"]}
        seen_items = {"v1-item-14", "v1-item-15", "v1-item-16"}  # user-2's, see write_embeddings
        every = client.post(
            "/v1/recommend", json={"user_id": "user-2", "k": ITEMS, "exclude_seen": False}, headers=auth
        ).json()
        assert seen_items & {i["item_id"] for i in every["items"]}
        unseen = client.post("/v1/recommend", json={"user_id": "user-2", "k": ITEMS}, headers=auth).json()
        assert not seen_items & {i["item_id"] for i in unseen["items"]}


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_prestop_drain_takes_a_replica_out_before_it_stops_and_fails_no_request(
    cluster: Cluster, layouts: dict[str, Path]
) -> None:
    """What the shard pod's preStop hook does: GET /prestop fails the replica's readiness, the
    router's probes eject it while it still answers, the hook returns after --drain-seconds, and
    only then SIGTERM: the replica had no traffic left to lose."""
    drain_s = 3.0
    shards = {
        s: [cluster.shard(cluster_layout, s, r) for r in range(2)]
        for s, cluster_layout in ((0, layouts["v1"]), (1, layouts["v1"]))
    }
    drained = cluster.start(
        "v1-s0-drained", "shardrec.serving.shard.main", "--layout-dir", str(layouts["v1"]), "--shard", "0",
        "--search-threads", "1", "--drain-seconds", str(drain_s),
    )  # fmt: skip
    shards[0] = [drained, shards[0][1]]
    shards[0][0] = drained
    for procs in shards.values():
        for process in procs:
            wait_ready(process.url)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    router = cluster.router("router", topology, {**ROUTER, "consistency": "strict"})
    wait_ready(router.url)
    seen: dict[str, Any] = {}

    def pre_stop_then_sigterm() -> None:
        hook = httpx.get(f"{drained.url}/prestop", timeout=drain_s + 10)
        seen["hook"] = hook.status_code
        metrics = httpx.get(f"{router.url}/metrics").text
        seen["ejected_before_sigterm"] = _metric(
            metrics, "shardrec_router_ejections_total", replica=drained.name
        )
        seen["retries_before_sigterm"] = _metric(metrics, "shardrec_router_retries_total", shard="0")
        drained.popen.terminate()
        seen["exit"] = drained.popen.wait(15)

    stopper = threading.Thread(target=pre_stop_then_sigterm)

    def start_at(done: int) -> None:
        if done >= 100 and not stopper.is_alive() and "started" not in seen:
            seen["started"] = True
            seen["retries_at_start"] = _metric(
                httpx.get(f"{router.url}/metrics").text, "shardrec_router_retries_total", shard="0"
            )
            stopper.start()

    results = asyncio.run(burst(router.url, count=1500, concurrency=8, on_progress=start_at))
    stopper.join(30)
    # uvicorn finishes its graceful shutdown, then re-raises the SIGTERM it caught: -SIGTERM.
    assert not stopper.is_alive() and seen["hook"] == 200 and seen["exit"] == -signal.SIGTERM, seen
    assert failures(results) == []
    assert seen["ejected_before_sigterm"] >= 1, "the router stopped choosing the replica while it still ran"
    assert seen["retries_before_sigterm"] == seen["retries_at_start"], (
        "no request to it failed while draining"
    )
    served_after = _metric(
        httpx.get(f"{router.url}/metrics").text, "shardrec_router_retries_total", shard="0"
    )
    print(f"drain: {seen}; shard 0 retries at the end {served_after}")
