"""The embeddings directory (docs/embeddings-format.md): its one reader, writer and error.

Every error names the file and the problem (line or row numbers where they help), because this
is the format users bring their own data in. The training pipeline writes it, the index build,
the evaluation and the tests read it, all through this module.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shardrec.serving.index.files import fsync_dir

ITEMS_FILE = "items.npy"
ITEM_IDS_FILE = "item_ids.txt"
USERS_FILE = "users.npy"
USER_IDS_FILE = "user_ids.txt"
SEEN_FILE = "seen.tsv"
METADATA_FILE = "metadata.json"
_FORMAT_FILES = frozenset({ITEMS_FILE, ITEM_IDS_FILE, USERS_FILE, USER_IDS_FILE, SEEN_FILE, METADATA_FILE})

_FINITE_CHUNK_ROWS = 1 << 16
_FORBIDDEN_ID_CHARS = ("\t", "\r", "\n", "\x00")
_SHOWN = 5

Matrix = npt.NDArray[np.float32]


class EmbeddingsError(ValueError):
    """The embeddings directory breaks the format; the message names the file and the problem."""


@dataclass(frozen=True)
class Embeddings:
    """What an embeddings directory holds; rows of `items` / `users` follow the id lists.

    `load_embeddings` returns one (then `items` may be a read-only memory map and `directory`
    names where it came from); training makes one in memory.
    """

    items: Matrix
    item_ids: list[str]
    users: Matrix | None = None
    user_ids: list[str] | None = None
    # Per user (same order as user_ids): item ids already seen, only those present in item_ids.
    seen: list[list[str]] = field(default_factory=list)
    seen_unknown_items: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None

    @property
    def dimension(self) -> int:
        return int(self.items.shape[1])

    def seen_pairs(self) -> Iterator[tuple[str, str]]:
        """(user id, item id) pairs in `seen.tsv` order."""
        for user, items in zip(self.user_ids or [], self.seen, strict=False):
            for item in items:
                yield user, item


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
    check_ids(ids, path)
    return ids


def check_ids(ids: Sequence[str], path: Path) -> None:
    """The id rules of `item_ids.txt` and `user_ids.txt`; `path` names the file in errors."""
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


def read_seen_pairs(path: Path) -> dict[str, list[str]]:
    """Every (user, item) pair of `seen.tsv` as written, unknown items included (for checks that
    must see them, like the evaluation's leak check); `read_seen` is what serving uses."""
    pairs: dict[str, list[str]] = {}
    for _, user_id, item_id in _seen_lines(path):
        pairs.setdefault(user_id, []).append(item_id)
    return pairs


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
    return Embeddings(items, item_ids, users, user_ids, seen, unknown, metadata, directory)


def _write_file(path: Path, write: Any) -> None:
    with path.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _lines(lines: Iterable[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def write_embeddings_dir(
    directory: Path,
    items: Matrix,
    item_ids: Sequence[str],
    *,
    users: Matrix | None = None,
    user_ids: Sequence[str] | None = None,
    seen: Iterable[tuple[str, str]] = (),
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write an embeddings directory, replacing an earlier embeddings directory there if any.

    The ids are checked with the reader's rules and the row counts against them, so what this
    writes loads; the matrices are written as given (tests write broken ones on purpose through
    numpy). The folder is written aside, fsynced and renamed into place, so a reader never sees
    half of it. `seen` pairs are written as given (the reader drops unknown items).
    """
    check_ids(item_ids, directory / ITEM_IDS_FILE)
    if items.shape[0] != len(item_ids):
        raise EmbeddingsError(
            f"{directory / ITEMS_FILE}: count mismatch: {items.shape[0]} rows but {len(item_ids)} ids"
        )
    if (users is None) != (user_ids is None):
        raise EmbeddingsError(f"{directory / USERS_FILE}: give users and user_ids together, or neither")
    if users is not None and user_ids is not None:
        check_ids(user_ids, directory / USER_IDS_FILE)
        if users.shape[0] != len(user_ids):
            raise EmbeddingsError(
                f"{directory / USERS_FILE}: count mismatch: {users.shape[0]} rows but {len(user_ids)} ids"
            )
    if directory.exists() and not (
        directory.is_dir() and {child.name for child in directory.iterdir()} <= _FORMAT_FILES
    ):
        raise EmbeddingsError(
            f"{directory}: exists and is not an embeddings directory; refusing to replace it"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp) so the folder gets the umask's mode: pods of another uid read it.
    staging = directory.with_name(f".{directory.name}.tmp-{secrets.token_hex(6)}")
    staging.mkdir()
    try:
        _write_file(staging / ITEMS_FILE, lambda handle: np.save(handle, items))
        _write_file(staging / ITEM_IDS_FILE, lambda handle: handle.write(_lines(item_ids)))
        if users is not None and user_ids is not None:
            _write_file(staging / USERS_FILE, lambda handle: np.save(handle, users))
            _write_file(staging / USER_IDS_FILE, lambda handle: handle.write(_lines(user_ids)))
        pairs = [f"{user}\t{item}" for user, item in seen]
        if pairs:
            _write_file(staging / SEEN_FILE, lambda handle: handle.write(_lines(pairs)))
        if metadata is not None:
            text = json.dumps(dict(metadata), indent=2, sort_keys=True)
            _write_file(staging / METADATA_FILE, lambda handle: handle.write(_lines([text])))
        fsync_dir(staging)
        if directory.exists():
            retired = directory.with_name(f".{directory.name}.old-{secrets.token_hex(6)}")
            directory.rename(retired)
            staging.rename(directory)
            shutil.rmtree(retired)
        else:
            staging.rename(directory)
        fsync_dir(directory.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory
