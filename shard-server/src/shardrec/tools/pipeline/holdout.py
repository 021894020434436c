"""Leave-last-n-out: hold out each user's n most recent interactions for offline evaluation.

Within a user, "most recent" is by timestamp; equal timestamps keep file order (the later row is
the more recent), so the split is deterministic. A user with n or fewer interactions keeps them
all in training and is not evaluated: a user with no history cannot be scored fairly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardrec.tools.pipeline.interactions import Interactions


@dataclass(frozen=True)
class HoldoutSplit:
    train: Interactions
    test: Interactions
    per_user: int

    def relevant_by_user(self) -> dict[str, set[str]]:
        """user -> its held-out items (the answers a good recommender should rank high)."""
        relevant: dict[str, set[str]] = {}
        for user, item in zip(self.test.users.tolist(), self.test.items.tolist(), strict=True):
            relevant.setdefault(user, set()).add(item)
        return relevant


def leave_last_n_out(interactions: Interactions, per_user: int) -> HoldoutSplit:
    if per_user < 1:
        raise ValueError(f"holdout per user must be >= 1, got {per_user}")
    size = len(interactions)
    rows = np.arange(size)
    _, user_codes = np.unique(interactions.users, return_inverse=True)
    order = np.lexsort((rows, interactions.timestamps, user_codes))
    sorted_users = user_codes[order]
    counts = np.bincount(sorted_users)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position_from_end = counts[sorted_users] - (rows - starts[sorted_users])
    held = (position_from_end <= per_user) & (counts[sorted_users] > per_user)
    is_test = np.zeros(size, dtype=bool)
    is_test[order[held]] = True
    return HoldoutSplit(train=interactions.take(~is_test), test=interactions.take(is_test), per_user=per_user)
