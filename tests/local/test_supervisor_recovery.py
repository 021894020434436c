"""The local runtime after `kill -9` of its supervisor: the cluster keeps serving, `status` says
so, and a new `recctl up` adopts the children (no duplicate, no orphan) and supervises them again.
Also API keys from a file and router settings that an `apply` changes on a running cluster."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shardrec.tools.local.ports import free_port
from shardrec.tools.local.processes import processes_of_state_dir
from tests.local.test_local_cluster import _manifest, _recctl, _wait_for, _write_embeddings

pytestmark = pytest.mark.integration


def _runtime(state: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((state / "runtime.json").read_text())
    return result


def _pids(state: Path) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in _runtime(state)["processes"]}


def _running(state: Path) -> list[int]:
    return sorted(identity.pid for identity, _ in processes_of_state_dir(state.resolve()))


def test_a_new_supervisor_adopts_the_children_of_a_killed_one(tmp_path: Path) -> None:
    _write_embeddings(tmp_path / "emb", seed=11)
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(_manifest(tmp_path / "emb", "v1", 2)))
    state, port = tmp_path / "state", free_port()
    url = f"http://127.0.0.1:{port}"
    up = (
        "up",
        "-f",
        str(manifest),
        "--state-dir",
        str(state),
        "--port",
        str(port),
        "--detach",
        "--wait",
        "90",
    )
    _recctl(*up)
    try:
        before = _pids(state)
        assert len(before) == 5 and _running(state) == sorted(before.values())
        supervisor = int((state / "supervisor.lock").read_text())
        os.kill(supervisor, signal.SIGKILL)
        _wait_for(lambda: "Unsupervised" in _recctl("status", "--state-dir", str(state)).stdout, "status")
        assert (
            httpx.post(f"{url}/v1/recommend", json={"user_id": "user-1", "k": 5}, timeout=5).status_code
            == 200
        )
        victim = "shard-" + next(n for n in before if n.startswith("shard-"))[6:]
        os.kill(before[victim], signal.SIGKILL)  # dies while no one watches

        _recctl(*up)  # the port is the old router's: allowed, it is adopted
        after = _pids(state)
        assert set(after) == set(before)
        kept = {name for name in before if name != victim}
        assert {n: after[n] for n in kept} == {n: before[n] for n in kept}, "not adopted"
        assert after[victim] != before[victim], "the replica that died unwatched was not started again"
        assert _running(state) == sorted(after.values()), "a duplicate or an orphan process"

        adopted = next(n for n in kept if n.startswith("shard-"))
        os.kill(after[adopted], signal.SIGKILL)  # an adopted child dies: the new supervisor restarts it
        _wait_for(
            lambda: any(
                p["name"] == adopted and p["pid"] != after[adopted] and p["ready"] and p["restarts"] >= 1
                for p in _runtime(state)["processes"]
            ),
            "the adopted replica to be restarted",
        )
        response = httpx.post(f"{url}/v1/recommend", json={"user_id": "user-2", "k": 5}, timeout=5)
        assert response.status_code == 200 and not response.json()["partial"]
        assert len(_running(state)) == 5
    finally:
        _recctl("down", "--state-dir", str(state), check=False)
    assert _running(state) == [], "down left processes behind"


def test_api_keys_from_a_file_and_router_settings_applied_to_a_running_cluster(tmp_path: Path) -> None:
    _write_embeddings(tmp_path / "emb", seed=12)
    (tmp_path / "keys.txt").write_text("alice:k-alice\n")
    body = _manifest(tmp_path / "emb", "v1", 1)
    body["spec"]["auth"] = {"apiKeysFile": "keys.txt"}  # relative to the YAML's folder
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(body))
    state, port = tmp_path / "state", free_port()
    url = f"http://127.0.0.1:{port}"
    _recctl(
        "up", "-f", str(manifest), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90"
    )
    batch = {"queries": [{"user_id": "user-1", "k": 3}] * 3}
    alice = {"x-api-key": "k-alice"}
    try:
        assert httpx.post(f"{url}/v1/recommend/batch", json=batch, timeout=5).status_code == 401
        assert (
            httpx.post(f"{url}/v1/recommend/batch", json=batch, headers=alice, timeout=5).status_code == 200
        )
        router = _pids(state)["router"]
        body["spec"]["router"]["maxBatchSize"] = 2
        manifest.write_text(yaml.safe_dump(body))
        _recctl("apply", "-f", str(manifest), "--state-dir", str(state), "--wait", "90")

        def refused() -> bool:
            try:
                response = httpx.post(f"{url}/v1/recommend/batch", json=batch, headers=alice, timeout=5)
            except httpx.HTTPError:
                return False
            return response.status_code == 413

        _wait_for(refused, "the router to apply maxBatchSize 2", timeout_s=30)
        assert _pids(state)["router"] != router, "applied by a restart the runtime performs"
        (tmp_path / "keys.txt").write_text("alice:k-alice-2\n")  # rotation: a new file content
        _wait_for(
            lambda: _accepts(url, {"x-api-key": "k-alice-2"}), "the rotated key to be accepted", timeout_s=30
        )
        assert (
            httpx.post(
                f"{url}/v1/recommend", json={"user_id": "user-1"}, headers=alice, timeout=5
            ).status_code
            == 403
        ), "the key the rotation removed still works"
    finally:
        _recctl("down", "--state-dir", str(state), check=False)


def _accepts(url: str, headers: dict[str, str]) -> bool:
    try:
        response = httpx.post(f"{url}/v1/recommend", json={"user_id": "user-1"}, headers=headers, timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def test_up_refuses_a_secret_reference_in_one_line(tmp_path: Path) -> None:
    body = _manifest(tmp_path / "emb", "v1", 1)
    body["spec"]["auth"] = {"apiKeysSecretRef": {"name": "keys"}}
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(body))
    result = _recctl("up", "-f", str(manifest), "--state-dir", str(tmp_path / "s"), check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "spec.auth.apiKeysFile" in result.stderr
