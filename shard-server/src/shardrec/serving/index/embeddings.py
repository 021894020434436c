"""Read and validate an embeddings directory (docs/embeddings-format.md).

Every error names the file and the problem (line or row numbers where they help), because this
is the format users bring their own data in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ITEMS_FILE = "items.npy"
ITEM_IDS_FILE = "item_ids.txt"
USERS_FILE = "users.npy"
USER_IDS_FILE = "user_ids.txt"
SEEN_FILE = "seen.tsv"
METADATA_FILE = "metadata.json"

_FINITE_CHUNK_ROWS = 1 << 16
_FORBIDDEN_ID_CHARS = ("\t", "\r", "\n", "\x00")
_SHOWN = 5

Matrix = npt.NDArray[np.float32]


class EmbeddingsError(ValueError):
    """The embeddings directory breaks the format; the message names the file and the problem."""


@dataclass(frozen=True)
class Embeddings:
    """A validated embeddings directory. `items` may be a read-only memory map."""

    directory: Path
    items: Matrix
    item_ids: list[str]
    users: Matrix | None = None
    user_ids: list[str] | None = None
    # Per user (same order as user_ids): item ids already seen, only those present in item_ids.
    seen: list[list[str]] = field(default_factory=list)
    seen_unknown_items: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def dimension(self) -> int:
        return int(self.items.shape[1])


def _row_list(rows: npt.NDArray[np.intp]) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_SHOWN])
    return shown + (f" (and {len(rows) - _SHOWN} more)" if len(rows) > _SHOWN else "")


def load_matrix(path: Path, *, expected_rows: int | None = None) -> Matrix:
    """A float32 (rows x dim) C-ordered matrix with only finite values, memory-mapped."""
    if not path.is_file():
        raise EmbeddingsError(f"{path}: file missing")
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise EmbeddingsError(f"{path}: not a readable .npy array ({exc})") from exc
    if matrix.dtype != np.dtype("<f4"):
        raise EmbeddingsError(f"{path}: dtype must be float32 (little-endian), got {matrix.dtype}")
    if matrix.ndim != 2:
        raise EmbeddingsError(f"{path}: must be 2-dimensional (rows x dim), got shape {matrix.shape}")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise EmbeddingsError(f"{path}: must have at least one row and one column, got {matrix.shape}")
    if not matrix.flags.c_contiguous:
        raise EmbeddingsError(f"{path}: must be C-ordered (row-major); it is stored Fortran-ordered")
    if expected_rows is not None and matrix.shape[0] != expected_rows:
        raise EmbeddingsError(f"{path}: count mismatch: {matrix.shape[0]} rows but {expected_rows} ids")
    bad = _non_finite_rows(matrix)
    if len(bad):
        raise EmbeddingsError(f"{path}: {len(bad)} rows contain NaN or inf: rows {_row_list(bad)}")
    checked: Matrix = matrix
    return checked


def _non_finite_rows(matrix: Matrix) -> npt.NDArray[np.intp]:
    found: list[npt.NDArray[np.intp]] = []
    for start in range(0, matrix.shape[0], _FINITE_CHUNK_ROWS):
        chunk = matrix[start : start + _FINITE_CHUNK_ROWS]
        rows = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if len(rows):
            found.append(rows + start)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.intp)


def read_ids(path: Path) -> list[str]:
    """Unique, non-empty UTF-8 ids, one a line (a final newline is optional)."""
    if not path.is_file():
        raise EmbeddingsError(f"{path}: file missing")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise EmbeddingsError(f"{path}: line {line}: not valid UTF-8") from exc
    ids = text.split("\n")
    if ids and ids[-1] == "":
        ids.pop()
    first_line: dict[str, int] = {}
    for number, item_id in enumerate(ids, start=1):
        if not item_id:
            raise EmbeddingsError(f"{path}: line {number}: empty id")
        for char in _FORBIDDEN_ID_CHARS:
            if char in item_id:
                raise EmbeddingsError(f"{path}: line {number}: id contains a forbidden character {char!r}")
        if item_id in first_line:
            raise EmbeddingsError(
                f"{path}: duplicate id {item_id!r} on lines {first_line[item_id]} and {number}"
            )
        first_line[item_id] = number
    if not ids:
        raise EmbeddingsError(f"{path}: no ids")
    return ids


def _seen_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    with path.open("r", encoding="utf-8", newline="\n") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                stripped = line.rstrip("\n")
                if not stripped:
                    continue
                fields = stripped.split("\t")
                if len(fields) != 2 or not fields[0] or not fields[1]:
                    raise EmbeddingsError(
                        f"{path}: line {number}: expected 'user_id<TAB>item_id', got {stripped[:80]!r}"
                    )
                yield number, fields[0], fields[1]
        except UnicodeDecodeError as exc:
            raise EmbeddingsError(f"{path}: not valid UTF-8 ({exc.reason})") from exc


def read_seen(path: Path, user_ids: list[str], item_ids: list[str]) -> tuple[list[list[str]], int]:
    """Per-user seen item ids, and how many pairs named items outside the catalogue (dropped)."""
    user_index = {user_id: i for i, user_id in enumerate(user_ids)}
    catalogue = set(item_ids)
    seen: list[list[str]] = [[] for _ in user_ids]
    sets: list[set[str]] = [set() for _ in user_ids]
    unknown_items = 0
    for number, user_id, item_id in _seen_lines(path):
        index = user_index.get(user_id)
        if index is None:
            raise EmbeddingsError(f"{path}: line {number}: user {user_id!r} is not in {USER_IDS_FILE}")
        if item_id not in catalogue:
            unknown_items += 1  # cannot be recommended anyway, so nothing to exclude
            continue
        if item_id not in sets[index]:
            sets[index].add(item_id)
            seen[index].append(item_id)
    return seen, unknown_items


def read_metadata(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmbeddingsError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise EmbeddingsError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def load_embeddings(directory: Path) -> Embeddings:
    """Validate `directory` against the embeddings format and return its contents."""
    if not directory.is_dir():
        raise EmbeddingsError(f"{directory}: embeddings directory not found")
    item_ids = read_ids(directory / ITEM_IDS_FILE)
    items = load_matrix(directory / ITEMS_FILE, expected_rows=len(item_ids))
    users_path, user_ids_path = directory / USERS_FILE, directory / USER_IDS_FILE
    users: Matrix | None = None
    user_ids: list[str] | None = None
    if users_path.exists() != user_ids_path.exists():
        present, missing = (users_path, user_ids_path) if users_path.exists() else (user_ids_path, users_path)
        raise EmbeddingsError(f"{missing}: file missing ({present.name} is present; give both or neither)")
    if users_path.exists():
        user_ids = read_ids(user_ids_path)
        users = load_matrix(users_path, expected_rows=len(user_ids))
        if users.shape[1] != items.shape[1]:
            raise EmbeddingsError(
                f"{users_path}: dimension {users.shape[1]} differs from {ITEMS_FILE} ({items.shape[1]})"
            )
    seen: list[list[str]] = []
    unknown = 0
    seen_path = directory / SEEN_FILE
    if seen_path.exists():
        if user_ids is None:
            raise EmbeddingsError(f"{seen_path}: needs {USERS_FILE} and {USER_IDS_FILE}, which are missing")
        seen, unknown = read_seen(seen_path, user_ids, item_ids)
    elif user_ids is not None:
        seen = [[] for _ in user_ids]
    metadata_path = directory / METADATA_FILE
    metadata = read_metadata(metadata_path) if metadata_path.exists() else {}
    return Embeddings(directory, items, item_ids, users, user_ids, seen, unknown, metadata)
