"""The fault suite: each scenario injects one fault into real processes on 127.0.0.1 while normal
clients send a bounded number of requests, asserts what those clients must get, and records
requests sent, failed and the p99 latency (client-measured) for docs/reliability.md.

Data-plane scenarios use the shard-and-router harness of tests/serving/test_failover_integration
(2 shards, 300 items x 8 dimensions); the router and supervisor kills run the local runtime
(`recctl up`). Nothing asserts on absolute speed: latency bounds are ratios of the router's own
timeoutMs, and heavy batches only report. Every loop is bounded in count and time, and every
process is stopped by its pid.

Not here: slow and lossy links (`tc netem` on pod interfaces) need the real node (e2e/node).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shardrec.api.commands import MAX_K
from shardrec.serving.shard.exit_codes import EXIT_LOAD_FAILED
from shardrec.tools.local.ports import free_port
from shardrec.tools.local.processes import processes_of_state_dir
from tests.chaos.conftest import REQUESTS, Recorder
from tests.local.test_local_cluster import _manifest, _recctl, _wait_for, _write_embeddings
from tests.serving.test_failover_integration import (
    DIM,
    ROUTER,
    USERS,
    Cluster,
    Process,
    layouts,
    start_layout,
    wait_ready,
    write_topology,
)
from tests.serving.test_hardening_integration import hold_slow_bodies

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300)]
__all__ = ["layouts"]  # fixtures, re-used

TIMEOUT_MS = 1000


@dataclass
class Outcome:
    seconds: float
    status: int | None  # None: a transport error
    body: dict[str, Any] | None = None
    poison: bool = False
    started: float = 0.0  # time.monotonic() when it was sent


def p99_ms(outcomes: list[Outcome]) -> float:
    seconds = sorted(o.seconds for o in outcomes)
    return 1000 * seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))] if seconds else 0.0


def failed(outcomes: list[Outcome]) -> int:
    return sum(1 for o in outcomes if o.status != 200)


def normal_body(index: int) -> dict[str, Any]:
    if index % 2:
        return {"user_id": f"user-{index % USERS}", "k": 10}
    return {"vector": [float((index + d) % 5) - 2 for d in range(DIM)], "k": 10}


async def load(
    url: str,
    count: int,
    concurrency: int,
    body: Callable[[int], dict[str, Any]] = normal_body,
    poison: Callable[[int], bool] = lambda _: False,
) -> list[Outcome]:
    """`count` requests from `concurrency` workers, each timed."""
    outcomes: list[Outcome] = []
    queue = iter(range(count))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            for index in queue:
                started = time.monotonic()
                try:
                    response = await client.post("/v1/recommend", json=body(index))
                except httpx.HTTPError:
                    outcomes.append(Outcome(time.monotonic() - started, None, None, poison(index), started))
                    continue
                outcomes.append(
                    Outcome(
                        time.monotonic() - started,
                        response.status_code,
                        response.json()
                        if response.headers.get("content-type", "").startswith("application/json")
                        else None,
                        poison(index),
                        started,
                    )
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def warm(url: str) -> None:
    """A few requests before measuring (not counted): first connections, first searches."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for index in range(20):
            client.post("/v1/recommend", json=normal_body(index))


@dataclass
class Plane:
    """2 shards x 2 replicas of layout v1, shared by the data-plane scenarios (a SIGSTOPped replica
    is continued before its scenario ends); each scenario starts its own router on them."""

    cluster: Cluster
    layout: Path
    shards: dict[int, list[Process]]
    topology: Path
    count: int = 0
    routers: list[Process] = field(default_factory=list)

    def router(self, config: dict[str, Any], topology: Path | None = None) -> Process:
        self.count += 1
        process = self.cluster.router(f"router-{self.count}", topology or self.topology, config)
        self.routers.append(process)
        wait_ready(process.url)
        warm(process.url)
        return process

    def stop_routers(self) -> None:
        for process in self.routers:
            if process.popen.poll() is None:
                process.popen.terminate()
                process.popen.wait(10)
        self.routers.clear()


@pytest.fixture(scope="module")
def plane(layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    running = Cluster(tmp_path_factory.mktemp("plane"))
    try:
        shards = start_layout(running, layouts["v1"], replicas=2)
        topology = running.tmp / "topology.json"
        write_topology(topology, 1, layouts["v1"], shards)
        yield Plane(running, layouts["v1"], shards, topology)
    finally:
        running.stop()


@pytest.fixture
def scenario(plane: Plane) -> Iterator[Plane]:
    """The shared plane, with the routers this scenario started stopped after it."""
    try:
        yield plane
    finally:
        plane.stop_routers()


def test_slow_bodies(scenario: Plane, chaos: Recorder) -> None:
    router = scenario.router({**ROUTER, "maxInFlight": 8})

    async def attack() -> list[Outcome]:
        started, stop = asyncio.Event(), asyncio.Event()
        holding = asyncio.create_task(hold_slow_bodies(router.url, 48, started, stop))
        await asyncio.wait_for(started.wait(), 30)
        try:
            return await load(router.url, REQUESTS, concurrency=4)
        finally:
            stop.set()
            await holding

    outcomes = asyncio.run(attack())
    chaos.record(
        "slow-bodies", len(outcomes), failed(outcomes), p99_ms(outcomes), "every normal request answered"
    )
    assert len(outcomes) == REQUESTS and failed(outcomes) == 0


def test_poison_ids(scenario: Plane, chaos: Recorder) -> None:
    router = scenario.router({**ROUTER, "consistency": "strict"})

    def body(index: int) -> dict[str, Any]:
        bad = index % 10 == 0
        return {
            "user_id": f"user-{index % USERS}",
            "k": 10,
            "exclude": ["v1-item-1\nv1-item-2"] if bad else ["v1-item-3"],
        }

    outcomes = asyncio.run(load(router.url, REQUESTS, 16, body, poison=lambda i: i % 10 == 0))
    innocent = [o for o in outcomes if not o.poison]
    bad = [o for o in outcomes if o.poison]
    chaos.record(
        "poison-ids",
        len(outcomes),
        failed(innocent),
        p99_ms(innocent),
        f"{len(bad)} poison requests: {sum(o.status == 422 for o in bad)} got 422; "
        "innocent ones all answered",
    )
    assert failed(innocent) == 0
    assert all(o.status == 422 for o in bad) and len(bad) == REQUESTS // 10 + (REQUESTS % 10 > 0)


def test_sigstop_of_one_replica(scenario: Plane, chaos: Recorder) -> None:
    router = scenario.router({**ROUTER, "timeoutMs": TIMEOUT_MS})
    victim = scenario.shards[0][0].popen.pid
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    # Until a health probe finds the stopped replica dead (a probe interval and its timeout, about
    # 1 s), requests sent to it wait for a hedge, and hedges are budgeted (10% of requests): some
    # of those wait out their deadline. After that, none may fail.
    settled = stopped_at + 2 * TIMEOUT_MS / 1000
    try:
        outcomes = asyncio.run(load(router.url, REQUESTS, concurrency=8))
        time.sleep(max(0.0, settled - time.monotonic()))
        outcomes += asyncio.run(load(router.url, REQUESTS // 2, concurrency=8))
    finally:
        os.kill(victim, signal.SIGCONT)
    late = [o for o in outcomes if o.started >= settled]
    early_failed = sum(1 for o in outcomes if o.started < settled and o.status != 200)
    chaos.record(
        "sigstop-replica",
        len(outcomes),
        failed(outcomes),
        p99_ms(outcomes),
        f"{early_failed} failed (503 at the deadline) in the {2 * TIMEOUT_MS / 1000:.0f} s before the "
        f"health probe ejected the replica (hedges are budgeted); 0 of the {len(late)} sent after",
    )
    assert late and failed(late) == 0
    assert failed(outcomes) <= len(outcomes) // 10


def test_sigstop_of_a_whole_shard(scenario: Plane, chaos: Recorder) -> None:
    strict = scenario.router({**ROUTER, "timeoutMs": TIMEOUT_MS})
    available = scenario.router({**ROUTER, "timeoutMs": TIMEOUT_MS, "consistency": "available"})
    shards = scenario.shards
    for process in shards[1]:
        os.kill(process.popen.pid, signal.SIGSTOP)
    try:
        strict_outcomes = asyncio.run(load(strict.url, REQUESTS, concurrency=8))
        available_outcomes = asyncio.run(load(available.url, REQUESTS, concurrency=8))
    finally:
        for process in shards[1]:
            os.kill(process.popen.pid, signal.SIGCONT)
    named = sum(
        1
        for o in strict_outcomes
        if o.status == 503 and o.body is not None and "shard 1" in o.body["error"]["message"]
    )
    chaos.record(
        "sigstop-shard-strict",
        len(strict_outcomes),
        failed(strict_outcomes),
        p99_ms(strict_outcomes),
        f"{named} x 503 naming shard 1, by design: the first wait their deadline, then fail at once",
    )
    partial = sum(1 for o in available_outcomes if o.status == 200 and o.body and o.body["partial"])
    chaos.record(
        "sigstop-shard-available",
        len(available_outcomes),
        failed(available_outcomes),
        p99_ms(available_outcomes),
        f"{partial} answers flagged partial (1 of 2 shards), by design",
    )
    assert named == len(strict_outcomes)
    assert failed(available_outcomes) == 0 and partial == len(available_outcomes)
    for outcomes in (strict_outcomes, available_outcomes):
        assert p99_ms(outcomes) <= 1.2 * TIMEOUT_MS


HEAVY_CLIENT = """
import sys, time, httpx
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
batch = {"queries": [{"user_id": f"user-{i}", "k": int(sys.argv[3])} for i in range(32)]}
sent = 0
with httpx.Client(base_url=url, timeout=30) as client:
    while time.monotonic() < deadline and sent < 100000:
        client.post("/v1/recommend/batch", json=batch)
        sent += 1
print(sent, flush=True)
"""


def test_heavy_batches(scenario: Plane, chaos: Recorder) -> None:
    router = scenario.router({**ROUTER, "timeoutMs": 2000})
    baseline = asyncio.run(load(router.url, REQUESTS, concurrency=4))
    heavy = subprocess.Popen(
        [sys.executable, "-c", HEAVY_CLIENT, router.url, "600", str(MAX_K)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        outcomes = asyncio.run(load(router.url, REQUESTS, concurrency=4))
    finally:
        heavy.send_signal(signal.SIGTERM)
        heavy.wait(timeout=30)
    chaos.record(
        "heavy-batches",
        len(outcomes),
        failed(outcomes),
        p99_ms(outcomes),
        f"normal p99 without the heavy client: {p99_ms(baseline):.0f} ms",
    )
    assert failed(baseline) == 0 and failed(outcomes) == 0


def _flip_a_byte(layout: Path, shard: int) -> Path:
    """Flip one byte in the middle of the shard's HNSW index file (checksummed in its manifest)."""
    target = layout / f"shard-{shard:04d}" / "index.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_corrupted_artifact(scenario: Plane, chaos: Recorder, tmp_path: Path) -> None:
    good = scenario.shards
    corrupted = tmp_path / "corrupted-v1"
    shutil.copytree(scenario.layout, corrupted)
    flipped = _flip_a_byte(corrupted, 1)
    bad = scenario.cluster.shard(corrupted, 1, 1)
    code = bad.popen.wait(timeout=60)
    log = (scenario.cluster.tmp / f"{bad.name}.log").read_text()
    topology = tmp_path / "topology.json"
    write_topology(topology, 1, scenario.layout, {0: good[0][:1], 1: [good[1][0], bad]})
    router = scenario.router({**ROUTER, "timeoutMs": TIMEOUT_MS}, topology)
    outcomes = asyncio.run(load(router.url, REQUESTS, concurrency=8))
    chaos.record(
        "corrupted-artifact",
        len(outcomes),
        failed(outcomes),
        p99_ms(outcomes),
        f"the replica refused to serve ({flipped.name}: exit {code}, sha256 mismatch); its peer answered",
    )
    assert code == EXIT_LOAD_FAILED and "sha256 mismatch" in log, log[-500:]
    assert failed(outcomes) == 0


# Writes past 64 KiB fail with EFBIG, as they would with ENOSPC on a full disk: the nearest fault a
# test can inject without mounting a small filesystem. SIGXFSZ is ignored (a disposition exec
# keeps) so the write fails instead of killing the build.
FULL_DISK = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def test_full_disk_during_a_build(scenario: Plane, chaos: Recorder, tmp_path: Path) -> None:
    router = scenario.router(ROUTER)
    embeddings = tmp_path / "emb-big"
    _write_embeddings(embeddings, seed=3)  # 3,000 x 16 float32: 192 KB of items alone
    out = tmp_path / "layout-v3"
    build = subprocess.Popen(
        [sys.executable, "-c", FULL_DISK, "-m", "shardrec.tools.cli.main", "index", "build",
         "--embeddings", str(embeddings), "--out", str(out), "--version", "v3", "--shards", "2",
         "--metric", "ip", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        outcomes = asyncio.run(load(router.url, REQUESTS, concurrency=4))
        _, stderr = build.communicate(timeout=120)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait(timeout=10)
    error_lines = [line for line in stderr.splitlines() if line.strip()]
    chaos.record(
        "full-disk",
        len(outcomes),
        failed(outcomes),
        p99_ms(outcomes),
        f"build exit {build.returncode}, one line (`{_short(error_lines)}`), no layout.json; v1 kept serving",
    )
    assert build.returncode != 0
    assert len(error_lines) == 1 and error_lines[0].startswith("recctl: error:"), stderr[-1000:]
    assert "wrote 65536 of" in error_lines[0] or "File too large" in error_lines[0], error_lines
    assert not (out / "layout.json").exists(), "a half-written layout looks built"
    assert failed(outcomes) == 0


def _short(lines: list[str]) -> str:
    """The error line without its temporary paths, for the table."""
    return lines[0].rsplit(": ", 1)[-1] if lines else ""


# --- the local runtime -----------------------------------------------------------------------


@dataclass
class Traffic:
    """Sequential requests in a thread, bounded in count, each timed."""

    url: str
    limit: int
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set() and len(self.outcomes) < self.limit:
                started = time.monotonic()
                try:
                    status: int | None = client.post(
                        "/v1/recommend", json={"user_id": f"user-{len(self.outcomes) % 40}", "k": 5}
                    ).status_code
                except httpx.HTTPError:
                    status = None
                self.outcomes.append(Outcome(time.monotonic() - started, status))
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class LocalCluster:
    manifest: Path
    state: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        _recctl(
            "up", "-f", str(self.manifest), "--state-dir", str(self.state), "--port", str(self.port),
            "--detach", "--wait", "90",
        )  # fmt: skip

    def processes(self) -> dict[str, dict[str, Any]]:
        table = json.loads((self.state / "runtime.json").read_text())["processes"]
        return {p["name"]: p for p in table}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("local")
    _write_embeddings(root / "emb", seed=21)
    manifest = root / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(_manifest(root / "emb", "v1", 2)))
    running = LocalCluster(manifest, root / "state", free_port())
    running.up()
    try:
        yield running
    finally:
        _recctl("down", "--state-dir", str(running.state), check=False)


def test_router_kill(local: LocalCluster, chaos: Recorder) -> None:
    before = local.processes()["router"]
    with Traffic(local.url, limit=REQUESTS * 4) as traffic:
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(before["pid"], signal.SIGKILL)
        _wait_for(
            lambda: (p := local.processes()["router"])["pid"] != before["pid"] and p["ready"],
            "the router to be restarted and ready",
            timeout_s=60,
        )
        recovered_s = time.monotonic() - killed_at
    # A fresh client after the restart: refused requests go fast, so on a loaded machine (a 13 s
    # restart seen in CI) the outage alone could use up the first client's whole budget.
    with Traffic(local.url, limit=REQUESTS) as again:
        _wait_for(lambda: len(again.outcomes) >= REQUESTS, "requests after the restart", timeout_s=60)
    after = again.outcomes
    outcomes = traffic.outcomes + after
    chaos.record(
        "router-kill",
        len(outcomes),
        failed(outcomes),
        p99_ms(outcomes),
        f"refused until the supervisor restarted it, ready {recovered_s:.1f} s after the kill; "
        f"{failed(after)} failed of the {len(after)} sent after",
    )
    assert failed(after) == 0 and after


def test_supervisor_kill(local: LocalCluster, chaos: Recorder) -> None:
    before = {name: p["pid"] for name, p in local.processes().items()}
    supervisor = int((local.state / "supervisor.lock").read_text())
    with Traffic(local.url, limit=REQUESTS * 4) as traffic:
        time.sleep(0.5)
        os.kill(supervisor, signal.SIGKILL)
        time.sleep(1.0)
        local.up()
        mark = len(traffic.outcomes)
        while len(traffic.outcomes) < min(mark + REQUESTS // 2, traffic.limit):
            time.sleep(0.05)
    after = {name: p["pid"] for name, p in local.processes().items()}
    running = sorted(identity.pid for identity, _ in processes_of_state_dir(local.state.resolve()))
    chaos.record(
        "supervisor-kill",
        len(traffic.outcomes),
        failed(traffic.outcomes),
        p99_ms(traffic.outcomes),
        f"served throughout; the new supervisor adopted all {len(after)} processes (same pids), no duplicate",
    )
    assert failed(traffic.outcomes) == 0
    assert after == before and running == sorted(after.values())
