"""File helpers for artifacts: sha256, durable writes, atomic publish."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: Path, data: bytes) -> None:
    """Write and fsync `path` (not atomic by itself: callers publish with `publish_atomically`)."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def publish_atomically(path: Path, data: bytes) -> None:
    """Write `path` so a reader sees either nothing or all of it: temp file, fsync, rename, fsync dir."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_durably(temporary, data)
    temporary.replace(path)
    fsync_dir(path.parent)
