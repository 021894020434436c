"""Canary rollouts on the local runtime, driven by the same planner as the operator: a v2 whose
item ids are shuffled is rolled back by its analysis with no failed request, and a good v2 (the
same model, slightly perturbed) goes through shadow and two traffic steps and is promoted. Under
a steady stream of user queries, no user ever flips back and forth between versions: a user moves
at most once (v1 -> v2 when its bucket enters the canary, or v2 -> v1 at the rollback).
"""

from __future__ import annotations

import json
import shutil
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
import yaml

from shardrec.tools.local.ports import free_port

pytestmark = pytest.mark.integration

ITEMS, USERS, DIM = 2000, 60, 16
DEADLINE_S = 120


def _recctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardrec.tools.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=check,
    )


def _write_v1(folder: Path) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    np.save(folder / "items.npy", rng.normal(size=(ITEMS, DIM)).astype(np.float32))
    (folder / "item_ids.txt").write_text("".join(f"item-{i}\n" for i in range(ITEMS)))
    np.save(folder / "users.npy", rng.normal(size=(USERS, DIM)).astype(np.float32))
    (folder / "user_ids.txt").write_text("".join(f"user-{i}\n" for i in range(USERS)))


def _perturbed(v1: Path, folder: Path) -> None:
    """A good v2: the same model with small noise (answers mostly the same items)."""
    shutil.copytree(v1, folder)
    items = np.load(folder / "items.npy")
    noise = np.random.default_rng(2).normal(scale=0.02, size=items.shape).astype(np.float32)
    np.save(folder / "items.npy", items + noise)


def _shuffled(v1: Path, folder: Path) -> None:
    """A broken v2: the same vectors, but every item id names another item (a wrong id mapping)."""
    shutil.copytree(v1, folder)
    ids = (folder / "item_ids.txt").read_text().split()
    order = np.random.default_rng(3).permutation(len(ids))
    (folder / "item_ids.txt").write_text("".join(f"{ids[i]}\n" for i in order))


def _manifest(source: Path, version: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {"name": "canary"},
        "spec": {
            "shards": 1,
            "replicasPerShard": 1,
            "index": {"version": version, "source": str(source), "dimension": DIM, "metric": "cosine"},
            "router": {"consistency": "strict", "timeoutMs": 2000},
            "rollout": {
                "strategy": "Canary",
                "rollbackWindowSeconds": 2,
                "drainSeconds": 1,
                "canary": {
                    "steps": steps,
                    # Every candidate answer in a weight step is compared; the shared, loaded test
                    # machine gets a wide latency slack (this test is about answers, not speed).
                    "analysis": {"compareSampleRate": 1.0, "p99SlackMilliseconds": 200},
                },
            },
        },
    }


@dataclass
class Traffic:
    """A bounded stream of user queries, recording every user's versions in order."""

    url: str
    failures: list[str] = field(default_factory=list)
    by_user: dict[str, list[str]] = field(default_factory=dict)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set() and self.sent < 30000:
                user = f"user-{self.sent % USERS}"
                self.sent += 1
                try:
                    response = client.post("/v1/recommend", json={"user_id": user, "k": 10})
                except httpx.HTTPError as exc:
                    self.failures.append(f"transport: {exc!r}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                versions = self.by_user.setdefault(user, [])
                version = response.json()["index_version"]
                if not versions or versions[-1] != version:
                    versions.append(version)
                time.sleep(0.003)

    def stop(self) -> None:
        self._stop.set()

    def count(self, version: str) -> int:
        return sum(version in versions for versions in self.by_user.values())


def _status(state: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((state / "status.json").read_text())
    return result


def _wait_for(predicate: Any, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _shard_processes(state: Path) -> list[str]:
    runtime = json.loads((state / "runtime.json").read_text())
    return [p["name"] for p in runtime["processes"] if p["name"].startswith("shard-")]


def _canary_phase(state: Path) -> str:
    canary = _status(state).get("canary") or {}
    return str(canary.get("phase", ""))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    _write_v1(tmp_path / "emb-v1")
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(_manifest(tmp_path / "emb-v1", "v1", [{"weight": 10}])))
    state = tmp_path / "state"
    port = free_port()
    _recctl(
        "up", "-f", str(manifest), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90"
    )
    try:
        yield manifest, state, f"http://127.0.0.1:{port}"
    finally:
        _recctl("down", "--state-dir", str(state), check=False)


def _roll(manifest: Path, state: Path, source: Path, steps: list[dict[str, Any]]) -> None:
    manifest.write_text(yaml.safe_dump(_manifest(source, "v2", steps)))
    _recctl("apply", "-f", str(manifest), "--state-dir", str(state))


def _every_user_asked_again(traffic: Traffic) -> None:
    """Two more rounds of every user (the stream asks them in turn) after the change: each user's
    last answer is then from after it, however slow this machine runs the stream (a fixed sleep
    left users unasked on a loaded machine)."""
    after = traffic.sent
    _wait_for(lambda: traffic.sent >= after + 2 * USERS, "every user to be asked twice more", timeout_s=120)


def _under_traffic(url: str) -> tuple[Traffic, threading.Thread]:
    traffic = Traffic(url)
    worker = threading.Thread(target=traffic.run, daemon=True)
    worker.start()
    return traffic, worker


def test_shuffled_item_ids_are_rolled_back_with_no_failed_request(cluster: tuple[Path, Path, str]) -> None:
    manifest, state, url = cluster
    _shuffled(manifest.parent / "emb-v1", manifest.parent / "emb-v2")
    traffic, worker = _under_traffic(url)
    try:
        # A weight step first: some users are answered by the broken v2 until its analysis fails.
        _roll(
            manifest,
            state,
            manifest.parent / "emb-v2",
            [{"weight": 30, "minDurationSeconds": 2, "minRequests": 30}],
        )
        _wait_for(lambda: _canary_phase(state) == "RolledBack", "the canary to be rolled back")
        _wait_for(lambda: len(_shard_processes(state)) == 1, "the rolled-back layout's shard to be stopped")
        _every_user_asked_again(traffic)  # answers after the rollback
    finally:
        traffic.stop()
        worker.join(timeout=10)
    status = _status(state)
    canary = status["canary"]
    analysis = canary["analysis"]
    print(f"rolled back: {canary['message']}; analysis {analysis}; sent {traffic.sent}")
    assert status["activeVersion"] == "v1" and status["phase"] == "Failed"
    assert analysis["overlapAt10"] < 0.3 and analysis["requests"] >= 30
    condition = next(c for c in status["conditions"] if c["type"] == "CanaryRolledBack")
    assert condition["status"] == "True" and "overlap@10" in condition["message"]
    events = (state / "events.log").read_text()
    assert "Warning CanaryRolledBack" in events
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.count("v2") > 0, "no user was answered by the candidate"
    # Before the canary every user is on v1; a user in the canary's bucket is on v2 for the whole
    # step and back on v1 after the rollback: never v2 -> v1 -> v2 (both versions within the step).
    for user, versions in traffic.by_user.items():
        assert versions in (["v1"], ["v1", "v2", "v1"]), (user, versions)


def test_a_good_v2_goes_through_shadow_and_traffic_steps_and_is_promoted(
    cluster: tuple[Path, Path, str],
) -> None:
    manifest, state, url = cluster
    _perturbed(manifest.parent / "emb-v1", manifest.parent / "emb-v2")
    steps = [
        {"shadow": {"sampleRate": 1.0}, "minDurationSeconds": 1, "minRequests": 30},
        {"weight": 30, "minDurationSeconds": 2, "minRequests": 20},
        {"weight": 60, "minDurationSeconds": 2, "minRequests": 20},
    ]
    traffic, worker = _under_traffic(url)
    try:
        _roll(manifest, state, manifest.parent / "emb-v2", steps)
        _wait_for(lambda: _status(state)["activeVersion"] == "v2", "v2 to be promoted", timeout_s=120)
        _every_user_asked_again(traffic)
    finally:
        traffic.stop()
        worker.join(timeout=10)
    status = _status(state)
    canary = status["canary"]
    print(f"promoted: {canary['message']}; analysis {canary['analysis']}; sent {traffic.sent}")
    assert canary["phase"] == "Promoted" and canary["step"] == 2
    assert canary["analysis"]["overlapAt10"] >= 0.3
    events = (state / "events.log").read_text()
    assert events.count("CanaryStepPassed") == 2 and "CanaryPromoted" in events
    assert traffic.failures == [], traffic.failures[:5]
    for user, versions in traffic.by_user.items():
        assert versions == ["v1", "v2"], (user, versions)
    assert all(versions[-1] == "v2" for versions in traffic.by_user.values())
