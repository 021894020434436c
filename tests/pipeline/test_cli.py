from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shardrec.tools.cli.main import main

from .conftest import write_csv

ROWS = [f"u{u},i{i},{1 + (u * i) % 5},{100 * i + u}" for u in range(8) for i in range(10) if (u + i) % 3]


def test_train_then_evaluate_from_a_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "i.csv", ROWS)
    out = tmp_path / "emb"
    argv = ["train", "--interactions", str(data), "--out", str(out), "--factors", "4", "--holdout", "1"]
    assert main([*argv, "--iterations", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    # Each user's last interaction is its highest item; i9's raters all have it last, so only 9 items train.
    assert re.search(r"trained 8 users x 9 items, dimension 4, on 45 interactions, 8 held out", printed)
    assert (out / "items.npy").is_file()

    table = tmp_path / "table.md"
    assert main(["evaluate", "--embeddings", str(out), "--no-ann", "--quiet", "--out-table", str(table)]) == 0
    written = table.read_text(encoding="utf-8")
    assert written in capsys.readouterr().out
    assert "| popularity baseline | 8 |" in written and "Leave-last-1-out: 8 held-out" in written


def test_train_tune_searches_within_its_budget_and_records_the_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_csv(tmp_path / "i.csv", ROWS)
    out = tmp_path / "emb"
    argv = ["train", "--interactions", str(data), "--out", str(out), "--holdout", "1", "--factors", "4"]
    argv += ["--iterations", "2", "--tune", "--tune-trials", "3", "--validation-holdout", "1"]
    argv += ["--tune-recent", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("trial ")]
    assert re.match(r"trial \d+ \(fit 3/3\) \[", progress[-1])
    assert re.search(
        r"tuned: \d+ trials \(3 fits\) in .* s \(stopped by trials\); best trial \d", captured.out
    )
    metadata = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    tuning = metadata["tuning"]
    assert tuning["validation"]["per_user"] == 1 and tuning["search"]["seed"] == 42
    assert len(tuning["trials"]) == len(progress) and tuning["search"]["fits"] == 3
    assert tuning["trials"][0]["params"]["factors"] == 4
    # The first fit (ALS) is scored with its trained user vectors and folded in from the last 2.
    assert [t["params"].get("recent_n") for t in tuning["trials"][:2]] == [None, 2]
    assert tuning["trials"][1]["params"]["user_vectors"] == "recent"
    assert tuning["best"]["params"] == {
        name: value for name, value in metadata["trainer"]["params"].items() if name != "threads"
    }
    assert f"parameters: {tuning['best']['params']['model']} " in captured.out
    assert metadata["quality"]["split"] == "test" and 0 <= metadata["quality"]["ndcg_at_10"] <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--factors", "0"], "invalid training parameter(s): factors"),
        (["--holdout", "-1"], "--holdout must be >= 0"),
    ],
)
def test_train_flag_errors_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    data = write_csv(tmp_path / "i.csv", ROWS)
    assert main(["train", "--interactions", str(data), "--out", str(tmp_path / "o"), *argv]) == 1
    assert message in capsys.readouterr().err


def test_train_data_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "i.csv", [*ROWS[:3], "u1,i1,4"])
    assert main(["train", "--interactions", str(data), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert re.search(r"recctl: error: .*i\.csv:5: expected 4 fields", capsys.readouterr().err)
    missing = tmp_path / "ml-latest-small"
    assert main(["train", "--movielens", str(missing), "--no-download", "--out", str(tmp_path / "o")]) == 1
    assert f"{missing}: MovieLens folder not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluate_refuses_embeddings_without_holdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_csv(tmp_path / "i.csv", ROWS)
    out = tmp_path / "emb"
    assert main(["train", "--interactions", str(data), "--out", str(out), "--factors", "2", "--quiet"]) == 0
    assert main(["evaluate", "--embeddings", str(out), "--no-ann", "--quiet"]) == 1
    assert "held-out items would leak" in capsys.readouterr().err


@pytest.mark.integration
def test_evaluate_trains_and_serves_movielens_through_shards(
    movielens_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "t.md"
    argv = ["evaluate", "--movielens", str(movielens_dir), "--holdout", "5", "--factors", "16"]
    argv += ["--iterations", "8", "--shards", "3", "--quiet", "--out-table", str(table)]
    assert main(argv) == 0
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in table.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not line.startswith("| recommender")
    }
    sharded = next(name for name in rows if name.startswith("sharded HNSW in process (3 shards"))
    exact = next(name for name in rows if name.startswith("exact"))
    assert rows[sharded][0] == rows[exact][0] == "610"
    assert float(rows[sharded][7]) >= 0.95, "ANN recall@10 against exact"
    assert abs(float(rows[sharded][3]) - float(rows[exact][3])) < 0.01, "NDCG@10"
    assert float(rows[exact][3]) > 1.25 * float(rows["popularity baseline"][3])
    assert float(rows["random baseline"][1]) < float(rows["popularity baseline"][1]), "hit-rate@10"
