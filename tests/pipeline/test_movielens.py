from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from shardrec.serving.index.files import sha256_file
from shardrec.tools.pipeline.download import install_archive
from shardrec.tools.pipeline.movielens import (
    DATASET_NAME,
    KNOWN_SHA256,
    MovieLensError,
    default_movielens_dir,
    load_movielens,
    load_titles,
)

FILES = sorted(KNOWN_SHA256[DATASET_NAME])


def _copy(movielens_dir: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(movielens_dir / name, target / name)
    return target


def test_loads_the_real_ratings_with_verified_checksums(movielens_dir: Path) -> None:
    loaded = load_movielens(movielens_dir)
    table = loaded.interactions
    # Counts published with the release (README.txt): 100,836 ratings, 610 users, 9,724 rated movies.
    assert len(table) == 100_836
    assert table.user_count == 610
    assert table.item_count == 9_724
    assert table.users[0] == "1" and table.items[0] == "1" and table.timestamps[0] == 964_982_703
    assert loaded.source["checksums_verified"] is True
    assert loaded.source["sha256"] == KNOWN_SHA256[DATASET_NAME]


@pytest.mark.parametrize("victim", ["ratings.csv", "movies.csv", "tags.csv"])
def test_a_corrupted_copy_is_rejected_naming_the_file(
    movielens_dir: Path, tmp_path: Path, victim: str
) -> None:
    copy = _copy(movielens_dir, tmp_path / DATASET_NAME)
    with (copy / victim).open("a", encoding="utf-8") as handle:
        handle.write("1,1,5.0,1\n")
    with pytest.raises(
        MovieLensError, match=rf"{victim}: sha256 mismatch: expected {KNOWN_SHA256[DATASET_NAME][victim]}"
    ):
        load_movielens(copy)


def test_a_missing_file_is_named(movielens_dir: Path, tmp_path: Path) -> None:
    copy = _copy(movielens_dir, tmp_path / DATASET_NAME)
    (copy / "links.csv").unlink()
    with pytest.raises(MovieLensError, match=r"links\.csv: file missing"):
        load_movielens(copy)
    with pytest.raises(MovieLensError, match=r"MovieLens folder not found"):
        load_movielens(tmp_path / "absent")


def test_unknown_release_is_loaded_unverified(movielens_dir: Path, tmp_path: Path) -> None:
    copy = _copy(movielens_dir, tmp_path / "ml-custom")
    loaded = load_movielens(copy)
    assert loaded.source["checksums_verified"] is False
    assert loaded.source["sha256"] == {"ratings.csv": KNOWN_SHA256[DATASET_NAME]["ratings.csv"]}


def test_titles_by_movie_id(movielens_dir: Path) -> None:
    titles = load_titles(movielens_dir)
    assert len(titles) == 9_742
    assert titles["1"] == "Toy Story (1995)"
    # Titles with commas are quoted in the CSV.
    assert titles["11"] == "American President, The (1995)"


def test_default_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHARDREC_MOVIELENS", str(tmp_path / "elsewhere"))
    assert default_movielens_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SHARDREC_MOVIELENS")
    found = default_movielens_dir()
    assert found.name == DATASET_NAME and found.parent.name == "data" and found.parent.parent.name == "shared"


def _zip(movielens_dir: Path, archive: Path, *, tamper: str | None = None, skip: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in FILES:
            if name == skip:
                continue
            data = (movielens_dir / name).read_bytes()
            if name == tamper:
                data = data.replace(b"Toy Story", b"Toy Storm")
            bundle.writestr(f"{DATASET_NAME}/{name}", data)
        bundle.writestr(f"{DATASET_NAME}/README.txt", "terms of use")
        bundle.writestr("../evil.txt", "never extracted")
    return archive


def test_archive_installs_verified(movielens_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data" / DATASET_NAME
    install_archive(_zip(movielens_dir, tmp_path / "a.zip"), dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*FILES, "README.txt"])
    assert {name: sha256_file(dest / name) for name in FILES} == KNOWN_SHA256[DATASET_NAME]
    assert not (tmp_path / "evil.txt").exists()
    assert len(load_movielens(dest).interactions) == 100_836


def test_tampered_archive_is_rejected_and_leaves_nothing(movielens_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data" / DATASET_NAME
    with pytest.raises(MovieLensError, match=r"movies\.csv: sha256 mismatch"):
        install_archive(_zip(movielens_dir, tmp_path / "a.zip", tamper="movies.csv"), dest)
    assert not dest.exists()
    assert list((tmp_path / "data").iterdir()) == []
    with pytest.raises(MovieLensError, match=r"member ml-latest-small/tags\.csv missing"):
        install_archive(_zip(movielens_dir, tmp_path / "b.zip", skip="tags.csv"), dest)
    not_zip = tmp_path / "c.zip"
    not_zip.write_text("html error page", encoding="utf-8")
    with pytest.raises(MovieLensError, match=r"c\.zip: not a zip archive"):
        install_archive(not_zip, dest)
    assert not dest.exists()
