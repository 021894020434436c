"""Layouts in a store, on a local folder store (the S3 store is exercised on SeaweedFS in
tests/serving/test_storage_s3.py): publish order, fetch of one part, reuse, delete, list; and the
pure parts: URLs, retries, redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.layout import read_layout_manifest, read_shard_manifest
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.index.users import load_user_table
from shardrec.serving.storage.errors import (
    AccessDeniedError,
    ChecksumMismatchError,
    ObjectMissingError,
    StoreBusyError,
    StoreError,
    StoreUnreachableError,
    redact,
)
from shardrec.serving.storage.layouts import (
    delete_layout,
    fetch_router,
    fetch_shard,
    forget_artifact_users,
    list_layouts,
    publish_layout,
)
from shardrec.serving.storage.retry import RetryPolicy, with_retries
from shardrec.serving.storage.stores import FileStore
from shardrec.serving.storage.urls import LocationError, S3Location, parse_location
from shardrec.tools.cli.main import main as recctl

DIM = 8


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_embeddings_dir(
        tmp_path_factory.mktemp("emb"),
        clustered(300, DIM, clusters=5, seed=1),
        [f"item-{i}" for i in range(300)],
        users=clustered(3, DIM, clusters=1, seed=2),
        user_ids=["alice", "bob", "carol"],
        seen=[("alice", "item-3")],
    )


@pytest.fixture(scope="module")
def built(embeddings: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "lay-1"
    build_layout(embeddings, out, version="v1", shards=3, layout="lay-1", progress=False)
    return out


class RecordingStore(FileStore):
    """A FileStore that records the order of writes and deletes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[str] = []

    def upload(self, key: str, src: Path) -> None:
        self.events.append(f"put {key}")
        super().upload(key, src)

    def delete(self, keys: list[str]) -> None:
        self.events.extend(f"delete {key}" for key in keys)
        super().delete(keys)


def test_publish_uploads_every_file_and_layout_json_last(built: Path, tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "store")
    publish_layout(built, store, "lay-1", log=lambda _: None)
    assert store.events[-1] == "put lay-1/layout.json"
    uploaded = sorted(event.removeprefix("put ") for event in store.events)
    local = sorted(f"lay-1/{p.relative_to(built).as_posix()}" for p in built.rglob("*") if p.is_file())
    assert uploaded == local
    # Shard 0's files precede shard 1's: a build per shard can publish independently.
    first_shard1 = next(i for i, e in enumerate(store.events) if "shard-0001" in e)
    assert all("shard-0000" not in e for e in store.events[first_shard1:])


def test_fetch_shard_copies_only_that_shard_and_it_loads(built: Path, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    publish_layout(built, store, "lay-1", log=lambda _: None)
    dest = tmp_path / "pod" / "lay-1"
    fetch_shard(store, "lay-1", 1, dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["layout.json", "shard-0001/ids.txt", "shard-0001/index.bin", "shard-0001/manifest.json"]
    layout = read_layout_manifest(dest, verify_shards=False)
    assert read_shard_manifest(dest, layout, 1, verify_files=True).count == layout.shard_entries[1].count


def test_fetch_router_copies_the_user_table(built: Path, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    publish_layout(built, store, "lay-1", log=lambda _: None)
    dest = tmp_path / "router" / "lay-1"
    fetch_router(store, "lay-1", dest)
    assert not list(dest.glob("shard-*"))
    assert len(load_user_table(dest)) == 3


def test_fetch_refuses_a_tampered_object_and_leaves_no_partial_file(built: Path, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    publish_layout(built, store, "lay-1", log=lambda _: None)
    (tmp_path / "store" / "lay-1" / "shard-0002" / "ids.txt").write_text("x\n")
    dest = tmp_path / "pod"
    with pytest.raises(ChecksumMismatchError, match=r"shard-0002/ids.txt: size .* differs"):
        fetch_shard(store, "lay-1", 2, dest)
    assert not (dest / "layout.json").exists()
    assert not (dest / "shard-0002" / "ids.txt").exists()
    assert not [p for p in dest.rglob(".*") if p.is_file()]


def test_fetch_of_a_missing_layout_or_shard(built: Path, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    with pytest.raises(ObjectMissingError, match=r"lay-1/layout\.json: file missing"):
        fetch_shard(store, "lay-1", 0, tmp_path / "pod")
    publish_layout(built, store, "lay-1", log=lambda _: None)
    with pytest.raises(StoreError, match=r"shard 7 does not exist: the layout has shards 0\.\.2"):
        fetch_shard(store, "lay-1", 7, tmp_path / "pod")


def test_delete_removes_layout_json_first_then_everything(built: Path, tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "store")
    publish_layout(built, store, "lay-1", log=lambda _: None)
    publish_layout(built, store, "lay-2", log=lambda _: None)
    store.events.clear()
    assert delete_layout(store, "lay-1") == 1 + 3 * 3 + 5  # layout.json, 3 shards, users (4 + popular list)
    assert store.events[0] == "delete lay-1/layout.json"
    assert not (tmp_path / "store" / "lay-1").exists()
    assert [layout.layout for layout in list_layouts(store)] == ["lay-2"]


def test_list_reports_complete_and_incomplete_layouts(built: Path, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    publish_layout(built, store, "lay-1", log=lambda _: None)
    store.write_bytes("half/shard-0000/index.bin", b"partial")
    listed = {layout.layout: layout for layout in list_layouts(store)}
    assert listed["lay-1"].complete and listed["lay-1"].version == "v1" and listed["lay-1"].created
    assert not listed["half"].complete and listed["half"].created is None


def test_cli_build_into_a_folder_store_then_fetch_list_delete(
    embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    build = ["index", "build", "--embeddings", str(embeddings), "--out", str(store / "lay-9")]
    build += ["--version", "v9", "--shards", "2", "--no-progress"]
    report = tmp_path / "report.json"
    assert recctl([*build, "--report-file", str(report)]) == 0
    assert "built layout lay-9" in capsys.readouterr().out
    assert json.loads(report.read_text())["layout"] == "lay-9", "a build reports the layout it left behind"
    report.unlink()
    assert recctl([*build, "--report-file", str(report)]) == 0
    assert "reused existing layout lay-9" in capsys.readouterr().out
    assert json.loads(report.read_text())["version"] == "v9", "so does a build that found it built"
    assert recctl([*build, "--report-file", str(tmp_path / "no" / "such" / "dir")]) == 1
    assert "--report-file" in capsys.readouterr().err
    fetch = [
        "index",
        "fetch",
        "--store",
        f"file://{store}",
        "--layout",
        "lay-9",
        "--dest",
        str(tmp_path / "d"),
    ]
    assert recctl([*fetch, "--shard", "1"]) == 0
    assert recctl(["index", "list", "--store", str(store), "--json"]) == 0
    capsys.readouterr()
    assert recctl(["index", "list", "--store", str(store), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["layout"] == "lay-9" and entry["complete"] is True
    assert recctl(["index", "delete", "--store", str(store), "--layout", "lay-9"]) == 0
    assert recctl([*fetch, "--router"]) == 1
    assert "lay-9/layout.json: file missing" in capsys.readouterr().err


# --- pure parts ----------------------------------------------------------------------------------------


def test_parse_location() -> None:
    assert parse_location("s3://bucket/a/b/") == S3Location("bucket", "a/b")
    assert parse_location("s3://bucket") == S3Location("bucket", "")
    assert parse_location("file:///x/y") == Path("/x/y")
    assert parse_location("/x/y") == Path("/x/y")
    assert S3Location("b", "store/lay").parent_and_name() == (S3Location("b", "store"), "lay")
    for bad in ("s3:///prefix", "gs://bucket/x", "s3://b/a/../c"):
        with pytest.raises(LocationError):
            parse_location(bad)


def test_retries_only_retryable_errors_with_capped_jittered_backoff() -> None:
    pauses: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise StoreBusyError("503 SlowDown")
        return "ok"

    policy = RetryPolicy(attempts=5, base_seconds=1.0, cap_seconds=3.0)
    assert with_retries(flaky, what="x", policy=policy, sleep=pauses.append, draw=lambda a, b: b) == "ok"
    assert pauses == [1.0, 2.0, 3.0]  # the upper bounds of full jitter: base * 2**n, capped

    for error in (ObjectMissingError("gone"), AccessDeniedError("403"), ChecksumMismatchError("bad")):
        count = {"n": 0}

        def fails(error: StoreError = error, count: dict[str, int] = count) -> None:
            count["n"] += 1
            raise error

        with pytest.raises(type(error)):
            with_retries(fails, what="x", policy=policy, sleep=pauses.append)
        assert count["n"] == 1

    attempts = {"n": 0}

    def down() -> None:
        attempts["n"] += 1
        raise StoreUnreachableError("connection refused")

    with pytest.raises(StoreUnreachableError):
        with_retries(down, what="x", policy=policy, sleep=lambda _: None)
    assert attempts["n"] == 5


def test_jitter_draws_below_the_cap() -> None:
    policy = RetryPolicy(attempts=10, base_seconds=0.5, cap_seconds=4.0)
    bounds: list[tuple[float, float]] = []
    for retry in range(6):
        policy.delay(retry, lambda a, b: bounds.append((a, b)) or a)
    assert bounds == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 4.0), (0.0, 4.0)]


def test_store_errors_never_carry_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/with+chars")
    error = AccessDeniedError("key AKIDEXAMPLE123 secret s3cr3t/with+chars\nsecond line")
    assert "AKIDEXAMPLE123" not in str(error) and "s3cr3t" not in str(error)
    assert "\n" not in str(error)
    assert redact("a AKIDEXAMPLE123 b") == "a *** b"


def test_publish_clears_an_unfinished_upload_and_never_overwrites_a_complete_one(
    built: Path, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    store.write_bytes("lay-1/shard-0007/index.bin", b"left by a build with more shards that died")
    publish_layout(built, store, "lay-1", log=lambda _: None)
    assert not (tmp_path / "store" / "lay-1" / "shard-0007").exists()
    with pytest.raises(StoreError, match="already holds a complete layout"):
        publish_layout(built, store, "lay-1", log=lambda _: None)


FORBIDDEN = (
    "Generic S3 error: Error performing GET http://127.0.0.1:1/b?list-type=2 in 2ms - Server returned "
    'non-2xx status code: 403 Forbidden: <?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
    "SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match"
)


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        (FORBIDDEN, AccessDeniedError,
         "s3://b/k: access denied (HTTP 403 Forbidden, SignatureDoesNotMatch); check"),
        ("... status code: 503 Service Unavailable: <Error><Code>SlowDown</Code>", StoreBusyError,
         "s3://b/k: store busy or failing (HTTP 503 Service Unavailable, SlowDown)"),
        ("... status code: 404 Not Found: <Error><Code>NoSuchBucket</Code>", ObjectMissingError,
         "s3://b/k: bucket missing (HTTP 404 Not Found, NoSuchBucket)"),
        ("Error performing GET http://127.0.0.1:1/b/k - HTTP error: error sending request",
         StoreUnreachableError, "s3://b/k: store unreachable (Error performing GET"),
        ("something else entirely\nsecond line", StoreError, "s3://b/k: something else entirely"),
        # Request ids, hosts and paths hold digits: a 503 whose text holds "404" or "403"
        # elsewhere is still a 503 (a SlowDown classified as "object missing" was seen in CI).
        ("GET http://127.0.0.1:40431/b/k/layout.json status code: 503 Service Unavailable: "
         "<Error><Code>SlowDown</Code><RequestId>4404-403</RequestId>", StoreBusyError,
         "s3://b/k: store busy or failing (HTTP 503 Service Unavailable, SlowDown)"),
        ("GET http://127.0.0.1:45503/b/k status code: 404 Not Found: <Error><Code>NoSuchKey</Code>",
         ObjectMissingError, "s3://b/k: object missing"),
        # obstore states how long a request took: a refused connection that took 403.2 µs (or
        # 404 ms, or 503 ns) is still unreachable (seen: "access denied" for a stopped store).
        *((f"Generic S3 error: Error performing GET http://127.0.0.1:59385/b/k/layout.json in {took} - "
           "HTTP error: error sending request", StoreUnreachableError, "s3://b/k: store unreachable")
          for took in ("403.504µs", "401.1ms", "404.9µs", "503ns", "500.2s")),
        # ... and again in the debug source obstore appends ("elapsed: 403.907µs"; CI, 2026-12-06).
        *((f"Generic S3 error: Error performing GET http://127.0.0.1:33065/b/k/layout.json in {took} - "
           "HTTP error: error sending request\n\nDebug source:\nGeneric {\n    store: \"S3\",\n"
           f"    source: RetryError(\n        RetryErrorImpl {{\n            retries: 0,\n"
           f"            elapsed: {took},\n            retry_timeout: 1s,\n",
           StoreUnreachableError, "s3://b/k: store unreachable")
          for took in ("403.907µs", "401.1ms", "404.2µs", "503ns")),
    ],
)  # fmt: skip
def test_s3_errors_are_classified_into_one_short_line(
    text: str, kind: type[StoreError], message: str
) -> None:
    from shardrec.serving.storage.stores import classify_s3_error

    error = classify_s3_error(RuntimeError(text), "s3://b/k")
    assert type(error) is kind
    assert str(error).startswith(message) and "<" not in str(error)


def test_python_m_recctl_prints_one_line_errors(tmp_path: Path) -> None:
    """The local runtime runs `python -m shardrec.tools.cli.main`: errors must not be tracebacks."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "shardrec.tools.cli.main", "index", "fetch", "--store", str(tmp_path),
         "--layout", "none", "--router", "--dest", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == f"recctl: error: {tmp_path}/none/layout.json: file missing"


def test_forgetting_a_cached_user_table_removes_only_that_s3_layouts_copy(tmp_path: Path) -> None:
    """The router's cache of s3:// layouts (`load_artifact_users`) is one folder per layout id; a
    local layout folder is the store itself and is never removed."""
    cache = tmp_path / "cache"
    for layout in ("lay-1", "lay-2"):
        (cache / layout / "users").mkdir(parents=True)
        (cache / layout / "layout.json").write_text("{}")
    assert forget_artifact_users("s3://bucket/layouts/lay-1", cache_root=cache) is True
    assert sorted(p.name for p in cache.iterdir()) == ["lay-2"]
    assert forget_artifact_users("s3://bucket/layouts/lay-1", cache_root=cache) is False
    local = tmp_path / "store" / "lay-3"
    (local / "users").mkdir(parents=True)
    assert forget_artifact_users(str(local), cache_root=cache) is False
    assert forget_artifact_users(f"file://{local}", cache_root=cache) is False
    assert (local / "users").is_dir()
