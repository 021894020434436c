"""Read and verify a layout artifact folder.

A folder without a valid `layout.json` is "not built" (a build publishes it last). Everything a
reader relies on is cross-checked: shard numbering, each shard manifest's sha256 as recorded in
layout.json, the dimension / metric / version / counts the shard manifests state, and (on request)
the sha256 and size of every data file. Errors name the file and what differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from shardrec.api.errors import describe_errors
from shardrec.serving.index.files import sha256_file
from shardrec.serving.index.manifest import (
    LAYOUT_FILE,
    SHARD_MANIFEST_FILE,
    FileEntry,
    LayoutManifest,
    ShardManifest,
    shard_dir_name,
)

_M = TypeVar("_M", LayoutManifest, ShardManifest)


class LayoutError(ValueError):
    """The layout folder is not built, corrupt, or does not match what the reader expects."""


def _read_json_model(path: Path, model: type[_M]) -> _M:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise LayoutError(f"{path}: file missing") from exc
    try:
        return model.model_validate(json.loads(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{path}: not valid JSON ({exc}); the layout may be half-written") from exc
    except ValidationError as exc:
        problems = describe_errors(exc.errors())
        raise LayoutError(f"{path}: invalid {model.__name__}: {problems}") from exc


def verify_file(folder: Path, entry: FileEntry) -> None:
    """Size then sha256 of one artifact file against its manifest entry."""
    path = folder / entry.name
    if not path.is_file():
        raise LayoutError(f"{path}: file missing")
    size = path.stat().st_size
    if size != entry.bytes:
        raise LayoutError(f"{path}: size {size} bytes differs from the manifest ({entry.bytes})")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise LayoutError(f"{path}: sha256 mismatch: manifest says {entry.sha256}, file has {digest}")


def _check_shard_numbering(path: Path, manifest: LayoutManifest) -> None:
    numbers = [entry.shard for entry in manifest.shard_entries]
    if numbers != list(range(manifest.shards)):
        raise LayoutError(
            f"{path}: shard numbering must be 0..{manifest.shards - 1} in order "
            f"(shards={manifest.shards}), got {numbers}"
        )
    for entry in manifest.shard_entries:
        if entry.directory != shard_dir_name(entry.shard):
            raise LayoutError(
                f"{path}: shard {entry.shard} must live in {shard_dir_name(entry.shard)}, "
                f"not {entry.directory!r}"
            )
    total = sum(entry.count for entry in manifest.shard_entries)
    if total != manifest.item_count:
        raise LayoutError(f"{path}: shard counts add up to {total}, not item_count {manifest.item_count}")


def read_shard_manifest(
    layout_dir: Path, layout: LayoutManifest, shard: int, *, verify_files: bool = True
) -> ShardManifest:
    """The manifest of shard `shard`, checked against layout.json (and its files, if asked)."""
    if not 0 <= shard < layout.shards:
        raise LayoutError(
            f"{layout_dir / LAYOUT_FILE}: shard {shard} does not exist: the layout has shards "
            f"0..{layout.shards - 1}"
        )
    entry = layout.shard_entries[shard]
    folder = layout_dir / entry.directory
    path = folder / SHARD_MANIFEST_FILE
    if not path.is_file():
        raise LayoutError(f"{path}: file missing")
    digest = sha256_file(path)
    if digest != entry.manifest_sha256:
        raise LayoutError(
            f"{path}: sha256 mismatch: {LAYOUT_FILE} says {entry.manifest_sha256}, file has {digest}"
        )
    manifest = _read_json_model(path, ShardManifest)
    expected = {
        "layout": layout.layout,
        "version": layout.version,
        "shard": shard,
        "shards": layout.shards,
        "dimension": layout.dimension,
        "metric": layout.metric,
        "hnsw": layout.hnsw,
        "count": entry.count,
    }
    for field, want in expected.items():
        got = getattr(manifest, field)
        if got != want:
            raise LayoutError(f"{path}: {field} {got!r} differs from {LAYOUT_FILE} ({want!r})")
    if verify_files:
        for file_entry in manifest.files:
            verify_file(folder, file_entry)
    return manifest


def read_layout_manifest(
    layout_dir: Path, *, verify_shards: bool = True, verify_files: bool = False
) -> LayoutManifest:
    """Verify and return layout.json. Shard manifests are checked by default; data-file checksums
    (which reads every byte) only when `verify_files` is set, as `recctl index verify` does."""
    if not layout_dir.is_dir():
        raise LayoutError(f"{layout_dir}: layout folder not found")
    path = layout_dir / LAYOUT_FILE
    if not path.is_file():
        raise LayoutError(f"{path}: file missing: the layout is not built (or its build did not finish)")
    manifest = _read_json_model(path, LayoutManifest)
    _check_shard_numbering(path, manifest)
    if verify_shards:
        for shard in range(manifest.shards):
            read_shard_manifest(layout_dir, manifest, shard, verify_files=verify_files)
    if manifest.users is not None and verify_files:
        for entry in manifest.users.files:
            verify_file(layout_dir / manifest.users.directory, entry)
    return manifest


def verify_layout(layout_dir: Path) -> LayoutManifest:
    """Everything: manifests, numbering, and the sha256 of every file."""
    return read_layout_manifest(layout_dir, verify_shards=True, verify_files=True)


@dataclass(frozen=True)
class WantedLayout:
    """What a build asks for; an existing layout is reused only when it says the same."""

    layout: str
    version: str
    shards: int
    metric: str
    m: int
    ef_construction: int
    dimension: int | None = None


def parameter_mismatches(manifest: LayoutManifest, wanted: WantedLayout) -> list[str]:
    """The fields of `manifest` that differ from `wanted`, described (empty: it can be reused)."""
    pairs: dict[str, tuple[object, object]] = {
        "layout": (manifest.layout, wanted.layout),
        "version": (manifest.version, wanted.version),
        "shards": (manifest.shards, wanted.shards),
        "metric": (manifest.metric, wanted.metric),
        "m": (manifest.hnsw.m, wanted.m),
        "ef_construction": (manifest.hnsw.ef_construction, wanted.ef_construction),
    }
    if wanted.dimension is not None:
        pairs["dimension"] = (manifest.dimension, wanted.dimension)
    return [f"{name} {have!r} (wanted {want!r})" for name, (have, want) in pairs.items() if have != want]
