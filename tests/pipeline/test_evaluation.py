from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from shardrec.tools.pipeline.evaluate_job import POPULARITY, EvaluationSetupError, evaluate_embeddings
from shardrec.tools.pipeline.evaluation import Candidate, evaluate
from shardrec.tools.pipeline.holdout import leave_last_n_out
from shardrec.tools.pipeline.sources import DataSource
from shardrec.tools.pipeline.train_job import train_embeddings
from shardrec.tools.pipeline.training import TrainParams

from .conftest import write_csv


def _fixed(answers: dict[str, list[str]]) -> Candidate:
    def recommend(user_id: str, k: int, exclude: Collection[str]) -> list[str]:
        return [item for item in answers[user_id] if item not in exclude][:k]

    return Candidate(name="fixed", recommender=recommend)


def test_evaluate_averages_over_users_and_measures_recall_against_the_first() -> None:
    exact = _fixed({"u": ["a", "b", "c"], "v": ["x", "y", "z"]})
    approx = Candidate("approx", _fixed({"u": ["a", "q", "c"], "v": ["y", "x", "r"]}).recommender, True)
    relevant = {"u": {"a"}, "v": {"z"}}
    report = evaluate([exact, approx], relevant, {"v": {"y"}}, k=2, holdout=1, progress=False)
    ref, ann = report.results
    # u: "a" at rank 1 -> hit 1, NDCG 1. v excludes y: exact answers [x, z] -> z at rank 2.
    assert ref.hit_rate == 1.0
    assert ref.ndcg == pytest.approx((1 + 1 / 1.5849625007211562) / 2)
    # approx: u [a, q] -> hit; v [x, r] -> miss; recall: u 1/2, v 1/2 (x of exact [x, z]).
    assert ann.hit_rate == 0.5 and ann.ndcg == 0.5 and ann.recall_vs_exact == 0.5
    assert ref.recall_vs_exact is None and ref.is_reference
    table = report.markdown()
    assert "| fixed | 2 | 1.0000 | [1.0000, 1.0000] | " in table
    assert (
        "| approx | 2 | 0.5000 | [0.0000, 1.0000] | 0.5000 | [0.0000, 1.0000] | n/a | n/a | 0.5000 |" in table
    )
    assert "Leave-last-1-out: 2 held-out interactions of 2 users" in table


@pytest.fixture(scope="module")
def holdout5_embeddings(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "holdout5"
    params = TrainParams(factors=16, iterations=8, seed=42)
    train_embeddings(DataSource("movielens", movielens_dir), out, params, holdout=5, progress=False)
    return out


def test_als_beats_popularity_on_movielens(holdout5_embeddings: Path) -> None:
    report = evaluate_embeddings(holdout5_embeddings, ann=None, progress=False)
    exact, popularity = report.results[0], report.result(POPULARITY)
    assert exact.users == popularity.users == 610
    assert report.held_out == 3050
    # Measured: ALS ~0.048 NDCG@10 / ~0.22 hit-rate, popularity 0.033 / 0.146. Require a clear margin.
    assert exact.ndcg > 1.25 * popularity.ndcg
    assert exact.hit_rate > 1.2 * popularity.hit_rate
    assert 0.1 < popularity.hit_rate < 0.2, "popularity is a sane baseline, not broken to lose"


def test_embeddings_trained_on_everything_are_refused(movielens_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    train_embeddings(
        DataSource("movielens", movielens_dir), out, TrainParams(factors=4, iterations=1), progress=False
    )
    with pytest.raises(
        EvaluationSetupError, match=r"trained on every interaction, so held-out items would leak"
    ):
        evaluate_embeddings(out, ann=None, progress=False)


def test_a_different_holdout_is_refused(holdout5_embeddings: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluationSetupError, match=r"--holdout 1: .* trained holding out 5 per user"):
        evaluate_embeddings(holdout5_embeddings, holdout=1, ann=None, progress=False)


def test_changed_data_and_leaked_items_are_refused(tmp_path: Path) -> None:
    rows = [f"u{u},i{i},{1 + (u * i) % 5},{100 * i + u}" for u in range(6) for i in range(8) if (u + i) % 3]
    data = write_csv(tmp_path / "i.csv", rows)
    out = tmp_path / "emb"
    train_embeddings(
        DataSource("csv", data), out, TrainParams(factors=4, iterations=2), holdout=1, progress=False
    )
    report = evaluate_embeddings(out, ann=None, progress=False)
    assert report.users == 6

    # Same file, one rating added: its digest no longer matches what was trained on.
    write_csv(data, [*rows, "u9,i0,5,1"])
    with pytest.raises(EvaluationSetupError, match=r"i\.csv: sha256 .* differs from the data"):
        evaluate_embeddings(out, ann=None, progress=False)

    # Restore the data but put a held-out pair into seen.tsv, as a model trained on it would.
    write_csv(data, rows)
    split = leave_last_n_out(DataSource("csv", data).load().interactions, 1)
    user, items = sorted(split.relevant_by_user().items())[0]
    with (out / "seen.tsv").open("a", encoding="utf-8") as handle:
        handle.write(f"{user}\t{sorted(items)[0]}\n")
    with pytest.raises(EvaluationSetupError, match=rf"seen\.tsv: user {user} has held-out item"):
        evaluate_embeddings(out, ann=None, progress=False)
