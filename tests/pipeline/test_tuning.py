"""The validation split, the vectorised metrics the search ranks trials by, and the search itself."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pytest

from shardrec.serving.index.embeddings import Embeddings
from shardrec.tools.pipeline.evaluation import Candidate, evaluate
from shardrec.tools.pipeline.holdout import leave_last_n_out
from shardrec.tools.pipeline.interactions import Interactions
from shardrec.tools.pipeline.recommenders import ExactRecommender
from shardrec.tools.pipeline.sources import DataSource
from shardrec.tools.pipeline.training import Histories, TrainParams, fit_factors, recent_user_vectors, weight
from shardrec.tools.pipeline.tuning import SearchBudget, ValidationSet, search, top_k_rows, validation_split

from .conftest import write_csv

ROWS = [f"u{u},i{i},{1 + (u * i) % 5},{100 * i + u}" for u in range(12) for i in range(14) if (u + 2 * i) % 3]


def _table(tmp_path: Path) -> Interactions:
    return DataSource("csv", write_csv(tmp_path / "i.csv", ROWS)).load().interactions


def test_top_k_rows_breaks_ties_by_lower_column() -> None:
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 2.0], [0.0, 0.0, 0.0, 0.0, 5.0]], dtype=np.float32)
    assert top_k_rows(scores, 2).tolist() == [[1, 2], [4, 0]]
    assert top_k_rows(scores, 3).tolist() == [[1, 2, 4], [4, 0, 1]]


def test_validation_comes_only_from_training_and_never_from_the_test_split(tmp_path: Path) -> None:
    table = _table(tmp_path)
    split = leave_last_n_out(table, 1)
    fit, validation = validation_split(split.train, 2)
    pairs = lambda t: set(zip(t.users.tolist(), t.items.tolist(), strict=True))  # noqa: E731
    assert pairs(validation) | pairs(fit) == pairs(split.train)
    assert not pairs(validation) & pairs(fit) and not pairs(validation) & pairs(split.test)
    # Per user, validation items are the two most recent training ones: older than the test item.
    for user in set(validation.users.tolist()):
        val_times = validation.timestamps[validation.users == user]
        assert val_times.max() <= split.test.timestamps[split.test.users == user].min()
        assert val_times.min() >= fit.timestamps[fit.users == user].max()


def test_vectorised_metrics_agree_with_the_per_user_evaluation(tmp_path: Path) -> None:
    table = _table(tmp_path)
    split = leave_last_n_out(table, 2)
    validation = ValidationSet(split.train, split.test)
    rng = np.random.default_rng(3)
    users = rng.normal(size=(len(validation.user_ids), 4)).astype(np.float32)
    items = rng.normal(size=(len(validation.item_ids), 4)).astype(np.float32)
    hits, ndcg = validation.metrics(users, items, 3)

    embeddings = Embeddings(items, validation.item_ids, users=users, user_ids=validation.user_ids)
    exclude: dict[str, set[str]] = {}
    for user, item in zip(split.train.users.tolist(), split.train.items.tolist(), strict=True):
        exclude.setdefault(user, set()).add(item)
    exact = ExactRecommender(embeddings)

    def recommend(user: str, k: int, seen: Collection[str]) -> list[str]:
        return exact(user, k, seen)

    report = evaluate(
        [Candidate("exact", recommend)], split.relevant_by_user(), exclude, k=3, holdout=2, progress=False
    )
    assert report.results[0].per_user_hits.tolist() == hits.tolist()
    assert report.results[0].per_user_ndcg == pytest.approx(ndcg)


def test_search_is_bounded_repeatable_and_tries_the_given_parameters_first(tmp_path: Path) -> None:
    table = leave_last_n_out(_table(tmp_path), 1).train
    first = TrainParams(factors=4, iterations=2, user_vectors="trained")
    budget = SearchBudget(trials=4, seconds=120, families=("als",), per_user=1, seed=5, recent=())
    lines: list[str] = []
    result = search(table, budget, first=[first], report=lines.append)
    again = search(table, budget, first=[first])
    assert len(result.trials) == 4 and result.stopped_by == "trials" and len(lines) == 4
    assert result.trials[0].params == first
    assert [t.params for t in result.trials] == [t.params for t in again.trials]
    assert [t.ndcg for t in result.trials] == [t.ndcg for t in again.trials], "ALS trials are deterministic"
    assert result.best.ndcg == max(t.ndcg for t in result.trials)
    assert all(t.params.model == "als" for t in result.trials)
    assert len({t.params.describe() for t in result.trials}) == 4, "no trial repeats another"
    record = result.record()
    assert record["objective"] == "validation NDCG@10" and record["search"]["stopped_by"] == "trials"
    assert record["validation"]["per_user"] == 1 and len(record["trials"]) == 4

    timed = search(table, SearchBudget(trials=1000, seconds=0.001, families=("bpr",)), first=[first])
    assert timed.stopped_by == "seconds" and timed.fits == 1
    assert len(timed.trials) == 4, "the first fit (ALS) is scored with trained and 3 recent user vectors"


def test_every_als_fit_is_scored_with_trained_and_recent_user_vectors_from_the_fit_data_only(
    tmp_path: Path,
) -> None:
    table = leave_last_n_out(_table(tmp_path), 1).train
    first = TrainParams(factors=4, iterations=2, user_vectors="recent", recent_n=3)
    budget = SearchBudget(trials=2, seconds=120, families=("als", "bpr"), per_user=2, seed=1, recent=(2, 4))
    result = search(table, budget, first=[first])
    assert result.fits == 2
    by_fit: dict[int, list[TrainParams]] = {}
    for trial in result.trials:
        by_fit.setdefault(trial.fit, []).append(trial.params)
    # The first fit: trained, the budget's Ns and the given recipe's own N (so the search never
    # returns worse on validation than the recipe it was given).
    assert [(p.user_vectors, p.recent_n) for p in by_fit[1]] == [
        ("trained", 3),
        ("recent", 2),
        ("recent", 3),
        ("recent", 4),
    ]
    assert len({p.describe() for p in by_fit[1]}) == 4
    assert all(p.model == "bpr" for p in by_fit[2]) == (len(by_fit[2]) == 1)
    assert result.record()["search"]["user_vectors"] == ["trained", "recent 2", "recent 4"]

    # A recent trial's score is the fold-in from the last N *fit* interactions: recomputed here
    # from the fit part alone (the validation items never enter it), it gives the same NDCG.
    fit, held_out = validation_split(table, 2)
    validation = ValidationSet(fit, held_out)
    params = by_fit[1][2]
    users, items = fit_factors(weight(validation.raw, params), params)
    histories = Histories.of(fit, validation.user_ids, validation.item_ids)
    folded = recent_user_vectors(histories, items, params, users, 3)
    _, ndcg = validation.metrics(folded, items, 10)
    assert result.trials[2].params == params and result.trials[2].ndcg == pytest.approx(float(ndcg.mean()))
    _, trained_ndcg = validation.metrics(users, items, 10)
    assert result.trials[0].ndcg == pytest.approx(float(trained_ndcg.mean()))


def test_budget_and_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown model families"):
        SearchBudget(families=("svd",))
    with pytest.raises(ValueError, match="invalid search budget"):
        SearchBudget(trials=0)
    with pytest.raises(ValueError, match="model, factors"):
        TrainParams(model="svd", factors=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid search budget"):
        SearchBudget(recent=(0,))
