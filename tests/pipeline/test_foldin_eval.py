"""The fold-in evaluation (tools/pipeline/foldin_eval.py) on a small world with a clear structure:
users who stay within one of two item groups. Folding in a user from its clicks, with ALS trained
without it, finds its group; the report holds every row; training records the mean rating the
router's default weight comes from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shardrec.serving.index.embeddings import read_metadata
from shardrec.serving.index.foldin import fold_in_spec
from shardrec.tools.pipeline.foldin_eval import evaluate_fold_in
from shardrec.tools.pipeline.interactions import Interactions
from shardrec.tools.pipeline.sources import DataSource
from shardrec.tools.pipeline.train_job import train_embeddings
from shardrec.tools.pipeline.training import TrainParams
from tests.pipeline.conftest import write_csv

PARAMS = TrainParams(factors=8, iterations=5, regularization=0.1, threads=1)


def _two_groups(users: int = 60, per_user: int = 12, seed: int = 1) -> Interactions:
    """Even users rate items 0-19, odd users items 20-39; time order is row order."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        base = 0 if user % 2 == 0 else 20
        for step, item in enumerate(rng.choice(20, size=per_user, replace=False)):
            rows.append((f"u{user}", f"i{base + item}", float(rng.integers(1, 6)), user * 100 + step))
    users_, items, ratings, times = zip(*rows, strict=True)
    return Interactions(
        users=np.array(users_),
        items=np.array(items),
        ratings=np.array(ratings, dtype=np.float32),
        timestamps=np.array(times, dtype=np.int64),
    )


def test_folded_in_users_find_their_group_and_beat_popularity() -> None:
    report = evaluate_fold_in(_two_groups(), PARAMS, recent=(3, 6), folds=3)
    assert report.users == 60 and report.folds == 3
    names = [row.name for row in report.rows]
    assert names[0].startswith("the user's own vector") and names[-1] == "popularity baseline"
    assert "folded in from the last 3 clicks (ratings as weights)" in names
    assert "folded in from the last 6 clicks (ratings as weights)" in names
    assert "folded in from the last 3 clicks, excluding only those" in names
    by_name = {row.name: row for row in report.rows}
    popular = by_name["popularity baseline"].hit_rate
    # 8 unseen items of 20 in the user's group: a top-10 within the group holds the held-out one.
    assert by_name["folded in from the last 6 clicks (ratings as weights)"].hit_rate > max(0.8, popular)
    for row in report.rows:
        low, high = row.interval
        assert low <= row.hit_rate <= high and row.hits.shape == (60,)
    text = report.markdown()
    assert text.count("\n| ") == len(report.rows) and "60 users in 3 folds" in text


def test_training_records_the_mean_rating_for_the_default_weight(tmp_path: Path) -> None:
    rows = [f"u{u},i{i},{(u + i) % 5 + 1},{u * 10 + i}" for u in range(8) for i in range(6)]
    source = DataSource(kind="csv", path=write_csv(tmp_path / "r.csv", rows))
    train_embeddings(source, tmp_path / "emb", PARAMS, progress=False)
    metadata = read_metadata(tmp_path / "emb" / "metadata.json")
    mean = np.mean([(u + i) % 5 + 1 for u in range(8) for i in range(6)])
    assert metadata["interactions"]["mean_rating"] == round(float(mean), 6)
    spec = fold_in_spec(metadata)
    assert (spec.family, spec.method, spec.regularization, spec.alpha) == ("als", "als", 0.1, PARAMS.alpha)
    assert spec.default_weight == round(float(mean), 6)
