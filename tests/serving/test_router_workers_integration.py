"""A router with two worker processes on one port (router/workers.py), real processes: both workers
serve, /metrics answered by either gives the pod's totals, a topology switch reaches every worker,
the user table's vectors are shared through the page cache, and the workers die with the supervisor.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.test_failover_integration import (
    Cluster,
    Process,
    cluster,  # noqa: F401 - fixture
    layouts,  # noqa: F401 - fixture
    start_layout,
    wait_ready,
    write_topology,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REQUESTS = 60


def workers_of(process: Process) -> list[int]:
    children = Path(f"/proc/{process.popen.pid}/task/{process.popen.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def metric(text: str, name: str, *labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {" and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("sockets", ["reuseport", "shared"])
def test_two_workers_share_the_port_and_metrics_sum_over_them(
    cluster: Cluster,  # noqa: F811 - fixture
    layouts: dict[str, Path],  # noqa: F811 - fixture
    tmp_path: Path,
    sockets: str,
) -> None:
    shards = start_layout(cluster, layouts["v1"], replicas=1)
    topology = tmp_path / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    router = cluster.router("router", topology, {}, extra=("--workers", "2", "--worker-sockets", sockets))
    wait_ready(router.url)
    pids = workers_of(router)
    assert len(pids) == 2
    for pid in pids:  # every worker is ready, not just the one that answered
        deadline = time.monotonic() + 30
        while "layout-v1" not in Path(f"/proc/{pid}/maps").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    before = {pid: cpu_ticks(pid) for pid in pids}
    statuses = []
    for index in range(REQUESTS):  # a new connection each: the kernel spreads them over the workers
        with httpx.Client(base_url=router.url, timeout=10) as client:
            for _ in range(20):
                statuses.append(
                    client.post("/v1/recommend", json={"user_id": f"user-{index % 20}"}).status_code
                )
    assert statuses == [200] * (REQUESTS * 20)
    busy = [pid for pid in pids if cpu_ticks(pid) > before[pid]]
    assert len(busy) == 2, f"only {busy} of {pids} served"
    # Each worker publishes its values twice a second (router/metrics.py): the pod's totals are
    # complete within that, then every scrape, whichever worker answers it, reports them.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"{router.url}/metrics", timeout=10).text
        if metric(text, "shardrec_router_requests_total", 'route="/v1/recommend"') == REQUESTS * 20:
            break
        time.sleep(0.1)
    for _ in range(4):  # whichever worker answers /metrics reports the pod's total
        with httpx.Client(base_url=router.url, timeout=10) as client:
            text = client.get("/metrics").text
        assert metric(text, "shardrec_router_requests_total", 'route="/v1/recommend"', 'code="200"') == (
            REQUESTS * 20
        )
        assert metric(text, "shardrec_router_request_duration_seconds_count", 'code="200"') == REQUESTS * 20
        assert metric(text, "shardrec_router_active_version_info", 'version="v1"') == 1


def test_a_switch_reaches_every_worker_and_readyz_reports_what_all_serve(
    cluster: Cluster,  # noqa: F811 - fixture
    layouts: dict[str, Path],  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    v1 = start_layout(cluster, layouts["v1"], replicas=1)
    v2 = start_layout(cluster, layouts["v2"], replicas=1)
    topology = tmp_path / "topology.json"
    write_topology(topology, 1, layouts["v1"], v1)
    router = cluster.router("router", topology, {}, extra=("--workers", "2"))
    wait_ready(router.url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        serving = httpx.get(f"{router.url}/readyz", timeout=5).json()["serving"]
        if serving["revision"] == 1:
            break
        time.sleep(0.1)
    assert serving["layout"] == layouts["v1"].name
    write_topology(topology, 2, layouts["v2"], v2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        serving = httpx.get(f"{router.url}/readyz", timeout=5).json()["serving"]
        if serving["revision"] == 2:
            break
        time.sleep(0.1)
    # The pod's report says revision 2 only once both workers applied it: from then on, every
    # connection (whichever worker takes it) answers from v2.
    assert serving["layout"] == layouts["v2"].name
    for index in range(40):
        with httpx.Client(base_url=router.url, timeout=10) as client:
            items = client.post("/v1/recommend", json={"user_id": f"user-{index % 20}"}).json()["items"]
        assert all(item["item_id"].startswith("v2-") for item in items)


def test_workers_share_the_user_vectors_and_die_with_the_supervisor(
    cluster: Cluster,  # noqa: F811 - fixture
    layouts: dict[str, Path],  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    shards = start_layout(cluster, layouts["v1"], replicas=1)
    topology = tmp_path / "topology.json"
    write_topology(topology, 1, layouts["v1"], shards)
    router = cluster.router("router", topology, {}, extra=("--workers", "2"))
    wait_ready(router.url)
    pids = workers_of(router)
    for pid in pids:  # memory-mapped, not read into each worker's heap
        deadline = time.monotonic() + 30
        while "users.npy" not in Path(f"/proc/{pid}/maps").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "users.npy" in Path(f"/proc/{pid}/maps").read_text()
    os.kill(router.popen.pid, signal.SIGKILL)
    router.popen.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)]
