from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shardrec.serving.index.embeddings import EmbeddingsError, load_embeddings, write_embeddings_dir
from shardrec.serving.index.foldin import FoldInModel, FoldInSpec, fold_in, item_gram
from shardrec.tools.pipeline.holdout import leave_last_n_out
from shardrec.tools.pipeline.interactions import Interactions
from shardrec.tools.pipeline.sources import DataSource
from shardrec.tools.pipeline.train_job import train_embeddings
from shardrec.tools.pipeline.training import TrainParams, train_model

SMALL = TrainParams(factors=8, iterations=3, seed=7)


def test_training_writes_a_valid_embeddings_directory(
    movielens_dir: Path, movielens_table: Interactions, tmp_path: Path
) -> None:
    out = tmp_path / "emb"
    summary = train_embeddings(DataSource("movielens", movielens_dir), out, SMALL, holdout=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "item_ids.txt",
        "items.npy",
        "metadata.json",
        "seen.tsv",
        "user_ids.txt",
        "users.npy",
    ]
    items = np.load(out / "items.npy")
    users = np.load(out / "users.npy")
    item_ids = (out / "item_ids.txt").read_text(encoding="utf-8").splitlines()
    user_ids = (out / "user_ids.txt").read_text(encoding="utf-8").splitlines()
    assert items.dtype == np.float32 and items.flags.c_contiguous and items.shape == (len(item_ids), 8)
    assert users.dtype == np.float32 and users.shape == (610, 8) and len(user_ids) == 610
    assert len(set(item_ids)) == len(item_ids) and len(set(user_ids)) == len(user_ids)
    assert np.isfinite(items).all() and np.isfinite(users).all()
    assert np.abs(items).sum(axis=1).min() > 0, "every item row was trained"

    # seen.tsv holds exactly the training interactions: everything but each user's last one.
    seen = [tuple(line.split("\t")) for line in (out / "seen.tsv").read_text(encoding="utf-8").splitlines()]
    split = leave_last_n_out(movielens_table, 1)
    assert len(seen) == len(set(seen)) == summary.training_interactions == len(split.train) == 100_836 - 610
    assert set(seen) == set(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))
    assert {item for _, item in seen} == set(item_ids)

    metadata = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["metric"] == "ip"
    assert metadata["holdout"]["per_user"] == 1 and metadata["holdout"]["held_out_interactions"] == 610
    assert metadata["trainer"]["params"]["factors"] == 8
    assert metadata["source"]["checksums_verified"] is True
    assert metadata["counts"] == {
        "users": 610,
        "items": len(item_ids),
        "dimension": 8,
        "training_interactions": len(seen),
    }

    # The index build's validator (docs/embeddings-format.md) accepts it as is.
    validated = load_embeddings(out)
    assert validated.dimension == 8 and validated.item_ids == item_ids
    assert validated.seen_unknown_items == 0


def test_training_is_deterministic_for_a_seed(movielens_table: Interactions) -> None:
    table = movielens_table
    first = train_model(table, SMALL, progress=False).embeddings
    again = train_model(
        table, TrainParams(factors=8, iterations=3, seed=7, threads=1), progress=False
    ).embeddings
    other = train_model(table, TrainParams(factors=8, iterations=3, seed=8), progress=False).embeddings
    assert np.array_equal(first.items, again.items) and np.array_equal(first.users, again.users)
    assert not np.array_equal(first.items, other.items)


def test_invalid_parameters_are_named() -> None:
    with pytest.raises(ValueError, match=r"factors, regularization"):
        TrainParams(factors=0, regularization=-1)


def test_rewrite_replaces_an_embeddings_dir_but_not_a_foreign_folder(tmp_path: Path) -> None:
    users = np.ones((1, 3), dtype=np.float32)

    def write(folder: Path, scale: float, item_ids: list[str], metadata: dict[str, int]) -> Path:
        items = np.full((len(item_ids), 3), scale, dtype=np.float32)
        return write_embeddings_dir(
            folder, items, item_ids, users=users, user_ids=["u1"], seen=[("u1", "i2")], metadata=metadata
        )

    out = tmp_path / "emb"
    write(out, 1.0, ["i1", "i2"], {"n": 1})
    write(out, 2.0, ["i1", "i2"], {"n": 2})
    loaded = load_embeddings(out)
    assert loaded.items.tolist() == [[2.0] * 3] * 2 and loaded.seen == [["i2"]]
    assert loaded.metadata == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"], "no staging folder left behind"

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(EmbeddingsError, match=r"home: exists and is not an embeddings directory"):
        write(foreign, 1.0, ["i1", "i2"], {})
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "mine"
    with pytest.raises(EmbeddingsError, match=r"item_ids\.txt: duplicate id 'a' on lines 1 and 2"):
        write(out, 1.0, ["a", "a"], {})
    assert load_embeddings(out).metadata == {"n": 2}, "a refused write leaves the old directory"


def test_reading_rejects_broken_files_naming_them(tmp_path: Path) -> None:
    out = tmp_path / "emb"
    items = np.ones((2, 3), dtype=np.float32)
    write_embeddings_dir(out, items, ["a", "b"], users=items[:1], user_ids=["u"], seen=[("u", "a")])
    (out / "seen.tsv").write_text("u\ta\nbroken line\n", encoding="utf-8")
    with pytest.raises(EmbeddingsError, match=r"seen\.tsv: line 2: expected 'user_id<TAB>item_id'"):
        load_embeddings(out)
    np.save(out / "items.npy", np.array([[1, np.nan, 0], [0, 0, 0]], dtype=np.float32))
    with pytest.raises(EmbeddingsError, match=r"items\.npy: 1 rows contain NaN or inf: rows 0"):
        load_embeddings(out)


def test_recent_user_vectors_are_the_routers_fold_in_of_each_users_last_n_interactions() -> None:
    # u0's interactions out of time order in the file; u1 has a tie (file order breaks it).
    rows = [
        ("u0", "a", 5.0, 30),
        ("u0", "b", 1.0, 10),
        ("u0", "c", 4.0, 20),
        ("u0", "d", 2.0, 40),
        ("u1", "a", 3.0, 5),
        ("u1", "b", 2.0, 7),
        ("u1", "c", 4.0, 7),
        ("u2", "d", 1.0, 1),
        ("u2", "b", 5.0, 2),
    ]
    table = Interactions(
        users=np.array([r[0] for r in rows]),
        items=np.array([r[1] for r in rows]),
        ratings=np.array([r[2] for r in rows], dtype=np.float32),
        timestamps=np.array([r[3] for r in rows], dtype=np.int64),
    )
    trained_params = TrainParams(
        factors=3, iterations=4, regularization=0.1, alpha=2.0, weighting="none", user_vectors="trained"
    )
    recent_params = replace(trained_params, user_vectors="recent", recent_n=2)
    trained = train_model(table, trained_params, progress=False).embeddings
    recent = train_model(table, recent_params, progress=False).embeddings
    assert np.array_equal(trained.items, recent.items), "the item factors do not change"
    assert trained.seen == recent.seen
    assert trained.users is not None and recent.users is not None and recent.user_ids == ["u0", "u1", "u2"]
    model = FoldInModel(FoldInSpec("als", "als", 0.1, 2.0), item_gram(trained.items, "ip"))
    row = {item: index for index, item in enumerate(trained.item_ids)}
    last_two = {
        "u0": [("a", 5.0), ("d", 2.0)],
        "u1": [("b", 2.0), ("c", 4.0)],
        "u2": [("d", 1.0), ("b", 5.0)],
    }
    for index, user in enumerate(recent.user_ids):
        picked = last_two[user]
        expected = fold_in(
            model, trained.items[[row[item] for item, _ in picked]], np.array([w for _, w in picked])
        )
        assert np.allclose(recent.users[index], expected, atol=1e-6)
        assert not np.allclose(recent.users[index], trained.users[index])

    # BPR ignores the choice (as it ignores alpha): its trained vectors are stored.
    bpr = train_model(table, replace(recent_params, model="bpr", iterations=2, threads=1), progress=False)
    same = train_model(table, replace(trained_params, model="bpr", iterations=2, threads=1), progress=False)
    assert np.array_equal(bpr.embeddings.users, same.embeddings.users)


def test_user_vector_choice_is_named_and_recorded(movielens_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="user_vectors"):
        TrainParams(user_vectors="latest")  # type: ignore[arg-type]
    # BPR ignores it (as it ignores alpha): `recctl train --model bpr` works with the defaults.
    assert "user_vectors" not in TrainParams(model="bpr", user_vectors="recent").relevant()
    with pytest.raises(ValueError, match="recent_n"):
        TrainParams(recent_n=0)
    assert "recent_n" not in TrainParams(user_vectors="trained").relevant()
    assert "user_vectors" not in TrainParams(model="bpr").relevant()
    params = TrainParams(factors=4, iterations=2, user_vectors="recent", recent_n=5)
    assert params.relevant()["user_vectors"] == "recent" and params.relevant()["recent_n"] == 5
    out = tmp_path / "emb"
    train_embeddings(DataSource("movielens", movielens_dir), out, params, holdout=1, progress=False)
    trainer = json.loads((out / "metadata.json").read_text(encoding="utf-8"))["trainer"]
    assert trainer["params"]["user_vectors"] == "recent" and trainer["params"]["recent_n"] == 5
    assert trainer["user_vectors"].startswith("folded in from each user's 5 most recent training")
