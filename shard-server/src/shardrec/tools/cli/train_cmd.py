"""`recctl train`: implicit-feedback ALS embeddings from MovieLens or a CSV of interactions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shardrec.serving.index.embeddings import EmbeddingsError
from shardrec.tools.pipeline.movielens import ENV_VAR, resolve_movielens_dir
from shardrec.tools.pipeline.sources import DataSource, SourceError
from shardrec.tools.pipeline.train_job import TrainSummary, train_embeddings
from shardrec.tools.pipeline.training import AlsParams

_DEFAULTS = AlsParams()


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
    parser.add_argument("--factors", type=int, default=_DEFAULTS.factors, help="embedding dimension")
    parser.add_argument("--iterations", type=int, default=_DEFAULTS.iterations, help="ALS sweeps")
    parser.add_argument("--regularization", type=float, default=_DEFAULTS.regularization)
    parser.add_argument("--alpha", type=float, default=_DEFAULTS.alpha, help="confidence scale")
    parser.add_argument("--bm25-k1", type=float, default=_DEFAULTS.bm25_k1)
    parser.add_argument("--bm25-b", type=float, default=_DEFAULTS.bm25_b)
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--threads", type=int, default=_DEFAULTS.threads, help="0 = every core")


def source_from_args(args: argparse.Namespace) -> DataSource:
    if args.interactions is not None:
        return DataSource("csv", args.interactions)
    return DataSource("movielens", resolve_movielens_dir(args.movielens))


def params_from_args(args: argparse.Namespace) -> AlsParams:
    try:
        return AlsParams(
            factors=args.factors,
            iterations=args.iterations,
            regularization=args.regularization,
            alpha=args.alpha,
            bm25_k1=args.bm25_k1,
            bm25_b=args.bm25_b,
            seed=args.seed,
            threads=args.threads,
        )
    except ValueError as exc:
        from shardrec.tools.cli.main import CliError

        raise CliError(str(exc).replace("_", "-")) from exc


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
        )
    except (SourceError, EmbeddingsError) as exc:
        raise CliError(str(exc)) from exc


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="train item and user embeddings (implicit ALS) into an embeddings directory"
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
    held = f", {summary.held_out} held out" if summary.held_out else ""
    print(
        f"trained {summary.users} users x {summary.items} items, dimension {summary.dimension}, "
        f"on {summary.training_interactions} interactions{held} in {summary.training_seconds:.2f} s "
        f"-> {summary.out} (metric ip)"
    )
    return 0
