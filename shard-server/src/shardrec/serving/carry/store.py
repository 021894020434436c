"""A carry folder on the index store: a local path (the store's PVC) or an S3 prefix.

The folder is the one `serving/index/carry.py` defines (`carry.json`, `prior.log`, one
`shard-NNNN.log` per old shard), plus the carrier's progress, `forwarded.json`. It becomes visible
complete: on a path, `write_carry` publishes `carry.json` last and atomically; on an object store,
every other file is uploaded first and `carry.json` last (as layouts publish `layout.json` last), so
a reader that finds `carry.json` finds the whole folder. `fetch_carry` is that reader: the build
Job of a carrying layout (`recctl index build --carry-dir s3://...`) and a carrier that folds in
the old layout's own carry folder (`prior_carry`) download it and check it is complete.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shardrec.api.carry import CARRY_BACK_FOLDERS, CARRY_FOLDERS
from shardrec.serving.index.carry import (
    CARRY_FILE,
    PRIOR_FILE,
    PROGRESS_FILE,
    Cut,
    ItemState,
    carried_state,
    log_file_name,
    read_carry,
    write_carry,
)
from shardrec.serving.index.write_log import WriteLogError, WriteRecord
from shardrec.serving.storage.errors import ObjectMissingError, StoreError
from shardrec.serving.storage.stores import FileStore, ObjectStore, S3Settings, open_store, settings_from_env
from shardrec.serving.storage.urls import S3Location, parse_location


class CarryFolderError(Exception):
    """A carry folder that is missing, incomplete or does not read back."""


def open_carry_store(location: str, settings: S3Settings | None = None) -> tuple[ObjectStore, Path | None]:
    """The store whose root is the carry folder at `location`, and the folder's path when local."""
    parsed = parse_location(location)
    if isinstance(parsed, S3Location):
        return open_store(parsed, settings or settings_from_env()), None
    return FileStore(parsed), parsed


def fetch_carry(location: str, dest: Path, settings: S3Settings | None = None) -> Path:
    """The carry folder at `location` as a local folder: a path is read in place, an s3:// folder
    is downloaded into `dest`. Either way it is checked complete (`carry.json` present, every old
    shard's log ending at the cut, `prior.log` present). Raises CarryFolderError."""
    store, local = open_carry_store(location, settings)
    folder = local if local is not None else dest
    try:
        if local is None:
            # carry.json first: it is written last, so once it is here every other file is too.
            dest.mkdir(parents=True, exist_ok=True)
            store.download(CARRY_FILE, dest / CARRY_FILE)
            cut = Cut.from_dict(json.loads((dest / CARRY_FILE).read_text(encoding="utf-8")))
            for name in [PRIOR_FILE, *(log_file_name(s) for s in range(cut.from_shards))]:
                store.download(name, dest / name)
        if not (folder / CARRY_FILE).exists():
            raise CarryFolderError(f"{location}: no {CARRY_FILE}: not a complete carry folder")
        if not (folder / PRIOR_FILE).exists():
            raise CarryFolderError(f"{store.describe(PRIOR_FILE)}: missing")
        read_carry(folder)
    except ObjectMissingError as exc:
        raise CarryFolderError(f"{location}: not a complete carry folder ({exc})") from exc
    except (StoreError, WriteLogError, OSError, ValueError) as exc:
        raise CarryFolderError(f"{location}: {exc}") from exc
    return folder


def prior_state(location: str | None, settings: S3Settings | None = None) -> ItemState:
    """What the old layout's own carry folder at `location` leaves per item ({} without one)."""
    if location is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="shardrec-prior-carry-") as scratch:
        folder = fetch_carry(location, Path(scratch) / "prior", settings)
        try:
            return carried_state(folder)[1]
        except WriteLogError as exc:
            raise CarryFolderError(f"{location}: {exc}") from exc


class CarryStore:
    """One carrying layout's folder on the store: the carry (written once) and the progress."""

    def __init__(self, location: str, settings: S3Settings | None = None) -> None:
        self.location = location
        self.settings = settings
        self._store, self._local = open_carry_store(location, settings)

    def describe(self, key: str = "") -> str:
        return self._store.describe(key)

    def has_carry(self) -> bool:
        """Whether the folder is complete (`carry.json`, written last, is there)."""
        try:
            self._store.read_bytes(CARRY_FILE)
        except ObjectMissingError:
            return False
        return True

    def read_cut(self) -> Cut:
        try:
            return Cut.from_dict(json.loads(self._store.read_bytes(CARRY_FILE)))
        except (ValueError, WriteLogError) as exc:
            raise CarryFolderError(f"{self.describe(CARRY_FILE)}: {exc}") from exc

    def write_carry(
        self,
        cut: Cut,
        logs: Mapping[int, Sequence[WriteRecord]],
        prior: ItemState,
        progress: Mapping[str, Any],
    ) -> None:
        """The carry folder with its first progress: `forwarded.json` before `carry.json`, so a
        complete folder always has a progress to resume from."""
        if self._local is not None:
            self.write_progress(progress)
            write_carry(self._local, cut, logs, prior)
            return
        with tempfile.TemporaryDirectory(prefix="shardrec-carry-") as scratch:
            folder = Path(scratch)
            write_carry(folder, cut, logs, prior)
            names = [PRIOR_FILE, *(log_file_name(s) for s in range(cut.from_shards))]
            for name in names:
                self._store.upload(name, folder / name)
            self.write_progress(progress)
            self._store.upload(CARRY_FILE, folder / CARRY_FILE)

    def read_progress(self) -> dict[str, Any] | None:
        try:
            data = self._store.read_bytes(PROGRESS_FILE)
        except ObjectMissingError:
            return None
        try:
            parsed: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise CarryFolderError(f"{self.describe(PROGRESS_FILE)}: {exc}") from exc
        return parsed

    def write_progress(self, progress: Mapping[str, Any]) -> None:
        """Durably (a path: written to a temporary file, fsynced, renamed; S3: one PUT)."""
        self._store.write_bytes(
            PROGRESS_FILE, (json.dumps(progress, indent=2, sort_keys=True) + "\n").encode()
        )


def delete_carry_folders(store: ObjectStore, layout_id: str) -> int:
    """Delete, from `store` (a cluster's folder: the parent of `carry/` and `carry-back/`), the
    carry folder of `layout_id` and every carry-back folder naming it (into it, or from it).
    Returns how many objects were deleted.

    Called once the layout's artifacts are deleted (`recctl index delete --carry-store`): when
    nothing of it is needed any more (`shardrec.planning.retention.carry_folders_needed`). Each
    folder's `carry.json` goes first, as `delete_layout` deletes `layout.json` first: a reader
    (`fetch_carry`, a carrier resuming) that finds it finds the whole folder, so a deletion cut
    short leaves a folder that reads as incomplete, never one that reads as complete."""
    own = store.list_keys(f"{CARRY_FOLDERS}/{layout_id}/")
    back = [
        key
        for key in store.list_keys(f"{CARRY_BACK_FOLDERS}/")
        if layout_id in key.split("/")[1:3]  # carry-back/<to>/<from>/<file>
    ]
    keys = own + back
    markers = [key for key in keys if key.rsplit("/", 1)[-1] == CARRY_FILE]
    rest = [key for key in keys if key not in markers]
    if markers:
        store.delete(markers)
    for start in range(0, len(rest), 1000):
        store.delete(rest[start : start + 1000])
    return len(keys)
