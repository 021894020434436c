"""Bad embeddings directories are rejected with a message naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shardrec.serving.index.embeddings import EmbeddingsError, load_embeddings, write_embeddings_dir
from shardrec.serving.index.synthetic import clustered
from shardrec.tools.cli.main import main as recctl


def _valid(tmp_path: Path, count: int = 6, dimension: int = 4) -> Path:
    items = clustered(count, dimension, clusters=2, seed=3)
    users = clustered(3, dimension, clusters=1, seed=4)
    return write_embeddings_dir(
        tmp_path / "emb",
        items,
        [f"i{n}" for n in range(count)],
        users=users,
        user_ids=["u0", "u1", "u2"],
        seen=[("u0", "i1"), ("u0", "i2"), ("u0", "i1"), ("u2", "gone")],
    )


def test_valid_directory_loads(tmp_path: Path) -> None:
    emb = load_embeddings(_valid(tmp_path))
    assert emb.items.shape == (6, 4)
    assert emb.item_ids[:2] == ["i0", "i1"]
    assert emb.user_ids == ["u0", "u1", "u2"]
    # duplicates collapse, unknown items are dropped and counted
    assert emb.seen == [["i1", "i2"], [], []]
    assert emb.seen_unknown_items == 1


def _expect(directory: Path, *fragments: str) -> None:
    with pytest.raises(EmbeddingsError) as caught:
        load_embeddings(directory)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_wrong_dtype(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    np.save(directory / "items.npy", np.zeros((6, 4), dtype=np.float64))
    _expect(directory, "items.npy", "dtype must be float32", "float64")


def test_wrong_shape(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    np.save(directory / "items.npy", np.zeros(6, dtype=np.float32))
    _expect(directory, "items.npy", "2-dimensional", "(6,)")


def test_fortran_order(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    np.save(directory / "items.npy", np.asfortranarray(np.zeros((6, 4), dtype=np.float32)))
    _expect(directory, "items.npy", "C-ordered")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows(tmp_path: Path, bad: float) -> None:
    directory = _valid(tmp_path)
    items = np.load(directory / "items.npy")
    items[3, 1] = bad
    items[5, 0] = bad
    np.save(directory / "items.npy", items)
    _expect(directory, "items.npy", "2 rows contain NaN or inf", "rows 3, 5")


def test_duplicate_ids(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    (directory / "item_ids.txt").write_text("a\nb\nc\na\ne\nf\n")
    _expect(directory, "item_ids.txt", "duplicate id 'a' on lines 1 and 4")


def test_empty_id_and_forbidden_characters(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    (directory / "item_ids.txt").write_text("a\n\nc\nd\ne\nf\n")
    _expect(directory, "item_ids.txt", "line 2: empty id")
    (directory / "item_ids.txt").write_bytes(b"a\r\nb\r\nc\r\nd\r\ne\r\nf\r\n")
    _expect(directory, "item_ids.txt", "line 1", "forbidden character '\\r'")


def test_ids_not_utf8(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    (directory / "item_ids.txt").write_bytes(b"a\nb\n\xff\xfe\ne\nf\ng\n")
    _expect(directory, "item_ids.txt", "line 3: not valid UTF-8")


def test_count_mismatch(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    (directory / "item_ids.txt").write_text("a\nb\nc\nd\ne\n")
    _expect(directory, "items.npy", "count mismatch: 6 rows but 5 ids")


def test_users_dimension_and_pairing(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    np.save(directory / "users.npy", np.zeros((3, 5), dtype=np.float32))
    _expect(directory, "users.npy", "dimension 5 differs from items.npy (4)")
    (directory / "user_ids.txt").unlink()
    _expect(directory, "user_ids.txt", "file missing", "users.npy is present")


def test_seen_problems(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    (directory / "seen.tsv").write_text("u0\ti1\nzz\ti2\n")
    _expect(directory, "seen.tsv", "line 2: user 'zz' is not in user_ids.txt")
    (directory / "seen.tsv").write_text("u0\ti1\nu1 i2\n")
    _expect(directory, "seen.tsv", "line 2: expected 'user_id<TAB>item_id'")
    (directory / "users.npy").unlink()
    (directory / "user_ids.txt").unlink()
    _expect(directory, "seen.tsv", "needs users.npy and user_ids.txt")


def test_missing_files_and_unreadable_npy(tmp_path: Path) -> None:
    _expect(tmp_path / "nope", "embeddings directory not found")
    directory = _valid(tmp_path)
    (directory / "items.npy").write_bytes(b"not numpy")
    _expect(directory, "items.npy", "not a readable .npy array")
    (directory / "items.npy").unlink()
    _expect(directory, "items.npy", "file missing")


def test_metadata_must_be_an_object(tmp_path: Path) -> None:
    directory = _valid(tmp_path)
    (directory / "metadata.json").write_text("[1, 2]")
    _expect(directory, "metadata.json", "JSON object")
    (directory / "metadata.json").write_text("{bad")
    _expect(directory, "metadata.json", "not valid JSON")


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _valid(tmp_path)
    np.save(directory / "items.npy", np.zeros((6, 4), dtype=np.float16))
    code = recctl(
        [
            "index",
            "build",
            "--embeddings",
            str(directory),
            "--out",
            str(tmp_path / "out"),
            "--version",
            "v1",
            "--shards",
            "2",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("recctl: error: ") and "items.npy: dtype must be float32" in err
    assert not (tmp_path / "out").exists()
