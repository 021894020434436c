"""`recctl demo --canary` end to end on a small MovieLens-shaped folder (a few hundred users and
movies with taste groups, so training takes seconds) and a 1-shard x 1-replica cluster: a v2 with
other ALS parameters is promoted, and a v2 regularized into popularity (`--canary-regularization
100`) is rolled back by its overlap@10; both print the analysis table and fail no demo request."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from shardrec.tools.cli.demo_cmd import DEMO_ITEM, DEMO_USERS, FOLD_IN_CLICKS
from shardrec.tools.local.ports import free_port

pytestmark = pytest.mark.integration

DEADLINE_S = 240
GROUPS = 6


def _movielens(folder: Path) -> Path:
    """ratings.csv and movies.csv: each user rates 18 movies of its taste group 5 and 4 others 2."""
    rng = random.Random(5)
    items = list(dict.fromkeys([int(DEMO_ITEM), *map(int, FOLD_IN_CLICKS), *range(2, 300)]))
    users = max(420, *map(int, DEMO_USERS))
    rows, stamp = ["userId,movieId,rating,timestamp"], 1_000_000
    for user in range(1, users + 1):
        own = [item for n, item in enumerate(items) if n % GROUPS == user % GROUPS]
        for item in dict.fromkeys(rng.sample(own, 18) + rng.sample(items, 4)):
            stamp += 1
            rows.append(f"{user},{item},{5.0 if item in own else 2.0},{stamp}")
    folder.mkdir()
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    titles = "".join(f"{item},Movie {item} (2000),Drama\n" for item in items)
    (folder / "movies.csv").write_text("movieId,title,genres\n" + titles)
    return folder


def _demo(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path / "work"
    argv = [
        "demo", "--canary", *flags, "--movielens", str(_movielens(tmp_path / "ml")),
        "--workdir", str(workdir), "--port", str(free_port()), "--shards", "1", "--replicas", "1",
        "--skip-eval",
    ]  # fmt: skip
    state = workdir / "movielens"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shardrec.tools.cli.main", *argv],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "shardrec.tools.cli.main", "down", "--state-dir", str(state)],
            capture_output=True,
            timeout=60,
            check=False,
        )
    print(done.stdout[done.stdout.find("== canary of") :], done.stderr[-2000:])
    return done, state


def _row(stdout: str, label: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.strip().startswith(label))
    return line.strip()[len(label) :].split()


def test_a_v2_with_other_parameters_is_promoted_with_its_analysis_table(tmp_path: Path) -> None:
    done, state = _demo(tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "regularization=1.0 alpha=1.0" in out
    assert ", 0 failed;" in out
    assert _row(out, "decision") == ["passed", "promoted"]
    overlap = _row(out, "overlap@10")
    assert "FAIL" not in overlap and float(overlap[0]) >= 0.3
    for label in (
        "rank correlation",
        "score shift",
        "p99 ms active / candidate",
        "error rate active / candidate",
    ):
        assert _row(out, label)
    assert "v2 promoted: the router now answers every user from it." in out
    status = json.loads((state / "status.json").read_text())
    assert status["activeVersion"] == "v2" and status["canary"]["phase"] == "Promoted"
    assert "CanaryPromoted" in (state / "events.log").read_text()


def test_a_v2_regularized_into_popularity_is_rolled_back_by_its_overlap(tmp_path: Path) -> None:
    done, state = _demo(tmp_path, "--canary-regularization", "100")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert ", 0 failed;" in out
    assert _row(out, "decision") == ["ROLLED", "BACK"]
    assert _row(out, "overlap@10")[1] == "FAIL"
    assert "v2 rolled back by its analysis: v1 answered every request throughout." in out
    status = json.loads((state / "status.json").read_text())
    assert status["activeVersion"] == "v1" and status["canary"]["phase"] == "RolledBack"
