from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shardrec.tools.pipeline.interactions import InteractionsError, read_interactions_csv

from .conftest import write_csv


def test_parses_rows_in_file_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "i.csv", ["u1,a,4.5,100", "u2,b,1,50", "u1,c,2.0,200"])
    table = read_interactions_csv(path)
    assert table.users.tolist() == ["u1", "u2", "u1"]
    assert table.items.tolist() == ["a", "b", "c"]
    assert table.ratings.dtype == np.float32
    assert table.ratings.tolist() == [4.5, 1.0, 2.0]
    assert table.timestamps.tolist() == [100, 50, 200]
    assert (table.user_count, table.item_count) == (2, 3)


def test_repeated_pair_keeps_the_latest_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "i.csv", ["u1,a,1,300", "u1,b,2,100", "u1,a,5,200", "u2,a,3,10"])
    table = read_interactions_csv(path)
    pairs = list(zip(table.users.tolist(), table.items.tolist(), table.ratings.tolist(), strict=True))
    # (u1, a) at t=300 is later than t=200, so its rating 1 wins; order stays the file's.
    assert pairs == [("u1", "a", 1.0), ("u1", "b", 2.0), ("u2", "a", 3.0)]


@pytest.mark.parametrize(
    ("header", "rows", "expected"),
    [
        ("userId,movieId,rating,timestamp", ["1,2,3,4"], r"i\.csv:1: header is 'userId,movieId"),
        ("user,item,rating,timestamp", ["u,a,1,1", "u,b,1"], r"i\.csv:3: expected 4 fields"),
        ("user,item,rating,timestamp", ["u,a,high,1"], r"i\.csv:2: rating 'high' is not a number"),
        ("user,item,rating,timestamp", ["u,a,0,1"], r"i\.csv:2: rating '0' must be a positive"),
        ("user,item,rating,timestamp", ["u,a,nan,1"], r"i\.csv:2: rating 'nan' must be a positive"),
        ("user,item,rating,timestamp", ["u,a,1,yesterday"], r"i\.csv:2: timestamp 'yesterday' is not an"),
        ("user,item,rating,timestamp", ["u,a,1,1", ",a,1,1"], r"i\.csv:3: empty user"),
        ("user,item,rating,timestamp", ['u,"a\tb",1,1'], r"i\.csv:2: item 'a\\tb' contains a tab"),
        ("user,item,rating,timestamp", [], r"i\.csv: no interactions after the header"),
    ],
)
def test_rejects_bad_input_naming_file_and_line(
    tmp_path: Path, header: str, rows: list[str], expected: str
) -> None:
    path = write_csv(tmp_path / "i.csv", rows, header=header)
    with pytest.raises(InteractionsError, match=expected):
        read_interactions_csv(path)


def test_empty_and_missing_files_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InteractionsError, match=r"empty\.csv: empty file"):
        read_interactions_csv(empty)
    with pytest.raises(InteractionsError, match=r"nope\.csv: no such file"):
        read_interactions_csv(tmp_path / "nope.csv")
