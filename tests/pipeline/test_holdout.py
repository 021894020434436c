from __future__ import annotations

import numpy as np
import pytest

from shardrec.tools.pipeline.holdout import leave_last_n_out
from shardrec.tools.pipeline.interactions import Interactions


def _table(rows: list[tuple[str, str, int]]) -> Interactions:
    return Interactions(
        users=np.array([r[0] for r in rows], dtype=np.str_),
        items=np.array([r[1] for r in rows], dtype=np.str_),
        ratings=np.ones(len(rows), dtype=np.float32),
        timestamps=np.array([r[2] for r in rows], dtype=np.int64),
    )


def test_holds_out_the_most_recent_by_timestamp_not_file_order() -> None:
    table = _table([("u", "late", 900), ("u", "early", 100), ("u", "mid", 500), ("v", "x", 5), ("v", "y", 1)])
    split = leave_last_n_out(table, 1)
    assert split.relevant_by_user() == {"u": {"late"}, "v": {"x"}}
    assert sorted(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True)) == [
        ("u", "early"),
        ("u", "mid"),
        ("v", "y"),
    ]
    # v has only 2 interactions: holding out 2 would leave it no history, so it is not evaluated.
    assert leave_last_n_out(table, 2).relevant_by_user() == {"u": {"late", "mid"}}


def test_equal_timestamps_hold_out_the_later_row_and_short_histories_stay_in_training() -> None:
    table = _table([("u", "a", 7), ("u", "b", 7), ("u", "c", 7), ("w", "only", 3)])
    split = leave_last_n_out(table, 1)
    assert split.relevant_by_user() == {"u": {"c"}}
    assert "w" in split.train.users.tolist()
    with pytest.raises(ValueError, match="holdout per user must be >= 1"):
        leave_last_n_out(table, 0)


@pytest.mark.parametrize("per_user", [1, 5])
def test_movielens_split_is_by_time_and_leaks_nothing(movielens_table: Interactions, per_user: int) -> None:
    table = movielens_table
    split = leave_last_n_out(table, per_user)
    assert len(split.train) + len(split.test) == len(table)
    train_pairs = set(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))
    test_pairs = set(zip(split.test.users.tolist(), split.test.items.tolist(), strict=True))
    assert not train_pairs & test_pairs
    # Every MovieLens user has at least 20 ratings, so each holds out exactly `per_user`.
    users, counts = np.unique(split.test.users, return_counts=True)
    assert len(users) == 610 and set(counts.tolist()) == {per_user}
    latest_train: dict[str, int] = {}
    for user, stamp in zip(split.train.users.tolist(), split.train.timestamps.tolist(), strict=True):
        latest_train[user] = max(stamp, latest_train.get(user, stamp))
    for user, stamp in zip(split.test.users.tolist(), split.test.timestamps.tolist(), strict=True):
        assert stamp >= latest_train[user], f"user {user}: a held-out rating predates training"
