"""The local runtime end to end: `recctl up`, then under a steady stream of requests kill -9 a
replica, roll a new index version and rebalance 2 -> 3 shards. No request may fail and, under
`strict`, every answer comes whole from one version: the old one or the new one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from shardrec.serving.tls import client_context
from shardrec.tools.local.ports import free_port

pytestmark = pytest.mark.integration

ITEMS, USERS, DIM = 3000, 40, 16
DEADLINE_S = 120


def _recctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardrec.tools.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=check,
    )


def _write_embeddings(folder: Path, seed: int, dim: int = DIM) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "items.npy", rng.normal(size=(ITEMS, dim)).astype(np.float32))
    (folder / "item_ids.txt").write_text("".join(f"item-{i}\n" for i in range(ITEMS)))
    np.save(folder / "users.npy", rng.normal(size=(USERS, dim)).astype(np.float32))
    (folder / "user_ids.txt").write_text("".join(f"user-{i}\n" for i in range(USERS)))
    (folder / "seen.tsv").write_text("user-1\titem-3\nuser-1\titem-4\n")


def _manifest(source: Path, version: str, shards: int) -> dict[str, Any]:
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {"name": "itest"},
        "spec": {
            "shards": shards,
            "replicasPerShard": 2,
            "index": {"version": version, "source": str(source), "dimension": DIM, "metric": "cosine"},
            "router": {"consistency": "strict", "timeoutMs": 2000},
            "rollout": {"keepPreviousLayouts": 1, "rollbackWindowSeconds": 3, "drainSeconds": 1},
        },
    }


@dataclass
class Traffic:
    """A bounded stream of requests in a background thread, recording every outcome."""

    url: str
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set() and self.sent < 20000:
                self.sent += 1
                try:
                    response = client.post(
                        "/v1/recommend", json={"user_id": f"user-{self.sent % USERS}", "k": 5}
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(f"transport: {exc!r}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                if body["partial"] or body["shards"]["answered"] != body["shards"]["total"]:
                    self.failures.append(f"partial answer under strict: {body}")
                self.versions[body["index_version"]] += 1
                time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    for version, seed in (("v1", 1), ("v2", 2)):
        _write_embeddings(tmp_path / f"emb-{version}", seed)
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(_manifest(tmp_path / "emb-v1", "v1", 2)))
    state = tmp_path / "state"
    port = free_port()
    _recctl(
        "up", "-f", str(manifest), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90"
    )
    try:
        yield manifest, state, f"http://127.0.0.1:{port}"
    finally:
        _recctl("down", "--state-dir", str(state), check=False)


def _wait_for(predicate: Any, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _status(state: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((state / "status.json").read_text())
    return result


def test_kill_roll_and_rebalance_under_traffic_fail_no_request(cluster: tuple[Path, Path, str]) -> None:
    manifest, state, url = cluster
    traffic = Traffic(url)
    worker = threading.Thread(target=traffic.run, daemon=True)
    worker.start()
    try:
        time.sleep(1.0)
        # kill -9 one replica of shard 0: the router must route around it, the supervisor restart it
        runtime = json.loads((state / "runtime.json").read_text())
        victim = next(
            p for p in runtime["processes"] if p["name"].endswith("-0-0") and p["name"].startswith("shard-")
        )
        os.kill(victim["pid"], signal.SIGKILL)
        _wait_for(
            lambda: any(
                p["name"] == victim["name"] and p["restarts"] >= 1 and p["ready"]
                for p in json.loads((state / "runtime.json").read_text())["processes"]
            ),
            "the killed replica to be restarted and ready",
        )

        # roll v2 and rebalance to 3 shards in one apply: a new layout, cut over in one step
        manifest.write_text(yaml.safe_dump(_manifest(manifest.parent / "emb-v2", "v2", 3)))
        applied = _recctl("apply", "-f", str(manifest), "--state-dir", str(state), "--wait", "90")
        assert "configured" in applied.stdout
        _wait_for(lambda: traffic.versions["v2"] > 50, "answers from v2")
        _wait_for(
            lambda: len(_status(state)["layouts"]) == 1, "the old layout to be deleted after its window"
        )
    finally:
        traffic.stop()
        worker.join(timeout=10)

    status = _status(state)
    assert status["phase"] == "Ready" and status["activeVersion"] == "v2"
    assert [s["readyReplicas"] for s in status["shards"]] == [2, 2, 2]
    assert traffic.failures == [], traffic.failures[:5]
    assert set(traffic.versions) == {"v1", "v2"}, traffic.versions
    assert traffic.sent > 100


def _shard_processes(state: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (pid, restarts, port) of every shard replica."""
    runtime = json.loads((state / "runtime.json").read_text())
    return {
        p["name"]: (p["pid"], p["restarts"], p["port"])
        for p in runtime["processes"]
        if p["name"].startswith("shard-")
    }


def _ef_in_use(state: Path, port: int) -> int:
    # Shards serve HTTPS with the cluster's own CA by default (docs/operator.md, TLS).
    verify = client_context(state / "tls" / "ca.pem")
    info = httpx.get(f"https://127.0.0.1:{port}/v1/info", timeout=5, verify=verify).json()
    return int(info["index"]["hnsw"]["ef_search"])


def test_ef_search_change_applies_live_without_a_restart(cluster: tuple[Path, Path, str]) -> None:
    """efSearch travels in the topology and the router sends it with every shard query: a change
    rewrites the topology, restarts no process, and the shards search with the new ef."""
    manifest, state, url = cluster
    before = _shard_processes(state)
    router_pid = next(
        p["pid"]
        for p in json.loads((state / "runtime.json").read_text())["processes"]
        if p["name"] == "router"
    )

    def query_all(count: int) -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            for i in range(count):
                response = client.post("/v1/recommend", json={"user_id": f"user-{i % USERS}", "k": 5})
                assert response.status_code == 200, response.text

    query_all(100)
    assert {_ef_in_use(state, port) for _, _, port in before.values()} == {64}  # the spec's default
    changed = yaml.safe_load(manifest.read_text())
    changed["spec"]["index"]["hnsw"] = {"efSearch": 300}
    manifest.write_text(yaml.safe_dump(changed))
    _recctl("apply", "-f", str(manifest), "--state-dir", str(state), "--wait", "90")
    _wait_for(
        lambda: json.loads((state / "topology.json").read_text())["active"].get("ef_search") == 300,
        "the topology to carry efSearch 300",
    )

    def every_shard_searched_with_300() -> bool:
        # The router's file watch picks the document up on its own schedule (slower on a loaded
        # machine): query until every replica has searched with the new ef (bounded by _wait_for).
        query_all(50)  # every replica gets queries (the router spreads them)
        return {_ef_in_use(state, port) for _, _, port in before.values()} == {300}

    _wait_for(every_shard_searched_with_300, "every shard replica to search with efSearch 300")
    after = _shard_processes(state)
    assert after == before, "a shard process restarted or moved"
    assert router_pid in [p["pid"] for p in json.loads((state / "runtime.json").read_text())["processes"]]


def test_up_twice_says_it_is_already_running(cluster: tuple[Path, Path, str]) -> None:
    manifest, state, _ = cluster
    again = _recctl(
        "up", "-f", str(manifest), "--state-dir", str(state), "--port", str(free_port()), check=False
    )
    assert again.returncode == 1
    assert "already running" in again.stderr


def test_bad_yaml_names_the_field(tmp_path: Path) -> None:
    bad = _manifest(tmp_path, "v1", 2)
    bad["spec"]["replicasPerShard"] = 99
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = _recctl("up", "-f", str(path), "--state-dir", str(tmp_path / "s"), check=False)
    assert result.returncode == 1
    assert "spec.replicasPerShard" in result.stderr and "less than or equal to 16" in result.stderr


def test_metric_change_is_refused_in_place(cluster: tuple[Path, Path, str]) -> None:
    manifest, state, _ = cluster
    changed = yaml.safe_load(manifest.read_text())
    changed["spec"]["index"]["metric"] = "l2"
    manifest.write_text(yaml.safe_dump(changed))
    result = _recctl("apply", "-f", str(manifest), "--state-dir", str(state), check=False)
    assert result.returncode == 1
    assert "index.metric cannot change in place" in result.stderr


def test_up_on_a_used_state_folder_waits_for_this_runs_router(cluster: tuple[Path, Path, str]) -> None:
    """`up --detach --wait` used to read the Ready status the previous run left in the folder and
    return before the router listened: a query straight after it got 'connection refused'."""
    manifest, state, url = cluster
    port = url.rsplit(":", 1)[1]
    for attempt in range(3):
        _recctl("down", "--state-dir", str(state))
        assert _status(state)["phase"] == "Ready", "the stale status the old wait trusted"
        _recctl(
            "up", "-f", str(manifest), "--state-dir", str(state), "--port", port, "--detach", "--wait", "90"
        )
        response = httpx.post(f"{url}/v1/recommend", json={"user_id": "user-1", "k": 5}, timeout=5)
        assert response.status_code == 200, f"attempt {attempt}: {response.text}"
        assert not response.json()["partial"]


def test_a_replica_whose_port_is_taken_moves_to_another_port(tmp_path: Path) -> None:
    """A shard that cannot bind exits with EXIT_PORT_IN_USE and the supervisor gives it a new port
    (it used to restart it on the same port, failing for as long as the other socket lived)."""
    from shardrec.tools.local.ports import PortAllocator
    from shardrec.tools.local.state import StateDir
    from shardrec.tools.local.supervisor import LocalSupervisor

    _write_embeddings(tmp_path / "emb", seed=3)
    spec = _manifest(tmp_path / "emb", "v1", 1)
    spec["spec"]["replicasPerShard"] = 1
    spec["metadata"]["generation"] = 1
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.spec_file.write_text(yaml.safe_dump(spec))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        # The check is fooled on purpose: that is the race between choosing a port and binding it.
        allocator = PortAllocator(candidates=[taken, free_port(), free_port()], is_free=lambda _: True)
        supervisor = LocalSupervisor(state=state, router_port=free_port(), ports=allocator)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while supervisor.reconcile_once().phase != "Ready":
                assert time.monotonic() < deadline, "not Ready in time"
                time.sleep(0.2)
            replicas = [p for n, p in supervisor.processes.items() if n.startswith("shard-")]
            assert len(replicas) == 1
            proc = replicas[0]
            assert proc.spec.port != taken
            topology = json.loads(state.topology_file.read_text())
            urls = [r["url"] for s in topology["active"]["endpoints"] for r in s["replicas"]]
            assert urls == [f"https://127.0.0.1:{proc.spec.port}"]
            log_text = (state.logs_dir / f"{proc.spec.name}.log").read_text()
            assert f"cannot listen on 127.0.0.1:{taken}" in log_text
        finally:
            supervisor.shutdown()


def test_the_minimal_example_runs_locally(tmp_path: Path) -> None:
    """examples/minimal.yaml as it is, but for `index.source` pointed at a folder on this machine."""
    example = Path(__file__).resolve().parents[2] / "examples" / "minimal.yaml"
    manifest = yaml.safe_load(example.read_text())
    _write_embeddings(tmp_path / "emb", seed=5, dim=manifest["spec"]["index"]["dimension"])
    manifest["spec"]["index"]["source"] = str(tmp_path / "emb")
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump(manifest))
    state, port = tmp_path / "state", free_port()
    _recctl("up", "-f", str(path), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90")
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/recommend", json={"user_id": "user-3", "k": 10}, timeout=5
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["index_version"] == "v1" and len(body["items"]) == 10 and not body["partial"]
        assert _status(state)["replicas"] == manifest["spec"]["shards"] * manifest["spec"]["replicasPerShard"]
    finally:
        _recctl("down", "--state-dir", str(state), check=False)


def test_rollback_within_and_after_the_window_rebuilds_nothing_and_fails_no_request(tmp_path: Path) -> None:
    """v1 -> v2 -> v1 while v1 is still kept for rollback (its processes run: an instant switch),
    then v1 -> v2 after v2 was deleted (its artifact is reused: shard processes start, no build).
    Under steady traffic: no request fails and every answer is whole."""
    for version, seed in (("v1", 1), ("v2", 2)):
        _write_embeddings(tmp_path / f"emb-{version}", seed)
    manifest = _manifest(tmp_path / "emb-v1", "v1", 2)
    manifest["spec"]["rollout"] = {"keepPreviousLayouts": 1, "rollbackWindowSeconds": 8, "drainSeconds": 1}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(manifest))
    state, port = tmp_path / "state", free_port()
    _recctl("up", "-f", str(path), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90")

    def apply(version: str) -> None:
        manifest["spec"]["index"]["version"] = version
        manifest["spec"]["index"]["source"] = str(tmp_path / f"emb-{version}")
        path.write_text(yaml.safe_dump(manifest))
        _recctl("apply", "-f", str(path), "--state-dir", str(state), "--wait", "90")
        assert _status(state)["activeVersion"] == version

    def build_logs() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in (state / "logs").glob("build-*.log")}

    traffic = Traffic(f"http://127.0.0.1:{port}")
    worker = threading.Thread(target=traffic.run, daemon=True)
    worker.start()
    try:
        apply("v2")
        built = build_logs()
        assert len(built) == 2
        apply("v1")  # within v1's rollback window: its shards still run
        assert build_logs() == built, "rolling back within the window rebuilt something"
        assert len(_status(state)["layouts"]) == 2
        _wait_for(lambda: len(_status(state)["layouts"]) == 1, "v2 to be deleted after its window")
        apply("v2")  # v2's processes are gone; its artifact is not
        assert build_logs() == built, "rolling back after the window rebuilt the layout"
    finally:
        traffic.stop()
        worker.join(timeout=10)
        _recctl("down", "--state-dir", str(state), check=False)
    assert traffic.failures == [], traffic.failures[:5]
    assert set(traffic.versions) == {"v1", "v2"} and traffic.sent > 50


def test_a_low_quality_version_is_refused_before_its_shards_start_and_v1_keeps_serving(
    tmp_path: Path,
) -> None:
    """spec.index.qualityGate in the local runtime: v2's embeddings record a lower NDCG@10 than the
    gate allows, so its layout builds (that reads the metrics) but no shard of it starts, the status
    and events.log name the predicate, and every answer keeps coming from v1."""
    for version, seed, ndcg in (("v1", 1, 0.040), ("v2", 2, 0.020)):
        folder = tmp_path / f"emb-{version}"
        _write_embeddings(folder, seed)
        quality = {"split": "test", "per_user": 1, "k": 10, "users": USERS, "ndcg_at_10": ndcg}
        (folder / "metadata.json").write_text(json.dumps({"metric": "cosine", "quality": quality}))
    body = _manifest(tmp_path / "emb-v1", "v1", 2)
    body["spec"]["index"]["qualityGate"] = {"minNdcgAt10": 0.03, "minRelativeToActive": 0.9}
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(body))
    state = tmp_path / "state"
    port = free_port()
    _recctl(
        "up", "-f", str(manifest), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90"
    )
    try:
        assert _status(state)["activeVersion"] == "v1", "v1 meets the gate and serves"
        v1_layout = _status(state)["activeLayout"]
        body["spec"]["index"]["version"] = "v2"
        body["spec"]["index"]["source"] = str(tmp_path / "emb-v2")
        manifest.write_text(yaml.safe_dump(body))
        _recctl("apply", "-f", str(manifest), "--state-dir", str(state))

        def refused() -> bool:
            status = _status(state)
            return any(entry["predicate"] == "meets_quality_gate" for entry in status.get("blockedBy", []))

        _wait_for(refused, "the quality gate to refuse v2")
        status = _status(state)
        v2_layout = status["targetLayout"]
        reason = next(e["reason"] for e in status["blockedBy"] if e["predicate"] == "meets_quality_gate")
        assert "NDCG@10 0.0200 (test split) is below spec.index.qualityGate.minNdcgAt10 0.0300" in reason
        progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
        assert progressing["reason"] == "QualityGateFailed" and progressing["status"] == "False"
        assert status["activeVersion"] == "v1" and status["activeLayout"] == v1_layout
        assert (state / "layouts" / v2_layout / "layout.json").is_file(), "v2 was built"
        logs = [path.name for path in (state / "logs").iterdir() if v2_layout in path.name]
        assert logs == [f"build-{v2_layout}.log"], f"no shard process of v2 ever started: {logs}"
        events = (state / "events.log").read_text()
        assert "MeetsQualityGate" in events and v2_layout in events, "a Warning Event names the refusal"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for user in range(5):
                answer = client.post("/v1/recommend", json={"user_id": f"user-{user}", "k": 5})
                assert answer.status_code == 200 and answer.json()["index_version"] == "v1"
    finally:
        _recctl("down", "--state-dir", str(state), check=False)


def test_plan_then_a_paused_apply_previews_the_change_and_unpausing_rolls_it(
    cluster: tuple[Path, Path, str],
) -> None:
    """`recctl plan` against the running state folder, then the same change applied paused: the
    supervisor writes status.planPreview with the same summary and builds nothing; unpaused, it rolls."""
    manifest, state, _ = cluster
    changed = yaml.safe_load(manifest.read_text())
    changed["spec"]["index"].update(version="v2", source=str(manifest.parent / "emb-v2"))
    new = manifest.parent / "v2.yaml"
    new.write_text(yaml.safe_dump(changed))
    document = json.loads(_recctl("plan", "-f", str(new), "--state-dir", str(state), "--json").stdout)
    assert document["kind"] == "rebuild"
    assert document["items"] == ITEMS and document["builds"][0]["items_per_shard"] == ITEMS // 2
    assert document["duration_seconds"] > 0
    layouts_before = sorted(p.name for p in (state / "layouts").iterdir())
    changed["spec"]["paused"] = True
    new.write_text(yaml.safe_dump(changed))
    _recctl("apply", "-f", str(new), "--state-dir", str(state))
    _wait_for(lambda: bool(_status(state).get("planPreview")), "status.planPreview while paused")
    preview = _status(state)["planPreview"]
    assert preview["kind"] == "rebuild" and preview["summary"] == document["summary"]
    assert "Note: spec.paused is true" in preview["text"]
    assert _status(state)["activeVersion"] == "v1"
    assert sorted(p.name for p in (state / "layouts").iterdir()) == layouts_before, "no build while paused"
    changed["spec"]["paused"] = False
    new.write_text(yaml.safe_dump(changed))
    _recctl("apply", "-f", str(new), "--state-dir", str(state), "--wait", "90")
    _wait_for(lambda: _status(state)["activeVersion"] == "v2", "v2 serving after unpausing")
    assert not _status(state).get("planPreview")
