"""A build per shard (`recctl index build --only-shard N`) then `recctl index publish`: the
per-shard manifests, reuse of parts that verify, layout.json only once every part verifies, and
a layout identical in content to a one-shot build's (docs/object-storage.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardrec.serving.index.build import build_layout, build_shard_part, plan_parts
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.layout import WantedLayout, verify_layout
from shardrec.serving.index.manifest import LayoutManifest, ShardManifest, shard_dir_name
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.storage.layouts import (
    check_shard_part,
    shard_part_mismatches,
    upload_shard_part,
)
from shardrec.serving.storage.stores import FileStore
from shardrec.tools.cli.main import main as recctl

DIM = 8
SHARDS = 3


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_embeddings_dir(
        tmp_path_factory.mktemp("emb"),
        clustered(400, DIM, clusters=5, seed=3),
        [f"item-{i}" for i in range(400)],
        users=clustered(4, DIM, clusters=1, seed=4),
        user_ids=["alice", "bob", "carol", "dan"],
        seen=[("alice", "item-3"), ("bob", "item-7")],
    )


def _layout_flags(embeddings: Path, out: Path) -> list[str]:
    return [
        "--embeddings", str(embeddings), "--out", str(out), "--version", "v1",
        "--shards", str(SHARDS), "--layout", "lay-p", "--no-progress",
    ]  # fmt: skip


def _part(folder: Path) -> ShardManifest:
    return ShardManifest.model_validate_json((folder / "manifest.json").read_bytes())


def _file_digests(layout_dir: Path) -> dict[str, str]:
    """Every data file's sha256 as the manifests record it (the manifests themselves carry
    built_at / build_seconds, so they differ between two builds of the same data)."""
    manifest = verify_layout(layout_dir)
    digests: dict[str, str] = {}
    for entry in manifest.shard_entries:
        shard = _part(layout_dir / entry.directory)
        digests.update({f"{entry.directory}/{f.name}": f.sha256 for f in shard.files})
    assert manifest.users is not None
    digests.update({f"users/{f.name}": f.sha256 for f in manifest.users.files})
    return digests


def _without_times(manifest: LayoutManifest) -> dict[str, object]:
    data = manifest.model_dump(exclude={"built_at", "build_seconds", "shard_entries"})
    data["shard_counts"] = [(e.shard, e.directory, e.count) for e in manifest.shard_entries]
    return data


def test_per_shard_builds_then_publish_equal_a_one_shot_build(embeddings: Path, tmp_path: Path) -> None:
    """Process level: the CLI, one shard at a time then publish, against build_layout; one build
    thread each, since hnswlib's multi-threaded insertion order is not deterministic."""
    one_shot = tmp_path / "one" / "lay-p"
    build_layout(embeddings, one_shot, version="v1", shards=SHARDS, layout="lay-p", workers=1, progress=False)
    parts = tmp_path / "parts" / "lay-p"
    for shard in range(SHARDS):
        assert recctl(["index", "build", *_layout_flags(embeddings, parts), "--workers", "1",
                       "--only-shard", str(shard)]) == 0  # fmt: skip
        assert not (parts / "layout.json").exists()
    assert recctl(["index", "publish", *_layout_flags(embeddings, parts)]) == 0
    assert _file_digests(parts) == _file_digests(one_shot)
    assert len(_file_digests(parts)) == 2 * SHARDS + 5  # users part: 4 files and the popular list
    assert _without_times(verify_layout(parts)) == _without_times(verify_layout(one_shot))
    # A shard pod loads a part-built layout like any other.
    assert recctl(["index", "verify", str(parts)]) == 0


def test_publish_refuses_until_every_part_verifies(
    embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store" / "lay-p"
    flags = _layout_flags(embeddings, out)
    assert recctl(["index", "build", *flags, "--only-shard", "0"]) == 0
    assert recctl(["index", "build", *flags, "--only-shard", "2"]) == 0
    capsys.readouterr()
    assert recctl(["index", "publish", *flags]) == 1
    err = capsys.readouterr().err
    assert "shard 1: not built" in err and "layout.json not written" in err
    assert not (out / "layout.json").exists()
    assert recctl(["index", "build", *flags, "--only-shard", "1"]) == 0
    # A tampered object of shard 2: publish names it, and a retry of that shard rebuilds it.
    index_file = out / shard_dir_name(2) / "index.bin"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    capsys.readouterr()
    assert recctl(["index", "publish", *flags]) == 1
    assert "shard 2:" in (err := capsys.readouterr().err) and "sha256 mismatch" in err
    assert recctl(["index", "build", *flags, "--only-shard", "2"]) == 0
    assert "built shard 2" in capsys.readouterr().out
    assert recctl(["index", "publish", *flags]) == 0
    assert verify_layout(out).shards == SHARDS
    # Retries after the publish reuse everything (an Indexed Job pod that ran twice).
    capsys.readouterr()
    assert recctl(["index", "build", *flags, "--only-shard", "1"]) == 0
    assert recctl(["index", "publish", *flags]) == 0
    assert capsys.readouterr().out.count("reused existing layout lay-p") == 2


def test_a_part_that_verifies_is_reused(
    embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store" / "lay-p"
    flags = [*_layout_flags(embeddings, out), "--only-shard", "1"]
    assert recctl(["index", "build", *flags]) == 0
    before = (out / shard_dir_name(1) / "manifest.json").read_bytes()
    capsys.readouterr()
    assert recctl(["index", "build", *flags]) == 0
    assert "reused existing shard 1" in capsys.readouterr().out
    assert (out / shard_dir_name(1) / "manifest.json").read_bytes() == before
    assert recctl(["index", "build", *flags[:-1], "7"]) == 1
    assert "--only-shard 7: the layout has shards 0..2" in capsys.readouterr().err


def test_shard_part_mismatches_name_each_field(embeddings: Path, tmp_path: Path) -> None:
    plan = plan_parts(embeddings, WantedLayout("lay-p", "v1", SHARDS, "cosine", 16, 200))
    folder = build_shard_part(plan, 0, tmp_path, workers=1, progress=False)
    part = _part(folder)
    assert shard_part_mismatches(part, plan.expected_header(0), plan.count(0)) == []
    other = plan_parts(embeddings, WantedLayout("lay-p", "v2", SHARDS, "ip", 16, 200))
    assert shard_part_mismatches(part, other.expected_header(0), plan.count(0) + 1) == [
        "version 'v1' (wanted 'v2')",
        "metric 'cosine' (wanted 'ip')",
        f"count {plan.count(0)} (wanted {plan.count(0) + 1})",
    ]
    store = FileStore(tmp_path / "store")
    assert check_shard_part(store, "lay-p", plan.expected_header(0), plan.count(0)) == "not built"
    upload_shard_part(folder, store, "lay-p")
    entry = check_shard_part(store, "lay-p", plan.expected_header(0), plan.count(0))
    assert not isinstance(entry, str) and entry.count == plan.count(0)
    found = check_shard_part(store, "lay-p", other.expected_header(0), plan.count(0))
    assert isinstance(found, str) and found.startswith("built for another layout")
    # The manifest is uploaded last: with it gone the part is simply not built.
    (tmp_path / "store" / "lay-p" / shard_dir_name(0) / "manifest.json").unlink()
    assert check_shard_part(store, "lay-p", plan.expected_header(0), plan.count(0)) == "not built"
    assert json.loads((folder / "manifest.json").read_text())["shard"] == 0


def test_the_last_part_to_finish_publishes(
    embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What each pod of the operator's Indexed Job runs: in any order, the last part publishes."""
    out = tmp_path / "store" / "lay-p"
    flags = [*_layout_flags(embeddings, out), "--publish-when-complete", "--only-shard"]
    for shard in (2, 0):
        assert recctl(["index", "build", *flags, str(shard)]) == 0
        assert not (out / "layout.json").exists()
    assert "not built yet: the last part to finish publishes" in capsys.readouterr().out
    assert recctl(["index", "build", *flags, "1"]) == 0
    assert "published layout lay-p" in capsys.readouterr().out
    assert verify_layout(out).shards == SHARDS
    assert (
        recctl(["index", "build", *_layout_flags(embeddings, tmp_path / "x"), "--publish-when-complete"]) == 1
    )
    assert "--publish-when-complete needs --only-shard" in capsys.readouterr().err
