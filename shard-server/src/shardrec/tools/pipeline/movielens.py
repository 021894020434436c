"""MovieLens folders as GroupLens ships them: locate, verify, load ratings and titles.

`ratings.csv` (userId,movieId,rating,timestamp) becomes the interaction table with movieId as
the item id; `movies.csv` (movieId,title,genres) gives the titles the demo prints.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from shardrec.serving.index.files import sha256_file
from shardrec.tools.pipeline.checksums import ChecksumError, verify_files
from shardrec.tools.pipeline.interactions import Interactions, InteractionsError, read_interactions_csv

ENV_VAR = "SHARDREC_MOVIELENS"
DATASET_NAME = "ml-latest-small"
RATINGS_COLUMNS: tuple[str, ...] = ("userId", "movieId", "rating", "timestamp")
MOVIES_COLUMNS: tuple[str, ...] = ("movieId", "title", "genres")

# Published in shared/data/README.md for the 2018-09-26 release; the archive contains the same files.
KNOWN_SHA256: dict[str, dict[str, str]] = {
    DATASET_NAME: {
        "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
        "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
        "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
        "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
    }
}


class MovieLensError(ValueError):
    """The MovieLens folder is missing, corrupt or malformed; the message names the path."""


@dataclass(frozen=True)
class LoadedInteractions:
    """Interactions plus where they came from, recorded in the embeddings' metadata.json."""

    interactions: Interactions
    source: dict[str, object] = field(default_factory=dict)


def _repo_roots() -> list[Path]:
    """Folders that look like a checkout of this project: from this file upward, then from cwd."""
    roots: list[Path] = []
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "pyproject.toml").is_file() and (folder / "shard-server").is_dir():
                if folder not in roots:
                    roots.append(folder)
                break
    return roots


def default_movielens_dir() -> Path:
    """`$SHARDREC_MOVIELENS`, else `<checkout>/../shared/data/ml-latest-small`.

    CI clones the repo with `shared/` beside the clone, so the same relative path works there.
    When nothing exists yet the first candidate is returned, so errors and downloads name it.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    candidates = [root.parent / "shared" / "data" / DATASET_NAME for root in _repo_roots()]
    candidates.append(Path.cwd().parent / "shared" / "data" / DATASET_NAME)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def resolve_movielens_dir(flag: Path | None) -> Path:
    """The folder named by the flag, else the environment variable, else the default."""
    return flag.expanduser() if flag is not None else default_movielens_dir()


def expected_checksums(folder: Path) -> dict[str, str] | None:
    """Known digests for a folder named like a known release; None when unknown (not verified)."""
    return KNOWN_SHA256.get(folder.name)


def load_movielens(folder: Path, *, verify: bool = True) -> LoadedInteractions:
    """Load `ratings.csv` of a MovieLens folder, verifying the known checksums first."""
    if not folder.is_dir():
        raise MovieLensError(f"{folder}: MovieLens folder not found (set --movielens or ${ENV_VAR})")
    known = expected_checksums(folder)
    try:
        if verify and known is not None:
            digests = verify_files(folder, known)
            verified = True
        else:
            digests = {"ratings.csv": sha256_file(folder / "ratings.csv")}
            verified = False
        interactions = read_interactions_csv(folder / "ratings.csv", RATINGS_COLUMNS)
    except (ChecksumError, InteractionsError, FileNotFoundError) as exc:
        raise MovieLensError(str(exc)) from exc
    source: dict[str, object] = {
        "kind": "movielens",
        "path": str(folder.resolve()),
        "dataset": folder.name,
        "sha256": digests,
        "checksums_verified": verified,
    }
    return LoadedInteractions(interactions=interactions, source=source)


def load_interactions_file(path: Path) -> LoadedInteractions:
    """Load a generic `user,item,rating,timestamp` CSV, recording its digest."""
    interactions = read_interactions_csv(path)
    source: dict[str, object] = {
        "kind": "csv",
        "path": str(path.resolve()),
        "sha256": {path.name: sha256_file(path)},
        "checksums_verified": False,
    }
    return LoadedInteractions(interactions=interactions, source=source)


def load_titles(folder: Path) -> dict[str, str]:
    """movieId (as the item id string) -> title, from `movies.csv`."""
    path = folder / "movies.csv"
    if not path.is_file():
        raise MovieLensError(f"{path}: no such file")
    titles: dict[str, str] = {}
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [name.strip() for name in header] != list(MOVIES_COLUMNS):
            raise MovieLensError(f"{path}:1: header is {header!r}, expected {','.join(MOVIES_COLUMNS)!r}")
        for row in reader:
            if len(row) != len(MOVIES_COLUMNS):
                raise MovieLensError(f"{path}:{reader.line_num}: expected 3 fields, got {len(row)}")
            titles[row[0].strip()] = row[1]
    return titles
