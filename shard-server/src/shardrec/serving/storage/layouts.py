"""Layouts in a store: publish (manifest last), reuse check, fetch one part, delete (manifest first), list.

A store holds each layout at `<layout-id>/...` with the file names of a layout folder (manifest.py).
`layout.json` is written after every other object and deleted before them, so a layout whose
layout.json exists is complete; every reader still checks each sha256 against the manifests.
The plans (which keys, in which order) are pure functions; the rest is thin I/O over ObjectStore.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from shardrec.serving.index.files import fsync_dir, sha256_file
from shardrec.serving.index.layout import (
    WantedLayout,
    parameter_mismatches,
    read_layout_manifest,
    verify_layout,
)
from shardrec.serving.index.manifest import (
    LAYOUT_FILE,
    SHARD_MANIFEST_FILE,
    LayoutManifest,
    ShardEntry,
    ShardManifest,
    shard_dir_name,
)
from shardrec.serving.index.users import UserTable, load_user_table
from shardrec.serving.storage.errors import ChecksumMismatchError, ObjectMissingError, StoreError
from shardrec.serving.storage.stores import ObjectStore, S3Settings, open_store, settings_from_env
from shardrec.serving.storage.urls import S3Location, join_key, parse_location


@dataclass(frozen=True)
class Transfer:
    """One object of a layout: its path inside the layout and what its bytes must hash to."""

    path: str
    sha256: str
    size: int | None = None


def shard_transfers(manifest: LayoutManifest, shard_manifest: ShardManifest) -> list[Transfer]:
    """A shard's objects: its data files, then its manifest. Pure."""
    entry = manifest.shard_entries[shard_manifest.shard]
    files = [Transfer(f"{entry.directory}/{f.name}", f.sha256, f.bytes) for f in shard_manifest.files]
    return [*files, Transfer(f"{entry.directory}/{SHARD_MANIFEST_FILE}", entry.manifest_sha256)]


def router_transfers(manifest: LayoutManifest) -> list[Transfer]:
    """What the router loads besides layout.json: the users part (load_user_table). Pure."""
    if manifest.users is None:
        return []
    folder = manifest.users.directory
    return [Transfer(f"{folder}/{f.name}", f.sha256, f.bytes) for f in manifest.users.files]


def parse_manifest(data: bytes, where: str) -> LayoutManifest:
    try:
        return LayoutManifest.model_validate(json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise StoreError(f"{where}: not a valid {LAYOUT_FILE}: {str(exc).splitlines()[0]}") from exc


def _parse_shard_manifest(data: bytes, where: str) -> ShardManifest:
    try:
        return ShardManifest.model_validate(json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise StoreError(f"{where}: not a valid {SHARD_MANIFEST_FILE}: {str(exc).splitlines()[0]}") from exc


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- publish -------------------------------------------------------------------------------------------


def publish_layout(
    local_dir: Path, store: ObjectStore, layout_id: str, *, log: Callable[[str], None] = print
) -> None:
    """Upload a built layout folder: each shard's files, the users part, then layout.json LAST.

    Objects left by an upload that never finished (no layout.json) are deleted first, so a retry
    with other parameters leaves no stray shard behind; a complete layout is never overwritten."""
    manifest = verify_layout(local_dir)
    leftovers = store.list_keys(layout_id + "/")
    if join_key(layout_id, LAYOUT_FILE) in leftovers:
        raise StoreError(
            f"{store.describe(layout_id)}: already holds a complete layout; it is not overwritten"
        )
    if leftovers:
        store.delete(leftovers)
        log(f"deleted {len(leftovers)} objects of an unfinished upload under {store.describe(layout_id)}")
    for shard in range(manifest.shards):
        entry = manifest.shard_entries[shard]
        shard_manifest = _parse_shard_manifest(
            (local_dir / entry.directory / SHARD_MANIFEST_FILE).read_bytes(), str(local_dir / entry.directory)
        )
        for transfer in shard_transfers(manifest, shard_manifest):
            store.upload(join_key(layout_id, transfer.path), local_dir / transfer.path)
        log(f"uploaded shard {shard} to {store.describe(join_key(layout_id, entry.directory))}")
    for transfer in router_transfers(manifest):
        store.upload(join_key(layout_id, transfer.path), local_dir / transfer.path)
    store.upload(join_key(layout_id, LAYOUT_FILE), local_dir / LAYOUT_FILE)
    log(f"published {store.describe(join_key(layout_id, LAYOUT_FILE))}")


# --- read ----------------------------------------------------------------------------------------------


def read_manifest(store: ObjectStore, layout_id: str) -> LayoutManifest:
    """layout.json of `layout_id` (ObjectMissingError: not built, or not finished)."""
    key = join_key(layout_id, LAYOUT_FILE)
    return parse_manifest(store.read_bytes(key), store.describe(key))


def _checked_shard_manifest(
    store: ObjectStore, manifest: LayoutManifest, layout_id: str, shard: int
) -> ShardManifest:
    entry = manifest.shard_entries[shard]
    key = join_key(layout_id, entry.directory, SHARD_MANIFEST_FILE)
    data = store.read_bytes(key)
    if _sha(data) != entry.manifest_sha256:
        raise ChecksumMismatchError(
            f"{store.describe(key)}: sha256 mismatch: {LAYOUT_FILE} says {entry.manifest_sha256}, "
            f"object has {_sha(data)}"
        )
    return _parse_shard_manifest(data, store.describe(key))


def verify_stored_layout(store: ObjectStore, layout_id: str) -> LayoutManifest:
    """layout.json, every shard manifest and the sha256 of every object (read through, not kept)."""
    manifest = read_manifest(store, layout_id)
    transfers: list[Transfer] = []
    for shard in range(manifest.shards):
        transfers += shard_transfers(manifest, _checked_shard_manifest(store, manifest, layout_id, shard))
    for transfer in transfers + router_transfers(manifest):
        key = join_key(layout_id, transfer.path)
        size, digest = store.sha256(key)
        _check(store.describe(key), transfer, size, digest)
    return manifest


def _check(where: str, transfer: Transfer, size: int, digest: str) -> None:
    if transfer.size is not None and size != transfer.size:
        raise ChecksumMismatchError(f"{where}: size {size} bytes differs from the manifest ({transfer.size})")
    if digest != transfer.sha256:
        raise ChecksumMismatchError(
            f"{where}: sha256 mismatch: manifest says {transfer.sha256}, object has {digest}"
        )


def reusable_stored_layout(store: ObjectStore, layout_id: str, wanted: WantedLayout) -> LayoutManifest | None:
    """The stored layout if it is complete, verifies and matches `wanted`; None when there is none.

    A layout that exists but differs or does not verify is an error: versions are immutable."""
    try:
        manifest = read_manifest(store, layout_id)
    except ObjectMissingError:
        return None
    where = store.describe(join_key(layout_id, LAYOUT_FILE))
    mismatches = parameter_mismatches(manifest, wanted)
    if mismatches:
        raise StoreError(
            f"{where}: a different layout is already stored here ({'; '.join(mismatches)}); "
            "versions are immutable, pick a new --out"
        )
    try:
        return verify_stored_layout(store, layout_id)
    except (ObjectMissingError, ChecksumMismatchError) as exc:
        raise StoreError(
            f"{exc} (while checking the stored layout for reuse; "
            "delete it with `recctl index delete` to rebuild)"
        ) from exc


# --- fetch ---------------------------------------------------------------------------------------------


def _fetch_one(store: ObjectStore, layout_id: str, transfer: Transfer, dest_dir: Path) -> None:
    key = join_key(layout_id, transfer.path)
    target = dest_dir / transfer.path
    target.parent.mkdir(parents=True, exist_ok=True)
    # Already fetched (an init container that restarted): keep it if it verifies.
    if target.is_file() and sha256_file(target) == transfer.sha256:
        return
    temporary = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        digest = store.download(key, temporary)
        size = temporary.stat().st_size
        _check(store.describe(key), transfer, size, digest)
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


def _fetch(
    store: ObjectStore, layout_id: str, dest_dir: Path, pick: Callable[[LayoutManifest], list[Transfer]]
) -> LayoutManifest:
    manifest_key = join_key(layout_id, LAYOUT_FILE)
    raw = store.read_bytes(manifest_key)
    manifest = parse_manifest(raw, store.describe(manifest_key))
    dest_dir.mkdir(parents=True, exist_ok=True)
    for transfer in pick(manifest):
        _fetch_one(store, layout_id, transfer, dest_dir)
    # layout.json last, atomically: its presence in dest_dir means the part is complete.
    temporary = dest_dir / f".{LAYOUT_FILE}.part-{os.getpid()}"
    temporary.write_bytes(raw)
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    temporary.replace(dest_dir / LAYOUT_FILE)
    for folder in {dest_dir, *(p.parent for p in dest_dir.rglob("*") if p.is_file())}:
        fsync_dir(folder)
    return manifest


def fetch_shard(store: ObjectStore, layout_id: str, shard: int, dest_dir: Path) -> LayoutManifest:
    """Copy layout.json and shard `shard`'s files into dest_dir, each verified; then check it loads."""

    def pick(manifest: LayoutManifest) -> list[Transfer]:
        if not 0 <= shard < manifest.shards:
            raise StoreError(
                f"{store.describe(layout_id)}: shard {shard} does not exist: the layout has shards "
                f"0..{manifest.shards - 1}"
            )
        return shard_transfers(manifest, _checked_shard_manifest(store, manifest, layout_id, shard))

    manifest = _fetch(store, layout_id, dest_dir, pick)
    read_layout_manifest(dest_dir, verify_shards=False)
    return manifest


def fetch_router(store: ObjectStore, layout_id: str, dest_dir: Path) -> LayoutManifest:
    """Copy layout.json and the users part (what the router loads) into dest_dir, verified."""
    return _fetch(store, layout_id, dest_dir, router_transfers)


# --- delete and list -----------------------------------------------------------------------------------


def delete_layout(store: ObjectStore, layout_id: str) -> int:
    """Delete layout.json FIRST (the layout stops looking complete), then every other object. Returns
    how many objects were deleted."""
    keys = store.list_keys(layout_id + "/")
    manifest_key = join_key(layout_id, LAYOUT_FILE)
    if manifest_key in keys:
        store.delete([manifest_key])
    rest = [key for key in keys if key != manifest_key]
    for start in range(0, len(rest), 1000):
        store.delete(rest[start : start + 1000])
    return len(keys)


@dataclass(frozen=True)
class StoredLayout:
    layout: str
    complete: bool
    created: str | None
    version: str | None
    objects: int

    def as_json(self) -> dict[str, object]:
        return {
            "layout": self.layout,
            "complete": self.complete,
            "created": self.created,
            "version": self.version,
            "objects": self.objects,
        }


def list_layouts(store: ObjectStore) -> list[StoredLayout]:
    """Every layout id in the store; complete when its layout.json reads (its built_at is `created`)."""
    by_layout: dict[str, int] = {}
    for key in store.list_keys(""):
        head, sep, _ = key.partition("/")
        if sep and not head.startswith("."):
            by_layout[head] = by_layout.get(head, 0) + 1
    result = []
    for layout_id in sorted(by_layout):
        try:
            manifest = read_manifest(store, layout_id)
        except ObjectMissingError:
            result.append(StoredLayout(layout_id, False, None, None, by_layout[layout_id]))
            continue
        result.append(
            StoredLayout(layout_id, True, manifest.built_at, manifest.version, by_layout[layout_id])
        )
    return result


def load_artifact_users(
    artifact_dir: str, *, cache_root: Path | None = None, settings: S3Settings | None = None
) -> UserTable:
    """The user table of a layout named by the router's topology: a local folder, or an s3:// layout
    URL whose router part is first fetched (verified) into `cache_root/<layout-id>` (default
    $SHARDREC_ROUTER_CACHE_DIR, else <tmp>/shardrec-router-layouts), connection from SHARDREC_S3_*.
    The router calls it for every staged layout, so it follows layouts built after it started."""
    location = parse_location(artifact_dir)
    if not isinstance(location, S3Location):
        return load_user_table(location)
    store_location, layout_id = location.parent_and_name()
    dest = _router_cache_root(cache_root) / layout_id
    fetch_router(open_store(store_location, settings or settings_from_env()), layout_id, dest)
    return load_user_table(dest)


def _router_cache_root(cache_root: Path | None) -> Path:
    return cache_root or Path(
        os.environ.get("SHARDREC_ROUTER_CACHE_DIR") or Path(tempfile.gettempdir()) / "shardrec-router-layouts"
    )


def forget_artifact_users(artifact_dir: str, *, cache_root: Path | None = None) -> bool:
    """Remove the router's cached copy of an s3:// layout's user table (what `load_artifact_users`
    fetched into `cache_root/<layout-id>`). A local layout folder is the store itself: never touched.
    Returns whether a copy was removed. The router calls it for layouts it loaded that neither serve
    nor are staged any more; the table it loaded is in memory, so a retiring snapshot is unaffected."""
    location = parse_location(artifact_dir)
    if not isinstance(location, S3Location):
        return False
    _, layout_id = location.parent_and_name()
    folder = _router_cache_root(cache_root) / layout_id
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    return True


# --- a build per shard, then publish -------------------------------------------------------------------


def shard_part_mismatches(part: ShardManifest, expected: dict[str, object], count: int) -> list[str]:
    """How a stored shard manifest differs from what this layout's shard must be (empty: it belongs).
    `expected` is PartPlan.expected_header; `count` the shard's item count. Pure."""
    pairs = {name: (getattr(part, name), want) for name, want in expected.items()}
    pairs["count"] = (part.count, count)
    return [f"{name} {have!r} (wanted {want!r})" for name, (have, want) in pairs.items() if have != want]


def check_shard_part(
    store: ObjectStore, layout_id: str, expected: dict[str, object], count: int
) -> ShardEntry | str:
    """The layout.json entry of a stored shard part that is complete (its manifest.json, written
    last, exists), belongs to this layout and whose every object verifies (size and sha256);
    otherwise why not, in a few words."""
    shard = int(str(expected["shard"]))
    directory = shard_dir_name(shard)
    key = join_key(layout_id, directory, SHARD_MANIFEST_FILE)
    try:
        data = store.read_bytes(key)
        part = _parse_shard_manifest(data, store.describe(key))
    except ObjectMissingError:
        return "not built"
    except StoreError as exc:
        return str(exc)
    mismatches = shard_part_mismatches(part, expected, count)
    if mismatches:
        return f"built for another layout ({'; '.join(mismatches)})"
    for entry in part.files:
        file_key = join_key(layout_id, directory, entry.name)
        try:
            size, digest = store.sha256(file_key)
            _check(store.describe(file_key), Transfer(entry.name, entry.sha256, entry.bytes), size, digest)
        except (ObjectMissingError, ChecksumMismatchError) as exc:
            return str(exc)
    return ShardEntry(shard=shard, directory=directory, count=count, manifest_sha256=_sha(data))


def upload_shard_part(shard_dir: Path, store: ObjectStore, layout_id: str) -> None:
    """Upload one shard folder (build_shard_part): stale objects of that shard first, then its data
    files, its manifest.json LAST, so a part whose manifest exists is complete. Refuses a complete
    layout (layout.json present): layouts are immutable."""
    if join_key(layout_id, LAYOUT_FILE) in store.list_keys(layout_id + "/"):
        raise StoreError(
            f"{store.describe(layout_id)}: already holds a complete layout; its shards are not replaced"
        )
    prefix = join_key(layout_id, shard_dir.name)
    stale = store.list_keys(prefix + "/")
    manifest_key = join_key(prefix, SHARD_MANIFEST_FILE)
    if stale:
        store.delete(sorted(stale, key=lambda key: key != manifest_key))
    for path in sorted(shard_dir.iterdir()):
        if path.is_file() and path.name != SHARD_MANIFEST_FILE:
            store.upload(join_key(prefix, path.name), path)
    store.upload(manifest_key, shard_dir / SHARD_MANIFEST_FILE)


def publish_parts(store: ObjectStore, layout_id: str, manifest: LayoutManifest, work_dir: Path) -> None:
    """The publish step: upload the users part from `work_dir/users`, then layout.json LAST. The
    caller has checked every shard part (check_shard_part) into `manifest.shard_entries`."""
    for transfer in router_transfers(manifest):
        store.upload(join_key(layout_id, transfer.path), work_dir / transfer.path)
    store.write_bytes(join_key(layout_id, LAYOUT_FILE), manifest.model_dump_json(indent=2).encode())
