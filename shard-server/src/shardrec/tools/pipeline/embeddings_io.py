"""Read and atomically write the embeddings directory (contract: docs/embeddings-format.md).

Files: items.npy + item_ids.txt, users.npy + user_ids.txt, seen.tsv, metadata.json. The folder
is written aside, fsynced and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shardrec.tools.pipeline.training import Embeddings

ITEMS = "items.npy"
ITEM_IDS = "item_ids.txt"
USERS = "users.npy"
USER_IDS = "user_ids.txt"
SEEN = "seen.tsv"
METADATA = "metadata.json"
_OURS = {ITEMS, ITEM_IDS, USERS, USER_IDS, SEEN, METADATA}


class EmbeddingsDirError(ValueError):
    """The embeddings directory is unusable; the message names the file and the problem."""


def _check_ids(ids: Sequence[str], filename: str) -> None:
    for line, value in enumerate(ids, start=1):
        if not value or any(char in value for char in "\t\r\n"):
            raise EmbeddingsDirError(f"{filename}:{line}: id {value!r} is empty or contains tab/CR/LF")
    if len(set(ids)) != len(ids):
        raise EmbeddingsDirError(f"{filename}: ids are not unique")


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(f"{line}\n" for line in lines)
        handle.flush()
        os.fsync(handle.fileno())


def _save_npy(path: Path, array: npt.NDArray[np.float32]) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32))
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_embeddings_dir(out: Path, embeddings: Embeddings, metadata: dict[str, Any]) -> Path:
    """Write `embeddings` to `out`, replacing an earlier embeddings directory there if any."""
    _check_ids(embeddings.item_ids, ITEM_IDS)
    _check_ids(embeddings.user_ids, USER_IDS)
    if embeddings.items.shape[0] != len(embeddings.item_ids):
        raise EmbeddingsDirError(
            f"{ITEMS}: {embeddings.items.shape[0]} rows for {len(embeddings.item_ids)} ids"
        )
    if embeddings.users.shape[0] != len(embeddings.user_ids):
        raise EmbeddingsDirError(
            f"{USERS}: {embeddings.users.shape[0]} rows for {len(embeddings.user_ids)} ids"
        )
    if out.exists() and not (out.is_dir() and {child.name for child in out.iterdir()} <= _OURS):
        raise EmbeddingsDirError(f"{out}: exists and is not an embeddings directory; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _save_npy(staging / ITEMS, embeddings.items)
        _write_lines(staging / ITEM_IDS, embeddings.item_ids)
        _save_npy(staging / USERS, embeddings.users)
        _write_lines(staging / USER_IDS, embeddings.user_ids)
        _write_lines(
            staging / SEEN,
            [f"{user}\t{item}" for user in embeddings.user_ids for item in embeddings.seen.get(user, [])],
        )
        _write_lines(staging / METADATA, [json.dumps(metadata, indent=2, sort_keys=True)])
        _fsync_dir(staging)
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(retired / out.name)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
        _fsync_dir(out.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise EmbeddingsDirError(f"{path}: missing")
    ids = path.read_text(encoding="utf-8").split("\n")
    if ids and ids[-1] == "":
        ids.pop()
    _check_ids(ids, str(path))
    return ids


def _read_matrix(path: Path, rows: int) -> npt.NDArray[np.float32]:
    if not path.is_file():
        raise EmbeddingsDirError(f"{path}: missing")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise EmbeddingsDirError(f"{path}: not a numpy array file ({exc})") from exc
    if array.dtype != np.float32 or array.ndim != 2:
        raise EmbeddingsDirError(f"{path}: expected a 2-D float32 array, got {array.dtype} {array.shape}")
    if array.shape[0] != rows:
        raise EmbeddingsDirError(f"{path}: {array.shape[0]} rows but {rows} ids")
    if not np.isfinite(array).all():
        raise EmbeddingsDirError(f"{path}: contains NaN or infinite values")
    return np.ascontiguousarray(array)


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EmbeddingsDirError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(loaded, dict):
        raise EmbeddingsDirError(f"{path}: expected a JSON object")
    return loaded


def read_embeddings_dir(folder: Path) -> Embeddings:
    """Load a directory that has user embeddings (needed to recommend for users)."""
    if not folder.is_dir():
        raise EmbeddingsDirError(f"{folder}: not a directory")
    item_ids = _read_ids(folder / ITEM_IDS)
    items = _read_matrix(folder / ITEMS, len(item_ids))
    user_ids = _read_ids(folder / USER_IDS)
    users = _read_matrix(folder / USERS, len(user_ids))
    if users.shape[1] != items.shape[1]:
        raise EmbeddingsDirError(f"{folder / USERS}: dimension {users.shape[1]} != items' {items.shape[1]}")
    seen: dict[str, list[str]] = {}
    seen_path = folder / SEEN
    if seen_path.is_file():
        with seen_path.open("r", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 2 or not all(fields):
                    raise EmbeddingsDirError(f"{seen_path}:{line_no}: expected user_id<TAB>item_id")
                seen.setdefault(fields[0], []).append(fields[1])
    metric = str(read_metadata(folder).get("metric", "ip"))
    return Embeddings(
        item_ids=item_ids, items=items, user_ids=user_ids, users=users, seen=seen, metric=metric
    )
