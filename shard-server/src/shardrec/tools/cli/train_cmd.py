"""`recctl train`: implicit-feedback embeddings (ALS or BPR, optionally tuned) from MovieLens or a
CSV of interactions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shardrec.serving.index.embeddings import EmbeddingsError
from shardrec.tools.pipeline.movielens import ENV_VAR, resolve_movielens_dir
from shardrec.tools.pipeline.sources import DataSource, SourceError
from shardrec.tools.pipeline.train_job import TrainSummary, train_embeddings
from shardrec.tools.pipeline.training import MODELS, USER_VECTORS, WEIGHTINGS, TrainParams
from shardrec.tools.pipeline.tuning import SPACE, SearchBudget

_DEFAULTS = TrainParams()
_BUDGET = SearchBudget()


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--movielens",
        type=Path,
        metavar="DIR",
        help=f"MovieLens folder (ratings.csv, movies.csv); default ${ENV_VAR}, else "
        "../shared/data/ml-latest-small beside the checkout",
    )
    group.add_argument(
        "--interactions", type=Path, metavar="CSV", help="CSV with header user,item,rating,timestamp"
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading ml-latest-small from GroupLens when the folder is missing",
    )


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODELS, default=_DEFAULTS.model, help="als or bpr")
    parser.add_argument("--factors", type=int, default=_DEFAULTS.factors, help="embedding dimension")
    parser.add_argument(
        "--iterations", type=int, default=_DEFAULTS.iterations, help="ALS sweeps / BPR epochs"
    )
    parser.add_argument("--regularization", type=float, default=_DEFAULTS.regularization)
    parser.add_argument("--alpha", type=float, default=_DEFAULTS.alpha, help="confidence scale (ALS)")
    parser.add_argument(
        "--weighting", choices=WEIGHTINGS, default=_DEFAULTS.weighting, help="rating weighting (ALS)"
    )
    parser.add_argument("--bm25-k1", type=float, default=_DEFAULTS.bm25_k1)
    parser.add_argument("--bm25-b", type=float, default=_DEFAULTS.bm25_b)
    parser.add_argument("--learning-rate", type=float, default=_DEFAULTS.learning_rate, help="BPR only")
    parser.add_argument(
        "--user-vectors",
        choices=USER_VECTORS,
        default=_DEFAULTS.user_vectors,
        help="stored user vectors (ALS): the trained ones, or each user folded in from its --recent-n "
        "most recent training interactions",
    )
    parser.add_argument(
        "--recent-n",
        type=int,
        default=_DEFAULTS.recent_n,
        metavar="N",
        help="interactions a recent user vector is folded in from",
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--threads", type=int, default=_DEFAULTS.threads, help="0 = every core")
    tune = parser.add_argument_group("tuning (random search on a validation split of the training data)")
    tune.add_argument(
        "--tune",
        action="store_true",
        help="search the parameters first, judged by validation NDCG@10; the flags above are its first trial",
    )
    tune.add_argument("--tune-trials", type=int, default=_BUDGET.trials, help="at most this many trials")
    tune.add_argument("--tune-seconds", type=float, default=_BUDGET.seconds, help="at most this long")
    tune.add_argument(
        "--tune-families",
        default=",".join(_BUDGET.families),
        help=f"comma-separated model families to search (of {', '.join(SPACE)})",
    )
    tune.add_argument(
        "--validation-holdout",
        type=int,
        default=_BUDGET.per_user,
        metavar="N",
        help="validation interactions per user, carved from the training ones",
    )
    tune.add_argument("--tune-seed", type=int, default=_BUDGET.seed, help="seed of the random search")
    tune.add_argument(
        "--tune-recent",
        default=",".join(str(n) for n in _BUDGET.recent),
        metavar="N,N",
        help="ALS user vectors folded in from the last N fit interactions, scored beside the trained "
        "ones for every ALS fit ('' = trained only)",
    )


def source_from_args(args: argparse.Namespace) -> DataSource:
    if args.interactions is not None:
        return DataSource("csv", args.interactions)
    return DataSource("movielens", resolve_movielens_dir(args.movielens))


def params_from_args(args: argparse.Namespace) -> TrainParams:
    try:
        return TrainParams(
            model=args.model,
            factors=args.factors,
            iterations=args.iterations,
            regularization=args.regularization,
            alpha=args.alpha,
            weighting=args.weighting,
            bm25_k1=args.bm25_k1,
            bm25_b=args.bm25_b,
            learning_rate=args.learning_rate,
            user_vectors=args.user_vectors,
            recent_n=args.recent_n,
            seed=args.seed,
            threads=args.threads,
        )
    except ValueError as exc:
        from shardrec.tools.cli.main import CliError

        raise CliError(str(exc).replace("_", "-")) from exc


def budget_from_args(args: argparse.Namespace) -> SearchBudget | None:
    if not args.tune:
        return None
    try:
        return SearchBudget(
            trials=args.tune_trials,
            seconds=args.tune_seconds,
            families=tuple(f.strip() for f in args.tune_families.split(",") if f.strip()),
            per_user=args.validation_holdout,
            seed=args.tune_seed,
            recent=tuple(int(n) for n in args.tune_recent.split(",") if n.strip()),
        )
    except ValueError as exc:
        from shardrec.tools.cli.main import CliError

        raise CliError(f"--tune: {exc}") from exc


def _report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_training(args: argparse.Namespace, out: Path, holdout: int) -> TrainSummary:
    from shardrec.tools.cli.main import CliError

    if holdout < 0:
        raise CliError(f"--holdout must be >= 0, got {holdout}")
    try:
        return train_embeddings(
            source_from_args(args),
            out,
            params_from_args(args),
            holdout=holdout,
            download=not args.no_download,
            progress=not args.quiet,
            tune=budget_from_args(args),
            report=None if args.quiet else _report,
        )
    except (SourceError, EmbeddingsError) as exc:
        raise CliError(str(exc)) from exc


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="train item and user embeddings (implicit ALS or BPR) into an embeddings directory"
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="embeddings directory to write"
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        metavar="N",
        help="leave each user's N most recent interactions out (for `recctl evaluate`); 0 = train on all",
    )
    add_training_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = run_training(args, args.out, args.holdout)
    print(describe_summary(summary))
    return 0


def describe_summary(summary: TrainSummary) -> str:
    """What `recctl train` prints: the tuning's outcome, the model, its offline quality."""
    lines = []
    if summary.tuning is not None:
        tuning = summary.tuning
        lines.append(
            f"tuned: {len(tuning.trials)} trials ({tuning.fits} fits) in {tuning.seconds:.1f} s "
            f"(stopped by {tuning.stopped_by}); "
            f"best trial {tuning.best.number}: validation NDCG@10 {tuning.best.ndcg:.4f}, "
            f"hit-rate@10 {tuning.best.hit_rate:.4f}"
        )
    lines.append(f"parameters: {summary.params.describe()}")
    held = f", {summary.held_out} held out" if summary.held_out else ""
    lines.append(
        f"trained {summary.users} users x {summary.items} items, dimension {summary.dimension}, "
        f"on {summary.training_interactions} interactions{held} in {summary.training_seconds:.2f} s "
        f"-> {summary.out} (metric ip)"
    )
    quality = summary.metadata.get("quality")
    if quality:
        lines.append(
            f"quality ({quality['split']} split): hit-rate@10 {quality['hit_rate_at_10']:.4f}, "
            f"NDCG@10 {quality['ndcg_at_10']:.4f}"
        )
    return "\n".join(lines)
