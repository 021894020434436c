"""The router's part of a layout: user embeddings, their ids, and the items each has seen.

Seen items are stored CSR-style: `seen_items.txt` lists item ids user after user, and
`seen_indptr.npy` (int64, users+1) gives each user's slice, so loading needs no per-pair parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shardrec.serving.index.files import fsync_file, sha256_file, write_durably
from shardrec.serving.index.layout import LayoutError, read_layout_manifest, verify_file
from shardrec.serving.index.manifest import (
    SEEN_INDPTR_FILE,
    SEEN_ITEMS_FILE,
    USER_IDS_FILE,
    USER_VECTORS_FILE,
    USERS_DIR,
    FileEntry,
    UsersPart,
)

Matrix = npt.NDArray[np.float32]


def _entry(folder: Path, name: str) -> FileEntry:
    path = folder / name
    fsync_file(path)
    return FileEntry(name=name, bytes=path.stat().st_size, sha256=sha256_file(path))


def write_users_part(
    folder: Path, users: Matrix, user_ids: list[str], seen: list[list[str]], seen_unknown_items: int
) -> UsersPart:
    """Write the users part into `folder` (fsynced) and describe it."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / USER_VECTORS_FILE).open("wb") as handle:
        np.save(handle, np.ascontiguousarray(users, dtype=np.float32))
    write_durably(folder / USER_IDS_FILE, "".join(f"{user_id}\n" for user_id in user_ids).encode())
    indptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(items) for items in seen], dtype=np.int64) if seen else 0
    with (folder / SEEN_INDPTR_FILE).open("wb") as handle:
        np.save(handle, indptr)
    write_durably(
        folder / SEEN_ITEMS_FILE,
        "".join(f"{item}\n" for items in seen for item in items).encode(),
    )
    names = (USER_VECTORS_FILE, USER_IDS_FILE, SEEN_INDPTR_FILE, SEEN_ITEMS_FILE)
    return UsersPart(
        directory=USERS_DIR,
        count=len(user_ids),
        seen_pairs=int(indptr[-1]),
        seen_unknown_items=seen_unknown_items,
        files=[_entry(folder, name) for name in names],
    )


def _lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


@dataclass(frozen=True)
class UserTable:
    """User embeddings of one layout version, with id lookup and per-user seen items."""

    version: str
    layout: str
    dimension: int
    vectors: Matrix
    user_ids: list[str]
    index_of: dict[str, int]
    seen_indptr: npt.NDArray[np.int64]
    seen_items: list[str]

    def __len__(self) -> int:
        return len(self.user_ids)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.index_of

    def vector(self, user_id: str) -> Matrix | None:
        """The user's embedding (a read-only view), or None for an unknown user."""
        index = self.index_of.get(user_id)
        return None if index is None else self.vectors[index]

    def seen(self, user_id: str) -> list[str]:
        """Items the user already interacted with (empty for an unknown user)."""
        index = self.index_of.get(user_id)
        if index is None:
            return []
        return self.seen_items[int(self.seen_indptr[index]) : int(self.seen_indptr[index + 1])]


def load_user_table(layout_dir: Path) -> UserTable:
    """Verify (sha256) and load the users part of a built layout; empty when it has no users."""
    manifest = read_layout_manifest(layout_dir, verify_shards=False)
    part = manifest.users
    if part is None:
        return UserTable(
            manifest.version,
            manifest.layout,
            manifest.dimension,
            np.zeros((0, manifest.dimension), dtype=np.float32),
            [],
            {},
            np.zeros(1, dtype=np.int64),
            [],
        )
    folder = layout_dir / part.directory
    for entry in part.files:
        verify_file(folder, entry)
    vectors = np.load(folder / USER_VECTORS_FILE, allow_pickle=False)
    user_ids = _lines(folder / USER_IDS_FILE)
    indptr = np.load(folder / SEEN_INDPTR_FILE, allow_pickle=False)
    seen_items = _lines(folder / SEEN_ITEMS_FILE)
    if vectors.shape != (part.count, manifest.dimension) or len(user_ids) != part.count:
        raise LayoutError(
            f"{folder}: users part holds {vectors.shape} vectors and {len(user_ids)} ids, "
            f"expected {part.count} x {manifest.dimension}"
        )
    if indptr.shape != (part.count + 1,) or int(indptr[-1]) != len(seen_items):
        raise LayoutError(f"{folder / SEEN_INDPTR_FILE}: does not match {SEEN_ITEMS_FILE}")
    vectors.setflags(write=False)
    return UserTable(
        manifest.version,
        manifest.layout,
        manifest.dimension,
        vectors,
        user_ids,
        {user_id: i for i, user_id in enumerate(user_ids)},
        indptr,
        seen_items,
    )
