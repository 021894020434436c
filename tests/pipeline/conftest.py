"""Shared fixtures: the real MovieLens folder (read-only) and small hand-made interaction files."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardrec.tools.pipeline.interactions import Interactions
from shardrec.tools.pipeline.movielens import default_movielens_dir, load_movielens


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    folder = default_movielens_dir()
    if not (folder / "ratings.csv").is_file():
        pytest.skip(f"MovieLens not found at {folder} (set SHARDREC_MOVIELENS); tests never download it")
    return folder


@pytest.fixture(scope="session")
def movielens_table(movielens_dir: Path) -> Interactions:
    """The verified ratings, loaded once (tests only read the arrays)."""
    return load_movielens(movielens_dir).interactions


def write_csv(path: Path, rows: list[str], header: str = "user,item,rating,timestamp") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path
