from __future__ import annotations

import numpy as np
import pytest

from shardrec.serving.index.embeddings import Embeddings
from shardrec.tools.pipeline.recommenders import (
    ExactRecommender,
    ItemCosineRecommender,
    PopularityRecommender,
    RandomRecommender,
    UnknownUserError,
    score_items,
    top_k_indices,
)


def _embeddings(metric: str = "ip") -> Embeddings:
    items = np.array([[1, 0], [0, 1], [2, 0], [1, 1], [-1, 0]], dtype=np.float32)
    users = np.array([[1, 0], [0, 1]], dtype=np.float32)
    return Embeddings(
        items, ["a", "b", "c", "d", "e"], users=users, user_ids=["u", "v"], metadata={"metric": metric}
    )


def test_top_k_orders_by_score_then_index_and_skips_excluded() -> None:
    scores = np.array([1.0, 3.0, 3.0, -np.inf, 2.0], dtype=np.float32)
    assert top_k_indices(scores, 2).tolist() == [1, 2]
    assert top_k_indices(scores, 10).tolist() == [1, 2, 4, 0]
    assert top_k_indices(np.full(3, -np.inf, dtype=np.float32), 2).tolist() == []


def test_exact_ranks_by_inner_product_with_exclusions() -> None:
    exact = ExactRecommender(_embeddings())
    # u=(1,0): c=2, a=1, d=1, b=0, e=-1; a and d tie, a has the lower row.
    assert exact("u", 3, set()) == ["c", "a", "d"]
    assert exact("u", 3, {"c", "zzz"}) == ["a", "d", "b"]
    assert exact("v", 2, set()) == ["b", "d"]
    with pytest.raises(UnknownUserError):
        exact("nobody", 3, set())


def test_score_metrics_are_higher_is_better() -> None:
    items = _embeddings().items
    query = np.array([1, 0], dtype=np.float32)
    assert score_items(query, items, "ip").tolist() == [1, 0, 2, 1, -1]
    assert score_items(query, items, "cosine") == pytest.approx([1, 0, 1, 2**-0.5, -1])
    assert score_items(query, items, "l2").tolist() == [0, -2, -1, -1, -4]
    with pytest.raises(ValueError, match="unknown metric"):
        score_items(query, items, "hamming")


def test_popularity_ranks_by_count_then_id_and_excludes() -> None:
    popularity = PopularityRecommender(["b", "a", "b", "c", "c", "d"])
    assert popularity("anyone", 3, set()) == ["b", "c", "a"]
    assert popularity("anyone", 3, {"b"}) == ["c", "a", "d"]
    assert popularity("anyone", 10, {"a", "b", "c", "d"}) == []


def test_random_baseline_is_seeded_and_never_recommends_seen_items() -> None:
    catalogue = [f"i{n}" for n in range(30)]
    first = RandomRecommender(catalogue, seed=4)
    answers = [first("u", 5, {"i1", "i2", "i3"}) for _ in range(20)]
    assert all(len(a) == len(set(a)) == 5 and not {"i1", "i2", "i3"} & set(a) for a in answers)
    assert len({tuple(a) for a in answers}) > 1, "draws differ between users"
    again = RandomRecommender(catalogue, seed=4)
    assert [again("u", 5, {"i1", "i2", "i3"}) for _ in range(20)] == answers
    assert RandomRecommender(["a", "b"], seed=0)("u", 5, {"a"}) == ["b"]


def test_item_cosine_recommends_what_similar_users_had_minus_their_own() -> None:
    # u1 and u2 share a and b; u2 also had c, so c is u1's best unseen neighbour item.
    users = ["u1", "u1", "u2", "u2", "u2", "u3", "u3"]
    items = ["a", "b", "a", "b", "c", "d", "e"]
    cosine = ItemCosineRecommender(users, items)
    assert cosine("u1", 1, {"a", "b"}) == ["c"]
    assert "a" not in cosine("u2", 3, {"a"}) and "c" not in cosine("u2", 3, {"a", "b", "c"})
    with pytest.raises(UnknownUserError):
        cosine("nobody", 3, set())
