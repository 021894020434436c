"""Layouts in a real S3 object store (SeaweedFS on 127.0.0.1), through `recctl index ...` and the
storage module: build from an s3:// source into an s3:// store, fetch one part, reuse, delete, list;
and each fault: missing object, checksum mismatch, unreachable store, wrong or expired credentials,
throttling (503 SlowDown, injected by a proxy). Credentials never appear in output or logs."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from pathlib import Path
from typing import Any

import pytest

from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.layout import read_layout_manifest, read_shard_manifest
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.index.users import load_user_table
from shardrec.serving.storage.errors import (
    AccessDeniedError,
    ChecksumMismatchError,
    ObjectMissingError,
    StoreBusyError,
    StoreUnreachableError,
)
from shardrec.serving.storage.layouts import fetch_shard, list_layouts
from shardrec.serving.storage.retry import RetryPolicy
from shardrec.serving.storage.stores import S3Settings, S3Store
from shardrec.serving.storage.urls import S3Location
from shardrec.tools.cli.main import main as recctl

pytestmark = pytest.mark.integration

DIM = 8
FAST = RetryPolicy(attempts=4, base_seconds=0.05, cap_seconds=0.2)


@pytest.fixture(scope="module")
def bucket(seaweed: Any) -> str:
    name = f"idx-{secrets.token_hex(4)}"
    seaweed.create_bucket(name)
    return name


@pytest.fixture(autouse=True)
def credentials(seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in seaweed.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def s3_flags(endpoint: str) -> list[str]:
    return ["--s3-endpoint", endpoint, "--s3-path-style"]


def store_at(endpoint: str, bucket: str, prefix: str, policy: RetryPolicy = FAST) -> S3Store:
    return S3Store(S3Location(bucket, prefix), S3Settings(endpoint=endpoint, path_style=True), policy=policy)


@pytest.fixture(scope="module")
def source_url(seaweed: Any, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embeddings directory uploaded to s3://<bucket>/embeddings/ml."""
    folder = write_embeddings_dir(
        tmp_path_factory.mktemp("emb"),
        clustered(400, DIM, clusters=6, seed=3),
        [f"item-{i}" for i in range(400)],
        users=clustered(5, DIM, clusters=1, seed=4),
        user_ids=[f"user-{i}" for i in range(5)],
        seen=[("user-1", "item-2")],
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    mp.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    try:
        store = store_at(seaweed.endpoint, bucket, "embeddings/ml")
        for path in sorted(folder.iterdir()):
            store.upload(path.name, path)
    finally:
        mp.undo()
    return f"s3://{bucket}/embeddings/ml"


def build_argv(source: str, out: str, endpoint: str, version: str = "v1") -> list[str]:
    return [
        "index", "build", "--embeddings", source, "--out", out, "--version", version,
        "--shards", "3", "--dimension", str(DIM), "--no-progress", *s3_flags(endpoint),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def published(seaweed: Any, bucket: str, source_url: str) -> str:
    """Layout `lay-a` built from the s3:// source into s3://<bucket>/layouts; returns the store URL."""
    mp = pytest.MonkeyPatch()
    for name, value in seaweed.client_env().items():
        mp.setenv(name, value)
    try:
        assert recctl(build_argv(source_url, f"s3://{bucket}/layouts/lay-a", seaweed.endpoint)) == 0
    finally:
        mp.undo()
    return f"s3://{bucket}/layouts"


def test_build_publishes_every_file_and_a_second_build_reuses_it(
    seaweed: Any, bucket: str, source_url: str, published: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_at(seaweed.endpoint, bucket, "layouts")
    keys = store.list_keys("lay-a/")
    assert "lay-a/layout.json" in keys
    assert {"lay-a/shard-0002/index.bin", "lay-a/shard-0002/ids.txt", "lay-a/users/users.npy"} <= set(keys)
    capsys.readouterr()
    assert recctl(build_argv(source_url, f"{published}/lay-a", seaweed.endpoint)) == 0
    assert "reused existing layout lay-a" in capsys.readouterr().out
    # Another version under the same id is refused: layouts are immutable.
    assert recctl(build_argv(source_url, f"{published}/lay-a", seaweed.endpoint, version="v2")) == 1
    assert "a different layout is already stored here (version 'v1' (wanted 'v2'))" in capsys.readouterr().err


def test_fetch_one_shard_and_the_router_part(
    seaweed: Any, published: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch = ["index", "fetch", "--store", published, "--layout", "lay-a", *s3_flags(seaweed.endpoint)]
    assert recctl([*fetch, "--shard", "2", "--dest", str(tmp_path / "s2")]) == 0
    files = sorted(
        p.relative_to(tmp_path / "s2").as_posix() for p in (tmp_path / "s2").rglob("*") if p.is_file()
    )
    assert files == ["layout.json", "shard-0002/ids.txt", "shard-0002/index.bin", "shard-0002/manifest.json"]
    layout = read_layout_manifest(tmp_path / "s2", verify_shards=False)
    read_shard_manifest(tmp_path / "s2", layout, 2, verify_files=True)
    assert recctl([*fetch, "--router", "--dest", str(tmp_path / "r")]) == 0
    assert len(load_user_table(tmp_path / "r")) == 5
    assert "fetched the router's part of layout lay-a" in capsys.readouterr().out


def test_list_and_delete(
    seaweed: Any, bucket: str, source_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store_url = f"s3://{bucket}/scratch"
    assert recctl(build_argv(source_url, f"{store_url}/lay-d", seaweed.endpoint)) == 0
    store_at(seaweed.endpoint, bucket, "scratch").write_bytes("half/shard-0000/index.bin", b"x")
    capsys.readouterr()
    assert recctl(["index", "list", "--store", store_url, "--json", *s3_flags(seaweed.endpoint)]) == 0
    listed = {entry["layout"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["lay-d"]["complete"] is True and listed["lay-d"]["created"]
    assert listed["half"]["complete"] is False
    assert (
        recctl(["index", "delete", "--store", store_url, "--layout", "lay-d", *s3_flags(seaweed.endpoint)])
        == 0
    )
    assert [layout.layout for layout in list_layouts(store_at(seaweed.endpoint, bucket, "scratch"))] == [
        "half"
    ]


# --- faults --------------------------------------------------------------------------------------------


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("recctl: error: ") and "\n" not in err, err
    return err


def test_missing_object(
    seaweed: Any, bucket: str, published: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_at(seaweed.endpoint, bucket, "layouts")
    for key in store.list_keys("lay-a/"):
        store.upload(key.replace("lay-a/", "lay-m/", 1), _download(store, key, tmp_path))
    store.delete(["lay-m/shard-0001/index.bin"])
    fetch = ["index", "fetch", "--store", published, "--layout", "lay-m", "--shard", "1"]
    assert recctl([*fetch, "--dest", str(tmp_path / "d"), *s3_flags(seaweed.endpoint)]) == 1
    err = _one_line_error(capsys)
    assert f"s3://{bucket}/layouts/lay-m/shard-0001/index.bin: object missing" in err
    assert not (tmp_path / "d" / "layout.json").exists()
    assert recctl(["index", "fetch", "--store", published, "--layout", "nope", "--router", "--dest",
                   str(tmp_path / "e"), *s3_flags(seaweed.endpoint)]) == 1  # fmt: skip
    assert "nope/layout.json: object missing" in _one_line_error(capsys)


def _download(store: S3Store, key: str, tmp_path: Path) -> Path:
    target = tmp_path / "copy" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    store.download(key, target)
    return target


def test_checksum_mismatch_after_an_object_is_overwritten(
    seaweed: Any, bucket: str, published: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_at(seaweed.endpoint, bucket, "layouts")
    for key in store.list_keys("lay-a/"):
        store.upload(key.replace("lay-a/", "lay-c/", 1), _download(store, key, tmp_path))
    original = store.read_bytes("lay-c/shard-0000/ids.txt")
    store.write_bytes("lay-c/shard-0000/ids.txt", original.replace(b"item-", b"itex-", 1))  # same size
    with pytest.raises(ChecksumMismatchError, match=r"lay-c/shard-0000/ids\.txt: sha256 mismatch"):
        fetch_shard(store, "lay-c", 0, tmp_path / "d")
    assert not (tmp_path / "d" / "shard-0000" / "ids.txt").exists()
    fetch = ["index", "fetch", "--store", published, "--layout", "lay-c", "--shard", "0"]
    assert recctl([*fetch, "--dest", str(tmp_path / "d"), *s3_flags(seaweed.endpoint)]) == 1
    assert "sha256 mismatch" in _one_line_error(capsys)


def test_wrong_and_unknown_credentials_fail_at_once_and_are_never_shown(
    *,
    seaweed: Any,
    published: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_secret = "wrong-" + secrets.token_urlsafe(16)
    fetch = ["index", "fetch", "--store", published, "--layout", "lay-a", "--shard", "0",
             "--dest", str(tmp_path / "d"), *s3_flags(seaweed.endpoint)]  # fmt: skip
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    assert recctl(fetch) == 1
    err = _one_line_error(capsys)
    assert "access denied" in err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKUNKNOWN" + secrets.token_hex(6).upper())
    assert recctl(fetch) == 1
    err2 = _one_line_error(capsys)
    assert "access denied" in err2
    shown = err + err2 + caplog.text
    for secret in (wrong_secret, seaweed.secret_key):
        assert secret not in shown
    assert "; retry " not in caplog.text  # 403 is not retried


def test_unreachable_store_is_retried_then_reported_and_works_again_after_restart(
    seaweed: Any,
    published: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetch = ["index", "fetch", "--store", published, "--layout", "lay-a", "--shard", "1",
             *s3_flags(seaweed.endpoint)]  # fmt: skip
    seaweed.stop()
    try:
        with caplog.at_level(logging.WARNING):
            assert recctl([*fetch, "--dest", str(tmp_path / "down")]) == 1
        assert "store unreachable" in _one_line_error(capsys)
        retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
        assert len(retries) == 5, retries  # 6 attempts (the default policy)
        assert retries[0].startswith(f"{published}/lay-a/layout.json: store unreachable")
    finally:
        seaweed.restart()
    assert recctl([*fetch, "--dest", str(tmp_path / "up")]) == 0


def test_unreachable_store_raises_the_retryable_error() -> None:
    # A port held bound but not listening: connections are refused for as long as we hold it
    # (a merely "free" port could be taken by another process in between).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        store = store_at(f"http://127.0.0.1:{held.getsockname()[1]}", "b", "p")
        with pytest.raises(StoreUnreachableError, match=r"s3://b/p/x/layout\.json: store unreachable"):
            store.read_bytes("x/layout.json")


def test_throttling_is_retried_with_backoff(
    seaweed: Any, bucket: str, published: str, tmp_path: Path, faultproxy_module: Any
) -> None:
    with faultproxy_module.FaultProxy.start(seaweed.endpoint) as proxy:
        store = store_at(proxy.endpoint, bucket, "layouts")
        proxy.fail_next(2, 503, "SlowDown")
        fetch_shard(store, "lay-a", 0, tmp_path / "ok")  # two 503s, then it goes through
        assert (tmp_path / "ok" / "layout.json").is_file()
        before = proxy.requests
        proxy.fail_next(10, 503, "SlowDown")
        with pytest.raises(StoreBusyError, match="SlowDown"):
            fetch_shard(store, "lay-a", 0, tmp_path / "busy")
        assert proxy.requests - before == FAST.attempts
        proxy.fail_next(10, 500, "InternalError")
        with pytest.raises(StoreBusyError):
            store.read_bytes("lay-a/layout.json")


def test_expired_credentials_fail_at_once(
    seaweed: Any, bucket: str, published: str, tmp_path: Path, faultproxy_module: Any
) -> None:
    with faultproxy_module.FaultProxy.start(seaweed.endpoint) as proxy:
        store = store_at(proxy.endpoint, bucket, "layouts")
        proxy.fail_next(5, 400, "ExpiredToken")
        with pytest.raises(AccessDeniedError, match=r"ExpiredToken|expired"):
            store.read_bytes("lay-a/layout.json")
        assert proxy.requests == 1


def test_missing_object_error_class(seaweed: Any, bucket: str) -> None:
    with pytest.raises(ObjectMissingError):
        store_at(seaweed.endpoint, bucket, "layouts").read_bytes("no/such/key")


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", ""])
def test_the_harness_never_binds_every_interface(seaweed_module: Any, tmp_path: Path, ip: str) -> None:
    """e2e/node binds SeaweedFS to the pod bridge's gateway; every interface is refused before a start."""
    server = seaweed_module.SeaweedS3.start(Path("/nonexistent/weed"), tmp_path, ip=ip)
    with pytest.raises(ValueError, match="never every interface"):
        server.__enter__()
    assert not (tmp_path / "weed.log").exists()


BUCKETS_IN_A_ROW = 12
"""SeaweedFS grows 7 volumes for each bucket's first write; with `-volume.max=0` it allowed only
free disk / volume size of them in all, so on a machine with 45 GB free the session's store ran out
after a few buckets and every later first write answered 500 (CI on 2026-12-06)."""


def test_the_test_store_takes_first_writes_in_many_buckets_whatever_the_free_disk(
    seaweed: Any, tmp_path: Path
) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"x" * 1024)
    for n in range(BUCKETS_IN_A_ROW):
        name = f"many-{n}-{secrets.token_hex(3)}"
        seaweed.create_bucket(name)
        store_at(seaweed.endpoint, name, "p").upload("object.bin", source)
