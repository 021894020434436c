"""Serving from SeaweedFS end to end.

1. A layout built from an s3:// source into an s3:// store; each shard server gets its own folder
   holding only its partition (`recctl index fetch --shard N`); the router, whose topology names
   the layout by its s3:// URL, fetches only the user table itself (as `--router` does); real
   processes on 127.0.0.1 answer /v1/recommend from every shard.
2. `recctl up` with `spec.index.source: s3://...` (connection from `spec.index.objectStore`,
   credentials from AWS_* in the environment it passes to the build) becomes ready and serves.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from shardrec.serving.index.users import load_user_table
from shardrec.serving.storage.layouts import (
    fetch_router,
    fetch_shard,
    forget_artifact_users,
    load_artifact_users,
)
from shardrec.serving.storage.stores import S3Settings, S3Store
from shardrec.serving.storage.urls import S3Location
from shardrec.tools.local.ports import free_port
from tests.serving.test_failover_integration import (
    Cluster,
    cluster,  # noqa: F401 - fixture
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ITEMS, USERS, DIM, SHARDS = 2000, 30, 16, 2


def _write_embeddings(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "items.npy", rng.normal(size=(ITEMS, DIM)).astype(np.float32))
    (folder / "item_ids.txt").write_text("".join(f"item-{i}\n" for i in range(ITEMS)))
    np.save(folder / "users.npy", rng.normal(size=(USERS, DIM)).astype(np.float32))
    (folder / "user_ids.txt").write_text("".join(f"user-{i}\n" for i in range(USERS)))
    (folder / "seen.tsv").write_text("user-1\titem-3\n")
    return folder


def _recctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "shardrec.tools.cli.main", *args],
        capture_output=True, text=True, timeout=180, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"recctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture
def s3_source(seaweed: Any, tmp_path: Path) -> tuple[str, str, dict[str, str]]:
    """(source URL, bucket, environment with the store's settings and credentials)."""
    bucket = f"serve-{secrets.token_hex(4)}"
    seaweed.create_bucket(bucket)
    env = {
        **os.environ,
        **seaweed.client_env(),
        "SHARDREC_S3_ENDPOINT": seaweed.endpoint,
        "SHARDREC_S3_PATH_STYLE": "1",
    }
    folder = _write_embeddings(tmp_path / "emb", seed=7)
    saved = {name: os.environ.get(name) for name in seaweed.client_env()}
    os.environ.update(seaweed.client_env())
    try:
        store = S3Store(S3Location(bucket, "emb/v1"), S3Settings(endpoint=seaweed.endpoint, path_style=True))
        for path in folder.iterdir():
            store.upload(path.name, path)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return f"s3://{bucket}/emb/v1", bucket, env


def test_shards_and_router_serve_from_their_fetched_parts(
    s3_source: tuple[str, str, dict[str, str]],
    cluster: Cluster,  # noqa: F811 - fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, bucket, env = s3_source
    store = f"s3://{bucket}/layouts"
    build = ["index", "build", "--embeddings", source, "--out", f"{store}/lay-s3", "--version", "v1"]
    _recctl(
        *build, "--shards", str(SHARDS), "--metric", "ip", "--dimension", str(DIM), "--no-progress", env=env
    )
    shards = []
    for shard in range(SHARDS):
        dest = tmp_path / f"pod-shard-{shard}" / "lay-s3"
        _recctl("index", "fetch", "--store", store, "--layout", "lay-s3", "--shard", str(shard),
                "--dest", str(dest), env=env)  # fmt: skip
        assert sorted(p.name for p in dest.iterdir()) == ["layout.json", f"shard-{shard:04d}"]
        shards.append(cluster.shard(dest, shard, 0))
    router_dir = tmp_path / "pod-router" / "lay-s3"
    _recctl(
        "index",
        "fetch",
        "--store",
        store,
        "--layout",
        "lay-s3",
        "--router",
        "--dest",
        str(router_dir),
        env=env,
    )
    assert not list(router_dir.glob("shard-*"))
    manifest = json.loads((router_dir / "layout.json").read_text())
    topology = {
        "revision": 1,
        "active": {
            "layout": manifest["layout"],
            "version": "v1",
            "shards": SHARDS,
            "dimension": DIM,
            "metric": "ip",
            # The router fetches the user table itself (staged layouts come after its start).
            "artifact_dir": f"{store}/lay-s3",
            "endpoints": [
                {"shard": n, "replicas": [{"name": p.name, "url": p.url}]} for n, p in enumerate(shards)
            ],
        },
    }
    topology_path = tmp_path / "topology.json"
    topology_path.write_text(json.dumps(topology))
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "SHARDREC_S3_ENDPOINT",
        "SHARDREC_S3_PATH_STYLE",
    ):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("SHARDREC_ROUTER_CACHE_DIR", str(tmp_path / "router-cache"))
    router = cluster.router("router", topology_path, {"consistency": "strict", "timeoutMs": 2000})
    wait_ready(router.url, version="v1")
    cached = tmp_path / "router-cache" / "lay-s3"
    assert sorted(p.name for p in cached.iterdir()) == ["layout.json", "users"]
    for user in ("user-1", "user-2", "user-29"):
        body = httpx.post(f"{router.url}/v1/recommend", json={"user_id": user, "k": 10}, timeout=5).json()
        assert body["shards"] == {"answered": SHARDS, "total": SHARDS}
        assert len(body["items"]) == 10 and not body["partial"]
        if user == "user-1":
            assert "item-3" not in [item["item_id"] for item in body["items"]]


def test_recctl_up_builds_from_an_s3_source(
    s3_source: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    source, _, env = s3_source
    endpoint = env.pop("SHARDREC_S3_ENDPOINT")
    env.pop("SHARDREC_S3_PATH_STYLE")
    manifest = {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {"name": "s3test"},
        "spec": {
            "shards": SHARDS,
            "replicasPerShard": 1,
            "index": {
                "version": "v1",
                "source": source,
                "dimension": DIM,
                "metric": "cosine",
                # The connection comes from the spec; credentials from the environment (AWS_*).
                "objectStore": {"endpoint": endpoint, "pathStyle": True},
            },
        },
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(manifest))
    state, port = tmp_path / "state", free_port()
    try:
        up = ["up", "-f", str(path), "--state-dir", str(state), "--port", str(port), "--detach"]
        _recctl(*up, "--wait", "120", env=env)
        body = httpx.post(
            f"http://127.0.0.1:{port}/v1/recommend", json={"user_id": "user-2", "k": 5}, timeout=5
        )
        assert body.status_code == 200, body.text
        assert body.json()["index_version"] == "v1" and len(body.json()["items"]) == 5
    finally:
        subprocess.run(
            [sys.executable, "-m", "shardrec.tools.cli.main", "down", "--state-dir", str(state)],
            capture_output=True, timeout=60, env=env, check=False,
        )  # fmt: skip


def test_a_router_cache_copy_is_fetched_verified_then_forgotten(
    s3_source: tuple[str, str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_artifact_users copies an s3:// layout's user table into the cache; forget_artifact_users
    removes that copy (what the router does once the layout neither serves nor is staged); a later
    load fetches it again."""
    source, bucket, env = s3_source
    store = f"s3://{bucket}/layouts"
    _recctl("index", "build", "--embeddings", source, "--out", f"{store}/lay-c", "--version", "v1",
            "--shards", "1", "--metric", "ip", "--dimension", str(DIM), "--no-progress", env=env)  # fmt: skip
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "SHARDREC_S3_ENDPOINT",
        "SHARDREC_S3_PATH_STYLE",
    ):
        monkeypatch.setenv(name, env[name])
    cache = tmp_path / "router-cache"
    table = load_artifact_users(f"{store}/lay-c", cache_root=cache)
    assert len(table) == USERS and sorted(p.name for p in (cache / "lay-c").iterdir()) == [
        "layout.json",
        "users",
    ]
    assert forget_artifact_users(f"{store}/lay-c", cache_root=cache) is True
    assert not (cache / "lay-c").exists()
    assert len(load_artifact_users(f"{store}/lay-c", cache_root=cache)) == USERS
    assert (cache / "lay-c" / "layout.json").is_file()


def _part_flags(source: str, out: str) -> list[str]:
    return ["index", "build", "--embeddings", source, "--out", out, "--version", "v1",
            "--shards", str(SHARDS), "--metric", "ip", "--dimension", str(DIM), "--workers", "1",
            "--no-progress", "--publish-when-complete", "--only-shard"]  # fmt: skip


def _fetched_counts(store: S3Store, layout: str, tmp_path: Path) -> list[int]:
    """Every shard and the router part fetched (each object's sha256 checked); items per shard."""
    counts = []
    for shard in range(SHARDS):
        manifest = fetch_shard(store, layout, shard, tmp_path / f"{layout}-shard-{shard}")
        counts.append(manifest.shard_entries[shard].count)
    assert len(load_user_table(_router_copy(store, layout, tmp_path))) == USERS
    return counts


def _router_copy(store: S3Store, layout: str, tmp_path: Path) -> Path:
    fetch_router(store, layout, tmp_path / f"{layout}-router")
    return tmp_path / f"{layout}-router"


def test_a_build_per_shard_into_s3_publishes_when_the_last_part_is_done(
    s3_source: tuple[str, str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each pod of the operator's Indexed Job runs, as processes against SeaweedFS: the first part
    to finish leaves layout.json unwritten, the last one publishes it, a retried part reuses the
    layout; then both parts at once (two pods finishing together): both exit 0 and the layout verifies."""
    source, bucket, env = s3_source
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])
    store = S3Store(
        S3Location(bucket, "parts"), S3Settings(endpoint=env["SHARDREC_S3_ENDPOINT"], path_style=True)
    )
    flags = _part_flags(source, f"s3://{bucket}/parts/lay-p")
    first = _recctl(*flags, "1", env=env)
    assert "not built yet: the last part to finish publishes" in first.stdout, first.stdout
    keys = store.list_keys("lay-p/")
    assert "lay-p/layout.json" not in keys and "lay-p/shard-0001/manifest.json" in keys, keys
    last = _recctl(*flags, "0", env=env)
    assert "published layout lay-p" in last.stdout, last.stdout
    assert "lay-p/layout.json" in store.list_keys("lay-p/")
    assert "reused existing layout lay-p" in _recctl(*flags, "1", env=env).stdout
    assert sum(_fetched_counts(store, "lay-p", tmp_path)) == ITEMS

    together = _part_flags(source, f"s3://{bucket}/parts/lay-q")
    argv = [sys.executable, "-m", "shardrec.tools.cli.main"]
    procs = [
        subprocess.Popen(
            [*argv, *together, str(shard)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for shard in range(SHARDS)
    ]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * SHARDS, outputs
    assert any("published layout lay-q" in out for out in outputs), outputs
    assert sum(_fetched_counts(store, "lay-q", tmp_path)) == ITEMS
    names = {key.removeprefix("lay-q/") for key in store.list_keys("lay-q/")}
    assert names == {key.removeprefix("lay-p/") for key in store.list_keys("lay-p/")}, names
