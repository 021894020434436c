"""The interaction table (who touched what, how strongly, when) and the generic CSV loader.

The generic format is a CSV with the header `user,item,rating,timestamp`: ids are free text
(no tab, CR or LF, since they end up one per line in the embeddings directory), `rating` is a
positive number used as implicit-feedback strength, `timestamp` an integer (seconds) that orders
each user's history for the leave-last-out evaluation.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

GENERIC_COLUMNS: tuple[str, ...] = ("user", "item", "rating", "timestamp")
_FORBIDDEN_ID_CHARS = ("\t", "\r", "\n")


class InteractionsError(ValueError):
    """The interactions file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Interactions:
    """Parallel arrays, one entry per interaction, in file order."""

    users: npt.NDArray[np.str_]
    items: npt.NDArray[np.str_]
    ratings: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        sizes = {len(self.users), len(self.items), len(self.ratings), len(self.timestamps)}
        if len(sizes) != 1:
            raise ValueError(f"interaction arrays differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.users)

    def take(self, selector: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Interactions:
        return Interactions(
            users=self.users[selector],
            items=self.items[selector],
            ratings=self.ratings[selector],
            timestamps=self.timestamps[selector],
        )

    @property
    def user_count(self) -> int:
        return len(np.unique(self.users))

    @property
    def item_count(self) -> int:
        return len(np.unique(self.items))


def keep_latest_per_pair(interactions: Interactions) -> Interactions:
    """One interaction per (user, item): the latest wins (ties: the later row).

    Without this a repeated pair could sit on both sides of a time split and leak the answer.
    """
    if len(interactions) == 0:
        return interactions
    _, user_codes = np.unique(interactions.users, return_inverse=True)
    item_values, item_codes = np.unique(interactions.items, return_inverse=True)
    pair = user_codes.astype(np.int64) * len(item_values) + item_codes
    rows = np.arange(len(interactions))
    order = np.lexsort((rows, interactions.timestamps, pair))
    sorted_pairs = pair[order]
    is_last = np.ones(len(order), dtype=bool)
    is_last[:-1] = sorted_pairs[1:] != sorted_pairs[:-1]
    if bool(is_last.all()):
        return interactions
    return interactions.take(np.sort(order[is_last]))


def _check_id(value: str, column: str, where: str) -> str:
    value = value.strip()
    if not value:
        raise InteractionsError(f"{where}: empty {column}")
    if any(char in value for char in _FORBIDDEN_ID_CHARS):
        raise InteractionsError(f"{where}: {column} {value!r} contains a tab, CR or LF")
    return value


def read_interactions_csv(path: Path, columns: Sequence[str] = GENERIC_COLUMNS) -> Interactions:
    """Parse a CSV whose header is exactly `columns` (user, item, rating, timestamp roles, in order).

    Every error names the file and line. Repeated (user, item) pairs keep their latest row.
    """
    if not path.is_file():
        raise InteractionsError(f"{path}: no such file")
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    timestamps: list[int] = []
    user_col, item_col, rating_col, time_col = columns
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise InteractionsError(f"{path}: empty file, expected header {','.join(columns)}")
        if [name.strip() for name in header] != list(columns):
            raise InteractionsError(
                f"{path}:1: header is {','.join(header)!r}, expected {','.join(columns)!r}"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(columns):
                raise InteractionsError(
                    f"{where}: expected {len(columns)} fields ({','.join(columns)}), got {len(row)}"
                )
            users.append(_check_id(row[0], user_col, where))
            items.append(_check_id(row[1], item_col, where))
            ratings.append(_parse_rating(row[2], rating_col, where))
            timestamps.append(_parse_timestamp(row[3], time_col, where))
    if not users:
        raise InteractionsError(f"{path}: no interactions after the header")
    table = Interactions(
        users=np.array(users, dtype=np.str_),
        items=np.array(items, dtype=np.str_),
        ratings=np.array(ratings, dtype=np.float32),
        timestamps=np.array(timestamps, dtype=np.int64),
    )
    return keep_latest_per_pair(table)


def _parse_rating(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InteractionsError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise InteractionsError(f"{where}: {column} {text!r} must be a positive finite number")
    return value


def _parse_timestamp(text: str, column: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InteractionsError(f"{where}: {column} {text!r} is not an integer (seconds)") from None
