"""Garbage collection of carry folders on the index store: `delete_carry_folders` (what the
artifact garbage-collection Job of a deleted layout runs, `recctl index delete --carry-store`)
removes that layout's carry folder and every carry-back folder naming it, nothing else, with
`carry.json` first so no reader ever takes a half-deleted folder for a complete one."""

from __future__ import annotations

from pathlib import Path

from shardrec.api.commands import index_delete_arguments
from shardrec.serving.carry.store import delete_carry_folders
from shardrec.serving.storage.stores import FileStore
from shardrec.tools.cli.main import main

KEYS = (
    "carry/L1/carry.json",
    "carry/L1/shard-0000.log",
    "carry/L1/prior.log",
    "carry/L1/forwarded.json",
    "carry/L2/carry.json",
    "carry/L2/shard-0000.log",
    "carry-back/L1/L2/forwarded.json",  # back into L1 from L2
    "carry-back/L2/L1/forwarded.json",  # back into L2 from L1
    "carry-back/L3/L2/forwarded.json",  # another pair: stays
    "carry-back/L3/L10/forwarded.json",  # a layout id that starts like L1: stays
    "layouts/L1/layout.json",
)


def _store(root: Path) -> FileStore:
    store = FileStore(root)
    for key in KEYS:
        store.write_bytes(key, b"{}")
    return store


class RecordingStore(FileStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.deleted: list[str] = []

    def delete(self, keys: list[str]) -> None:
        self.deleted.extend(keys)
        super().delete(keys)


def test_a_deleted_layouts_carry_folder_and_every_carry_back_naming_it_go_and_nothing_else(
    tmp_path: Path,
) -> None:
    _store(tmp_path)
    store = RecordingStore(tmp_path)
    count = delete_carry_folders(store, "L1")
    assert count == 6
    assert store.list_keys("") == sorted(
        [
            "carry/L2/carry.json",
            "carry/L2/shard-0000.log",
            "carry-back/L3/L2/forwarded.json",
            "carry-back/L3/L10/forwarded.json",
            "layouts/L1/layout.json",  # the layout's own artifacts are recctl index delete's
        ]
    )
    assert store.deleted[0] == "carry/L1/carry.json", "the marker of a complete folder goes first"
    assert not (tmp_path / "carry" / "L1").exists() and not (tmp_path / "carry-back" / "L1").exists()


def test_nothing_to_delete_is_fine(tmp_path: Path) -> None:
    assert delete_carry_folders(FileStore(tmp_path), "L9") == 0


def test_recctl_index_delete_with_a_carry_store_deletes_the_layout_and_its_carry_folders(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    arguments = index_delete_arguments(
        store=str(tmp_path / "layouts"), layout="L1", carry_store=str(tmp_path)
    )
    assert main(arguments) == 0
    assert not [key for key in store.list_keys("") if "/L1/" in key or key.startswith("carry-back/L1/")]
    assert "carry/L2/carry.json" in store.list_keys("")
    plain = index_delete_arguments(store=str(tmp_path / "layouts"), layout="L2")
    assert "--carry-store" not in plain
    assert main(plain) == 0
    assert "carry/L2/carry.json" in store.list_keys(""), "without --carry-store only the layout goes"
