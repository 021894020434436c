"""Layout build and verification: atomic publish, and each corruption rejected with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from shardrec.serving.index import build as build_module
from shardrec.serving.index.build import BuildError, build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.files import sha256_file
from shardrec.serving.index.layout import LayoutError, read_layout_manifest, verify_layout
from shardrec.serving.index.manifest import LayoutManifest
from shardrec.serving.index.partitioning import assign_shards
from shardrec.serving.index.shard_index import Expectation, ShardIndex
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.index.users import load_user_table
from shardrec.tools.cli.main import main as recctl

DIM = 8


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = clustered(600, DIM, clusters=10, seed=1)
    users = clustered(4, DIM, clusters=2, seed=2)
    return write_embeddings_dir(
        tmp_path_factory.mktemp("emb"),
        items,
        [f"item-{i}" for i in range(600)],
        users=users,
        user_ids=["alice", "bob", "carol", "dave"],
        seen=[("alice", "item-3"), ("alice", "item-7"), ("carol", "item-9"), ("carol", "no-such-item")],
    )


def _build(embeddings: Path, out: Path, **overrides: object) -> LayoutManifest:
    params: dict[str, object] = {"version": "v1", "shards": 3, "metric": "cosine", "progress": False}
    params.update(overrides)
    return build_layout(embeddings, out, **params)  # type: ignore[arg-type]


def test_build_writes_a_verifiable_layout(embeddings: Path, tmp_path: Path) -> None:
    out = tmp_path / "layout-a"
    manifest = _build(embeddings, out, layout="lay-a")
    assert verify_layout(out) == manifest
    assert (manifest.layout, manifest.version, manifest.shards, manifest.dimension) == ("lay-a", "v1", 3, DIM)
    ids = [f"item-{i}" for i in range(600)]
    expected_counts = np.bincount(assign_shards(ids, 3), minlength=3).tolist()
    assert [entry.count for entry in manifest.shard_entries] == expected_counts
    for shard in range(3):
        held = (out / f"shard-{shard:04d}" / "ids.txt").read_text().split()
        assert all(assign_shards(held, 3) == shard)
    assert not list(tmp_path.glob(".*building*"))  # staging folder gone


def test_user_table(embeddings: Path, tmp_path: Path) -> None:
    out = tmp_path / "layout-u"
    _build(embeddings, out)
    table = load_user_table(out)
    assert len(table) == 4 and "bob" in table and "zed" not in table
    stored = np.load(embeddings / "users.npy")
    vector = table.vector("carol")
    assert vector is not None
    np.testing.assert_array_equal(vector, stored[2])
    assert table.seen("alice") == ["item-3", "item-7"]
    assert table.seen("carol") == ["item-9"]
    assert table.seen("bob") == [] and table.seen("zed") == [] and table.vector("zed") is None
    assert read_layout_manifest(out).users is not None
    assert read_layout_manifest(out).users.seen_unknown_items == 1  # type: ignore[union-attr]


def test_reuses_a_built_layout_with_the_same_parameters(embeddings: Path, tmp_path: Path) -> None:
    """A rollback to a layout whose artifact is still there must not fail (issue 14)."""
    out = tmp_path / "layout"
    first = _build(embeddings, out)
    mtime = (out / "layout.json").stat().st_mtime_ns
    again = _build(embeddings, out)
    assert again == first
    assert (out / "layout.json").stat().st_mtime_ns == mtime  # nothing rebuilt or rewritten


def test_refuses_a_built_layout_with_other_parameters(embeddings: Path, tmp_path: Path) -> None:
    out = tmp_path / "layout"
    _build(embeddings, out)
    with pytest.raises(BuildError, match=r"already holds a different layout.*shards 3 \(wanted 2\)"):
        _build(embeddings, out, shards=2)


def test_refuses_to_reuse_a_built_layout_that_does_not_verify(embeddings: Path, tmp_path: Path) -> None:
    out = tmp_path / "layout"
    _build(embeddings, out)
    (out / "shard-0001" / "ids.txt").write_text("tampered\n")
    with pytest.raises(BuildError, match=r"does not verify.*ids\.txt"):
        _build(embeddings, out)


def test_failed_build_publishes_nothing(
    embeddings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(build_module, "write_users_part", explode)
    out = tmp_path / "layout"
    with pytest.raises(OSError, match="disk full"):
        _build(embeddings, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_rebuilds_into_an_existing_unbuilt_folder(embeddings: Path, tmp_path: Path) -> None:
    out = tmp_path / "layout"
    (out / "shard-0000").mkdir(parents=True)
    (out / "shard-0000" / "index.bin").write_bytes(b"leftover of a dead build")
    with pytest.raises(LayoutError, match="not built"):
        read_layout_manifest(out)
    _build(embeddings, out)
    verify_layout(out)


def test_bad_build_arguments(embeddings: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="--shards 700"):
        _build(embeddings, tmp_path / "x", shards=700)
    with pytest.raises(BuildError, match="--version"):
        _build(embeddings, tmp_path / "x", version="bad/version")
    with pytest.raises(BuildError, match="--ef-construction"):
        _build(embeddings, tmp_path / "x", m=32, ef_construction=16)
    with pytest.raises(BuildError, match="expected 16"):
        _build(embeddings, tmp_path / "x", expected_dimension=16)


# --- corruption ---------------------------------------------------------------------------------


@pytest.fixture
def layout(embeddings: Path, tmp_path: Path) -> Path:
    out = tmp_path / "layout"
    _build(embeddings, out)
    return out


def _rewrite_shard_manifest(layout: Path, number: int, **changes: object) -> None:
    """Edit a shard manifest AND re-record its sha256 in layout.json, so only the field differs."""
    path = layout / f"shard-{number:04d}" / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    top = json.loads((layout / "layout.json").read_text())
    top["shard_entries"][number]["manifest_sha256"] = sha256_file(path)
    (layout / "layout.json").write_text(json.dumps(top))


def _rejects(layout: Path, *fragments: str, shard: int = 0) -> None:
    for check in (lambda: verify_layout(layout), lambda: ShardIndex.load(layout, shard)):
        with pytest.raises(LayoutError) as caught:
            check()
        for fragment in fragments:
            assert fragment in str(caught.value)


def test_bad_checksum_of_index_file(layout: Path) -> None:
    path = layout / "shard-0001" / "index.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _rejects(layout, "shard-0001/index.bin", "sha256 mismatch", shard=1)


def test_truncated_file(layout: Path) -> None:
    path = layout / "shard-0000" / "ids.txt"
    path.write_bytes(path.read_bytes()[:-5])
    _rejects(layout, "shard-0000/ids.txt", "size")


def test_edited_shard_manifest_is_caught_by_its_checksum(layout: Path) -> None:
    path = layout / "shard-0002" / "manifest.json"
    path.write_text(path.read_text().replace('"count"', '"count" ', 1))
    _rejects(layout, "shard-0002/manifest.json", "sha256 mismatch", shard=2)


def test_wrong_dimension(layout: Path) -> None:
    _rewrite_shard_manifest(layout, 0, dimension=DIM * 2)
    _rejects(layout, "shard-0000/manifest.json", f"dimension {DIM * 2} differs from layout.json ({DIM})")


def test_wrong_metric(layout: Path) -> None:
    _rewrite_shard_manifest(layout, 1, metric="l2")
    _rejects(layout, "metric 'l2' differs from layout.json ('cosine')", shard=1)


def test_wrong_shard_numbering_in_shard_manifest(layout: Path) -> None:
    _rewrite_shard_manifest(layout, 0, shard=1)
    _rejects(layout, "shard-0000/manifest.json", "shard 1 differs from layout.json (0)")


def test_wrong_shard_numbering_in_layout(layout: Path) -> None:
    top = json.loads((layout / "layout.json").read_text())
    top["shard_entries"][1]["shard"] = 2
    (layout / "layout.json").write_text(json.dumps(top))
    _rejects(layout, "layout.json", "shard numbering must be 0..2", "[0, 2, 2]")


def test_shard_out_of_range(layout: Path) -> None:
    with pytest.raises(LayoutError, match=r"shard 3 does not exist: the layout has shards 0..2"):
        ShardIndex.load(layout, 3)


def test_missing_or_half_written_layout_json(layout: Path) -> None:
    text = (layout / "layout.json").read_text()
    (layout / "layout.json").write_text(text[: len(text) // 2])
    _rejects(layout, "layout.json", "not valid JSON", "half-written")
    (layout / "layout.json").unlink()
    _rejects(layout, "layout.json", "file missing", "not built")


def test_layout_json_with_wrong_fields(layout: Path) -> None:
    top = json.loads((layout / "layout.json").read_text())
    top["metric"] = "hamming"
    (layout / "layout.json").write_text(json.dumps(top))
    _rejects(layout, "layout.json", "invalid LayoutManifest", "metric")


def test_expectations_of_a_loader(layout: Path) -> None:
    with pytest.raises(LayoutError, match=r"dimension is 8, but 16 is required"):
        ShardIndex.load(layout, 0, expect=Expectation(dimension=16))
    with pytest.raises(LayoutError, match=r"metric is 'cosine', but 'ip' is required"):
        ShardIndex.load(layout, 0, expect=Expectation(metric="ip"))
    with pytest.raises(LayoutError, match=r"shards is 3, but 4 is required"):
        ShardIndex.load(layout, 0, expect=Expectation(shards=4))


def test_corrupt_users_part(layout: Path) -> None:
    (layout / "users" / "seen_items.txt").write_text("item-0\n")
    with pytest.raises(LayoutError, match=r"users/seen_items.txt: size"):
        load_user_table(layout)


def test_cli_build_and_verify(embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-layout"
    args = [
        "index",
        "build",
        "--embeddings",
        str(embeddings),
        "--out",
        str(out),
        "--version",
        "v9",
        "--shards",
        "2",
        "--metric",
        "l2",
        "--m",
        "8",
        "--ef-construction",
        "32",
        "--workers",
        "2",
        "--no-progress",
    ]
    assert recctl(args) == 0
    assert "built layout cli-layout (version v9)" in capsys.readouterr().out
    assert recctl(["index", "verify", str(out)]) == 0
    assert '"metric": "l2"' in capsys.readouterr().out
    (out / "shard-0001" / "ids.txt").write_text("tampered\n")
    assert recctl(["index", "verify", str(out)]) == 1
    assert "shard-0001/ids.txt" in capsys.readouterr().err


def test_an_index_file_cut_short_fails_the_build(
    embeddings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hnswlib's save_index does not check its writes: on a full disk (or past a file-size limit)
    it returned normally with index.bin cut short, the manifest took the short file's checksum,
    and the layout verified (found by the fault suite's full-disk scenario)."""
    save = hnswlib.Index.save_index

    def save_short(index: hnswlib.Index, path: str) -> None:
        save(index, path)
        with Path(path).open("r+b") as handle:
            handle.truncate(4096)

    monkeypatch.setattr(hnswlib.Index, "save_index", save_short)
    with pytest.raises(BuildError, match=r"index.bin: wrote 4096 of \d+ bytes"):
        build_layout(embeddings, tmp_path / "out", version="v1", shards=1, progress=False)
    assert not (tmp_path / "out" / "layout.json").exists()
