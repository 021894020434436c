"""Seeded synthetic embeddings (clustered, like real item embeddings) for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shardrec.serving.index.embeddings import ITEM_IDS_FILE, ITEMS_FILE, SEEN_FILE, USER_IDS_FILE, USERS_FILE

Floats = npt.NDArray[np.float32]


def clustered(
    count: int, dimension: int, *, clusters: int = 100, spread: float = 0.35, seed: int = 0
) -> Floats:
    """`count` vectors around `clusters` random centres (Gaussian noise of relative size `spread`)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dimension)).astype(np.float32)
    members = rng.integers(0, clusters, size=count)
    noise = rng.normal(scale=spread, size=(count, dimension)).astype(np.float32)
    vectors: Floats = (centres[members] + noise).astype(np.float32)
    return vectors


def write_embeddings_dir(
    directory: Path,
    items: Floats,
    item_ids: Sequence[str],
    *,
    users: Floats | None = None,
    user_ids: Sequence[str] | None = None,
    seen: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write an embeddings directory in the documented format (docs/embeddings-format.md)."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / ITEMS_FILE, items)
    (directory / ITEM_IDS_FILE).write_text("".join(f"{i}\n" for i in item_ids), encoding="utf-8")
    if users is not None and user_ids is not None:
        np.save(directory / USERS_FILE, users)
        (directory / USER_IDS_FILE).write_text("".join(f"{u}\n" for u in user_ids), encoding="utf-8")
    if seen:
        (directory / SEEN_FILE).write_text("".join(f"{u}\t{i}\n" for u, i in seen), encoding="utf-8")
    return directory
