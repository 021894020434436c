"""User fold-in (serving/index/foldin.py): the ALS closed form agrees with implicit's own
`recalculate_user=True` on MovieLens-sized data; the fallback mean; the spec read from metadata;
the Gram matrix of the vectors as shards store them; the users part records and reloads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse

from shardrec.serving.index.foldin import FoldInModel, FoldInSpec, fold_in, fold_in_spec, item_gram
from shardrec.serving.index.layout import LayoutError
from shardrec.serving.index.manifest import ITEM_GRAM_FILE, LAYOUT_FILE, LayoutManifest
from shardrec.serving.index.users import write_users_part
from shardrec.tools.pipeline.training import TrainParams, weight


def _movielens_sized(seed: int = 3) -> scipy.sparse.csr_matrix:
    """610 users x 9,000 items, ~100k ratings in 0.5..5 with popular items (ml-latest-small's shape)."""
    rng = np.random.default_rng(seed)
    users, items, per_user = 610, 9000, rng.integers(20, 330, size=610)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    popularity /= popularity.sum()
    rows, cols = [], []
    for user, count in enumerate(per_user):
        chosen = rng.choice(items, size=int(count), replace=False, p=popularity)
        rows.extend([user] * len(chosen))
        cols.extend(chosen.tolist())
    ratings = rng.integers(1, 11, size=len(rows)).astype(np.float32) / 2
    return scipy.sparse.csr_matrix((ratings, (rows, cols)), shape=(users, items), dtype=np.float32)


def test_als_fold_in_matches_implicit_recalculate_user() -> None:
    import threadpoolctl  # type: ignore[import-untyped]
    from implicit.cpu.als import AlternatingLeastSquares

    # Confidence alpha x rating, as the router folds clicks in (the default recipe weights by BM25).
    params = TrainParams(
        factors=32, iterations=4, regularization=0.05, alpha=0.5, weighting="none", threads=1
    )
    raw = _movielens_sized()
    confidence = weight(raw, params)  # loads every BLAS library before the limit below
    with threadpoolctl.threadpool_limits(1, "blas"):
        _check_against_implicit(AlternatingLeastSquares, params, raw, confidence)


def _check_against_implicit(
    als: Any, params: TrainParams, raw: scipy.sparse.csr_matrix, confidence: scipy.sparse.csr_matrix
) -> None:
    AlternatingLeastSquares = als  # noqa: N806
    model = AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        iterations=params.iterations,
        random_state=params.seed,
        num_threads=1,
        dtype=np.float32,
    )
    model.fit(confidence, show_progress=False)
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    spec = FoldInSpec("als", "als", params.regularization, params.alpha)
    folder = FoldInModel(spec, item_gram(items, "ip"))
    for user in (0, 17, 333, 609):
        row = raw[user]
        clicked = row.indices
        ours = fold_in(folder, items[clicked], row.data.astype(np.float64))
        theirs = model.recalculate_user(user, confidence[user])
        assert np.allclose(ours, theirs, rtol=1e-3, atol=1e-4), np.abs(ours - theirs).max()
        # What a client sees: the top 10 of recommend(recalculate_user=True), same scores.
        ids, scores = model.recommend(
            user, confidence[user], N=10, recalculate_user=True, filter_already_liked_items=True
        )
        mine = items @ ours
        mine[clicked] = -np.inf
        assert set(np.argsort(-mine)[:10].tolist()) == set(ids.tolist())
        assert np.allclose(np.sort(mine)[::-1][:10], scores, rtol=1e-3, atol=1e-3)


def test_a_few_clicks_move_the_user_towards_those_items() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(500, 16)).astype(np.float32)
    folder = FoldInModel(FoldInSpec("als", "als", 0.01, 1.0), item_gram(items, "ip"))
    clicked = [3, 7, 11]
    user = fold_in(folder, items[clicked], np.full(3, 5.0))
    scores = items @ user
    # The clicked items score far above the average item: the solve fits them.
    assert scores[clicked].min() > np.percentile(scores, 95)


def test_mean_fallback_and_bpr_bias() -> None:
    vectors = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, -0.5]], dtype=np.float32)
    weights = np.array([1.0, 3.0])
    plain = fold_in(FoldInModel(FoldInSpec("unknown", "mean")), vectors, weights)
    assert np.allclose(plain, [0.25, 1.5, -0.25])
    bpr = fold_in(FoldInModel(FoldInSpec("bpr", "mean", bias_last=True)), vectors, weights)
    assert np.allclose(bpr, [0.25, 1.5, 1.0])


def test_fold_in_refuses_bad_input() -> None:
    folder = FoldInModel(FoldInSpec("unknown", "mean"))
    with pytest.raises(ValueError, match="positive"):
        fold_in(folder, np.ones((2, 3), dtype=np.float32), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="n >= 1"):
        fold_in(folder, np.ones((0, 3), dtype=np.float32), np.zeros(0))
    with pytest.raises(ValueError, match="Gram"):
        FoldInModel(FoldInSpec("als", "als", 0.1, 1.0))


def test_singular_system_still_answers() -> None:
    # No regularization and a Gram matrix of rank 1: lstsq instead of a LinAlgError.
    items = np.array([[1.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    folder = FoldInModel(FoldInSpec("als", "als", 0.0, 1.0), item_gram(items, "ip"))
    user = fold_in(folder, items[:1], np.array([1.0]))
    assert np.isfinite(user).all()


def test_spec_from_metadata() -> None:
    als = {
        "trainer": {"model": "AlternatingLeastSquares", "params": {"regularization": 0.02, "alpha": 0.5}},
        "interactions": {"mean_rating": 3.5},
    }
    assert fold_in_spec(als) == FoldInSpec("als", "als", 0.02, 0.5, 3.5)
    bpr = {"trainer": {"model": "BayesianPersonalizedRanking", "params": {"regularization": 0.01}}}
    assert fold_in_spec(bpr) == FoldInSpec("bpr", "mean", bias_last=True)
    assert fold_in_spec({"metric": "ip"}) == FoldInSpec("unknown", "mean")
    # An ALS record without usable parameters falls back to the mean, never guesses them.
    broken = {"trainer": {"model": "AlternatingLeastSquares", "params": {"alpha": -1}}}
    assert fold_in_spec(broken).method == "mean"


def test_gram_of_cosine_layouts_uses_normalised_rows() -> None:
    items = np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float32)
    assert np.allclose(item_gram(items, "ip"), items.T.astype(np.float64) @ items)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    assert np.allclose(item_gram(items, "cosine"), unit.T @ unit)


def _users_layout(tmp_path: Path, fold: tuple[FoldInSpec, np.ndarray | None] | None) -> Path:
    """A layout folder with only layout.json and a users part (what load_user_table reads)."""
    part = write_users_part(
        tmp_path / "users", np.ones((2, 2), dtype=np.float32), ["u1", "u2"], [["a"], []], 0, fold_in=fold
    )
    manifest = LayoutManifest.model_validate(
        {
            "layout": "l",
            "version": "v1",
            "shards": 1,
            "dimension": 2,
            "metric": "ip",
            "hnsw": {"m": 16, "ef_construction": 100},
            "item_count": 1,
            "shard_entries": [
                {"shard": 0, "directory": "shard-0000", "count": 1, "manifest_sha256": "0" * 64}
            ],
            "users": part.model_dump(),
            "built_at": "now",
            "build_seconds": 0,
        }
    )
    (tmp_path / LAYOUT_FILE).write_text(manifest.model_dump_json())
    return tmp_path


def test_users_part_records_and_reloads_the_fold_in(tmp_path: Path) -> None:
    from shardrec.serving.index.users import load_user_table

    gram = np.array([[2.0, 0.5], [0.5, 1.0]])
    layout = _users_layout(tmp_path, (FoldInSpec("als", "als", 0.1, 0.5, 3.0), gram))
    table = load_user_table(layout)
    assert table.fold_in is not None
    assert table.fold_in.spec == FoldInSpec("als", "als", 0.1, 0.5, 3.0)
    assert table.fold_in.gram is not None and np.array_equal(table.fold_in.gram, gram)
    # The Gram matrix is one of the part's checksummed files: a changed byte is refused.
    path = layout / "users" / ITEM_GRAM_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LayoutError):
        load_user_table(layout)


def test_users_part_without_fold_in_loads_as_before(tmp_path: Path) -> None:
    from shardrec.serving.index.users import load_user_table

    layout = _users_layout(tmp_path, None)
    manifest = LayoutManifest.model_validate_json((layout / LAYOUT_FILE).read_text())
    assert manifest.users is not None and manifest.users.fold_in is None
    assert "fold_in" not in manifest.users.model_dump(exclude_defaults=True)
    assert ITEM_GRAM_FILE not in {entry.name for entry in manifest.users.files}
    assert load_user_table(layout).fold_in is None


def test_mean_fold_in_writes_no_gram(tmp_path: Path) -> None:
    from shardrec.serving.index.users import load_user_table

    layout = _users_layout(tmp_path, (FoldInSpec("bpr", "mean", bias_last=True), None))
    assert not (layout / "users" / ITEM_GRAM_FILE).exists()
    assert load_user_table(layout).fold_in == FoldInModel(FoldInSpec("bpr", "mean", bias_last=True))
