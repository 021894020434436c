"""The numbers of docs/evaluation.md, produced by `recctl` itself (`make evaluation-doc`).

    python benchmarks/evaluation_doc.py            # tune, train, evaluate; rewrite the marked blocks
    python benchmarks/evaluation_doc.py --quick    # a smaller search (for trying the command out)

Each block sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` and names the commands that
produced it. The numbers depend on the machine's load only through the timings (training and
evaluation are seeded), but the search is bounded by seconds too, so a loaded machine may try
fewer trials; tests/ship/test_evaluation_doc.py therefore checks the blocks' shape, not their
numbers. Minutes on a shared 2-core box; run it niced.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shardrec.tools.cli.main import main as recctl
from shardrec.tools.pipeline.evaluate_job import EXACT, ITEM_COSINE, POPULARITY, RANDOM, AnnSettings
from shardrec.tools.pipeline.evaluation import EvaluationReport

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "evaluation.md"
WORK = Path("build") / "evaluation"
TUNED = WORK / "tuned-holdout1"
BASELINE = WORK / "implicit-defaults-holdout1"
# The ALS setup this project shipped before tuning (implicit's example defaults, BM25-weighted,
# the user vectors as trained).
BASELINE_FLAGS = (
    "--model als --factors 64 --iterations 15 --regularization 0.05 --alpha 1 --weighting bm25 "
    "--bm25-k1 100 --bm25-b 0.8 --user-vectors trained"
)
TUNE_FLAGS = "--tune --tune-trials 40 --tune-seconds 300"
QUICK_TUNE_FLAGS = "--tune --tune-trials 6 --tune-seconds 60"
BLOCKS = ("evaluation-tuning", "evaluation-table", "evaluation-baseline")


def run(arguments: str) -> str:
    """`recctl <arguments>` in process, its stdout as text (progress goes to stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = recctl(shlex.split(arguments))
    if code != 0:
        raise SystemExit(f"recctl {arguments} exited {code}")
    return out.getvalue()


def table_header(k: int = 10) -> list[str]:
    """The first two lines of `recctl evaluate`'s table, as the code writes them now."""
    report = EvaluationReport(k=k, holdout=1, users=0, held_out=0, results=[], notes=[])
    return report.markdown().splitlines()[:2]


def row_names() -> list[str]:
    """The first cell of every row `recctl evaluate --embeddings DIR` writes (ip embeddings)."""
    ann = AnnSettings()
    return [
        f"{EXACT}, ip",
        f"sharded HNSW in process ({ann.shards} shards, M={ann.m}, efSearch={ann.ef_search})",
        ITEM_COSINE,
        POPULARITY,
        RANDOM,
    ]


def _fresh(path: Path) -> None:
    if path.exists():
        import shutil

        shutil.rmtree(path)


def tuning_block(tune_flags: str) -> str:
    _fresh(TUNED)
    command = f"recctl train --holdout 1 {tune_flags} --quiet --out {TUNED}"
    printed = run(command.removeprefix("recctl "))
    metadata = json.loads((TUNED / "metadata.json").read_text(encoding="utf-8"))
    tuning: dict[str, Any] = metadata["tuning"]
    search = tuning["search"]
    trials = sorted(tuning["trials"], key=lambda t: -t["ndcg"])
    validation = tuning["validation"]
    lines = [
        f"`{command}` (nice -n 10; {_machine()}):",
        "",
        "```",
        printed.rstrip(),
        "```",
        "",
        f"{search['fits']} fits (budget {search['budget_trials']} fits / "
        f"{search['budget_seconds']:g} s, stopped by {search['stopped_by']}), scored as "
        f"{len(tuning['trials'])} trials (every ALS fit with its user vectors as "
        f"{', '.join(search['user_vectors'])}) in "
        f"{search['seconds']:.0f} s wall time; validation: each user's "
        f"{validation['per_user']} most recent training interactions "
        f"({validation['held_out_interactions']} interactions of {validation['users']} users), "
        f"search seed {search['seed']}. The five best trials:",
        "",
        "| trial | fit | parameters | validation NDCG@10 | validation hit-rate@10 | seconds |",
        "|--:|--:|---|--:|--:|--:|",
    ]
    for trial in trials[:5]:
        lines.append(trial_row(trial))
    lines += [
        "",
        "The user vectors of the best fit, each choice scored on the same validation split:",
        "",
        "| trial | user vectors | validation NDCG@10 | validation hit-rate@10 |",
        "|--:|---|--:|--:|",
    ]
    best_fit = tuning["best"]["fit"]
    for trial in sorted(tuning["trials"], key=lambda t: t["trial"]):
        if trial["fit"] == best_fit:
            params = trial["params"]
            vectors = f"recent {params['recent_n']}" if params.get("user_vectors") == "recent" else "trained"
            lines.append(f"| {trial['trial']} | {vectors} | {trial['ndcg']:.4f} | {trial['hit_rate']:.4f} |")
    return "\n".join(lines) + "\n"


def trial_row(trial: dict[str, Any]) -> str:
    """One row of the five best trials (the seed left out: every trial shares it)."""
    params = " ".join(f"{k}={v}" for k, v in trial["params"].items() if k != "seed")
    return (
        f"| {trial['trial']} | {trial['fit']} | {params} | {trial['ndcg']:.4f} | {trial['hit_rate']:.4f} "
        f"| {trial['seconds']:.1f} |"
    )


def _evaluate(embeddings: Path) -> tuple[str, str]:
    table = WORK / f"{embeddings.name}.md"
    command = f"recctl evaluate --embeddings {embeddings} --quiet --out-table {table}"
    run(command.removeprefix("recctl "))
    return command, table.read_text(encoding="utf-8")


def table_block() -> str:
    command, table = _evaluate(TUNED)
    return f"`{command}`:\n\n{table}"


def baseline_block() -> str:
    _fresh(BASELINE)
    train = f"recctl train --holdout 1 {BASELINE_FLAGS} --quiet --out {BASELINE}"
    run(train.removeprefix("recctl "))
    command, table = _evaluate(BASELINE)
    return f"`{train}`, then `{command}`:\n\n{table}"


def _machine() -> str:
    import implicit

    return (
        f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, implicit {implicit.__version__}, "
        f"shared {_cores()}-core machine"
    )


def _cores() -> int:
    import os

    return os.cpu_count() or 1


def _block(name: str, body: str) -> str:
    return f"<!-- {name}:begin (make evaluation-doc) -->\n{body}<!-- {name}:end -->"


def pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- {name}:begin.*?-->\n(.*?)<!-- {name}:end -->", re.S)


def block_of(doc: str, name: str) -> str:
    """The body of the marked block `name` of `doc` (SystemExit when the markers are missing)."""
    match = pattern(name).search(doc)
    if match is None:
        raise SystemExit(f"{DOC} has no <!-- {name}:begin --> ... <!-- {name}:end -->")
    return match.group(1)


def table_rows(block: str) -> list[list[str]]:
    """The cells of the `recctl evaluate` table rows in a block (header and rule excluded)."""
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small search, for trying the command out")
    args = parser.parse_args(argv)
    doc = DOC.read_text(encoding="utf-8")
    for name in BLOCKS:
        block_of(doc, name)  # fail before minutes of work when a marker is missing
    WORK.mkdir(parents=True, exist_ok=True)
    bodies = {
        "evaluation-tuning": tuning_block(QUICK_TUNE_FLAGS if args.quick else TUNE_FLAGS),
        "evaluation-table": table_block(),
        "evaluation-baseline": baseline_block(),
    }
    for name, body in bodies.items():
        match = re.compile(rf"<!-- {name}:begin.*?-->.*?<!-- {name}:end -->", re.S).search(doc)
        assert match is not None
        doc = doc[: match.start()] + _block(name, body) + doc[match.end() :]
    DOC.write_text(doc, encoding="utf-8")
    print(f"rewrote {', '.join(BLOCKS)} in {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
