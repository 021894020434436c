"""The router's part of a layout: user embeddings, their ids, and the items each has seen.

Seen items are stored CSR-style: `seen_items.txt` lists item ids user after user, and
`seen_indptr.npy` (int64, users+1) gives each user's slice, so loading needs no per-pair parsing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from shardrec.serving.index.files import fsync_file, sha256_file, write_durably
from shardrec.serving.index.foldin import FoldInModel, FoldInSpec, Gram
from shardrec.serving.index.layout import LayoutError, read_layout_manifest, verify_file
from shardrec.serving.index.manifest import (
    ITEM_GRAM_FILE,
    POPULAR_FILE,
    SEEN_INDPTR_FILE,
    SEEN_ITEMS_FILE,
    USER_IDS_FILE,
    USER_VECTORS_FILE,
    USERS_DIR,
    FileEntry,
    FoldInPart,
    UsersPart,
)

Matrix = npt.NDArray[np.float32]

POPULAR_LIMIT: Final = 1000


def popular_items(seen: list[list[str]], limit: int = POPULAR_LIMIT) -> list[tuple[str, int]]:
    """The `limit` items seen by the most users, with their counts, most first (ties by item id,
    so a rebuild writes the same file). Pure."""
    counts = Counter(item for items in seen for item in set(items))
    return sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[:limit]


def _entry(folder: Path, name: str) -> FileEntry:
    path = folder / name
    fsync_file(path)
    return FileEntry(name=name, bytes=path.stat().st_size, sha256=sha256_file(path))


def write_users_part(
    folder: Path,
    users: Matrix,
    user_ids: list[str],
    seen: list[list[str]],
    seen_unknown_items: int,
    *,
    fold_in: tuple[FoldInSpec, Gram | None] | None = None,
) -> UsersPart:
    """Write the users part into `folder` (fsynced) and describe it; with `fold_in`, also how to
    fold in recent items (and the Gram matrix the `als` method needs)."""
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
    names = [USER_VECTORS_FILE, USER_IDS_FILE, SEEN_INDPTR_FILE, SEEN_ITEMS_FILE]
    part: FoldInPart | None = None
    if fold_in is not None:
        spec, gram = fold_in
        if spec.method == "als":
            if gram is None:
                raise ValueError("the als fold-in needs the item Gram matrix")
            with (folder / ITEM_GRAM_FILE).open("wb") as handle:
                np.save(handle, np.ascontiguousarray(gram, dtype=np.float64))
            names.append(ITEM_GRAM_FILE)
        part = FoldInPart(
            family=spec.family,
            method=spec.method,
            regularization=spec.regularization,
            alpha=spec.alpha,
            default_weight=spec.default_weight,
            bias_last=spec.bias_last,
            gram_file=ITEM_GRAM_FILE if spec.method == "als" else None,
        )
    popular = popular_items(seen)
    if popular:
        write_durably(
            folder / POPULAR_FILE, "".join(f"{item}\t{count}\n" for item, count in popular).encode()
        )
        names.append(POPULAR_FILE)
    return UsersPart(
        directory=USERS_DIR,
        count=len(user_ids),
        seen_pairs=int(indptr[-1]),
        seen_unknown_items=seen_unknown_items,
        files=[_entry(folder, name) for name in names],
        fold_in=part,
    )


class MappedLines:
    """The lines of a text file written one item a line (each ending in a newline), memory-mapped:
    the text stays in the page cache, shared by every router worker of the pod; each process keeps
    only the end offset of each line (4 bytes a line below 4 GiB, instead of a Python string of
    ~60 bytes). Read-only; `lines[a:b]` decodes lines a..b-1."""

    def __init__(self, path: Path) -> None:
        size = path.stat().st_size
        self._text: npt.NDArray[np.uint8] = (
            np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, dtype=np.uint8)
        )
        ends = np.flatnonzero(self._text == ord("\n"))
        self._ends = ends.astype(np.uint32) if size < 2**32 else ends
        self._complete = size == 0 or self._text[-1] == ord("\n")

    def __len__(self) -> int:
        # A last line without its newline is not counted: the indptr check then refuses the file.
        return len(self._ends) + (0 if self._complete else 1)

    def __getitem__(self, span: slice) -> list[str]:
        first, stop, _ = span.indices(len(self._ends))
        if stop <= first:
            return []
        start = 0 if first == 0 else int(self._ends[first - 1]) + 1
        return bytes(self._text[start : int(self._ends[stop - 1])]).decode("utf-8").split("\n")


class SeenItems(Protocol):
    """What the user table needs of the seen item ids: a list, or `MappedLines` of the file."""

    def __len__(self) -> int: ...

    def __getitem__(self, span: slice, /) -> list[str]: ...


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
    seen_items: SeenItems
    fold_in: FoldInModel | None = None  # None: the layout allows no fold-in (built before it)
    # The layout's most-seen items and how many users saw each, most first (empty: none stored).
    popular: tuple[tuple[str, int], ...] = ()

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
    # Memory-mapped, read-only: the vectors and offsets stay in the page cache, shared by every
    # router worker process of the pod (router/workers.py) instead of copied into each one. The
    # files were just verified; layouts are immutable once published.
    vectors = np.load(folder / USER_VECTORS_FILE, allow_pickle=False, mmap_mode="r")
    user_ids = _lines(folder / USER_IDS_FILE)
    indptr = np.load(folder / SEEN_INDPTR_FILE, allow_pickle=False, mmap_mode="r")
    # Memory-mapped too: at 20 seen items per user, a list of strings per worker would be the
    # largest part of a router worker's memory.
    seen_items = MappedLines(folder / SEEN_ITEMS_FILE)
    if vectors.shape != (part.count, manifest.dimension) or len(user_ids) != part.count:
        raise LayoutError(
            f"{folder}: users part holds {vectors.shape} vectors and {len(user_ids)} ids, "
            f"expected {part.count} x {manifest.dimension}"
        )
    if indptr.shape != (part.count + 1,) or int(indptr[-1]) != len(seen_items):
        raise LayoutError(f"{folder / SEEN_INDPTR_FILE}: does not match {SEEN_ITEMS_FILE}")
    fold_in = _load_fold_in(part, folder, manifest.dimension)
    return UserTable(
        manifest.version,
        manifest.layout,
        manifest.dimension,
        vectors,
        user_ids,
        {user_id: i for i, user_id in enumerate(user_ids)},
        indptr,
        seen_items,
        fold_in,
        _popular(folder, part),
    )


def _load_fold_in(users: UsersPart, folder: Path, dimension: int) -> FoldInModel | None:
    part = users.fold_in
    if part is None:
        return None
    spec = FoldInSpec(
        part.family, part.method, part.regularization, part.alpha, part.default_weight, part.bias_last
    )
    if part.method != "als":
        return FoldInModel(spec)
    if part.gram_file is None or part.gram_file not in {entry.name for entry in users.files}:
        raise LayoutError(f"{folder}: the als fold-in names no verified Gram matrix file")
    gram = np.load(folder / part.gram_file, allow_pickle=False)
    if gram.shape != (dimension, dimension) or gram.dtype != np.float64:
        raise LayoutError(
            f"{folder / part.gram_file}: Gram matrix is {gram.dtype} {gram.shape}, expected float64 "
            f"({dimension}, {dimension})"
        )
    gram.setflags(write=False)
    return FoldInModel(spec, gram)


def _popular(folder: Path, part: UsersPart) -> tuple[tuple[str, int], ...]:
    """The layout's popular list (verified with the part's other files), or () when it has none."""
    if POPULAR_FILE not in {entry.name for entry in part.files}:
        return ()
    pairs = []
    for line in _lines(folder / POPULAR_FILE):
        item, _, count = line.partition("\t")
        if not item or not count.isdigit():
            raise LayoutError(f"{folder / POPULAR_FILE}: not 'item<TAB>count': {line[:80]!r}")
        pairs.append((item, int(count)))
    return tuple(pairs)
