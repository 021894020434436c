"""`recctl evaluate`: offline hit-rate / NDCG / ANN recall table on held-out interactions."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from shardrec.serving.index.embeddings import EmbeddingsError
from shardrec.tools.cli.train_cmd import (
    add_source_arguments,
    add_training_arguments,
    run_training,
    source_from_args,
)
from shardrec.tools.pipeline.evaluate_job import AnnSettings, EvaluationSetupError, evaluate_embeddings
from shardrec.tools.pipeline.evaluation import EvaluationReport
from shardrec.tools.pipeline.router_client import RouterError
from shardrec.tools.pipeline.sources import SourceError

API_KEY_ENV = "SHARDREC_API_KEY"
DEFAULT_HOLDOUT = 5


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="hit-rate@k, NDCG@k and ANN recall@k on each user's most recent interactions",
        description=(
            "Evaluate embeddings trained with `recctl train --holdout N` (or, without --embeddings, "
            "train such embeddings first with the training flags below)."
        ),
    )
    parser.add_argument("--embeddings", type=Path, metavar="DIR", help="embeddings trained with --holdout")
    add_source_arguments(parser)
    parser.add_argument(
        "--holdout",
        type=int,
        metavar="N",
        help=f"held-out interactions per user (default: as trained, or {DEFAULT_HOLDOUT} when training here)",
    )
    parser.add_argument("--k", type=int, default=10, help="list length for the metrics")
    parser.add_argument("--shards", type=int, default=AnnSettings.shards, help="shards of the in-process ANN")
    parser.add_argument("--m", type=int, default=AnnSettings.m, help="HNSW M of the in-process ANN")
    parser.add_argument("--ef-construction", type=int, default=AnnSettings.ef_construction)
    parser.add_argument("--ef-search", type=int, default=AnnSettings.ef_search)
    parser.add_argument("--no-ann", action="store_true", help="skip the in-process sharded ANN")
    parser.add_argument(
        "--router", metavar="URL", help="also evaluate a running router, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument("--api-key-file", type=Path, help=f"router API key (else ${API_KEY_ENV})")
    parser.add_argument("--out-table", type=Path, metavar="FILE", help="also write the markdown table here")
    parser.add_argument("--save-embeddings", type=Path, metavar="DIR", help="keep embeddings trained here")
    add_training_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _api_key(args: argparse.Namespace) -> str | None:
    from shardrec.tools.cli.main import CliError

    if args.api_key_file is not None:
        try:
            return args.api_key_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise CliError(f"--api-key-file {args.api_key_file}: {exc.strerror}") from exc
    return os.environ.get(API_KEY_ENV) or None


def _evaluate(args: argparse.Namespace, embeddings_dir: Path, explicit_source: bool) -> EvaluationReport:
    from shardrec.tools.cli.main import CliError

    if args.k < 1:
        raise CliError(f"--k must be >= 1, got {args.k}")
    ann = None if args.no_ann else AnnSettings(args.shards, args.m, args.ef_construction, args.ef_search)
    try:
        return evaluate_embeddings(
            embeddings_dir,
            source=source_from_args(args) if explicit_source else None,
            holdout=args.holdout,
            k=args.k,
            ann=ann,
            router_url=args.router,
            api_key=_api_key(args),
            progress=not args.quiet,
        )
    except (SourceError, EmbeddingsError, EvaluationSetupError, RouterError) as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:  # e.g. the index build refusing a shard count
        raise CliError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    explicit_source = args.movielens is not None or args.interactions is not None
    if args.embeddings is not None:
        report = _evaluate(args, args.embeddings, explicit_source)
        preface = f"Embeddings: {args.embeddings}"
    else:
        holdout = DEFAULT_HOLDOUT if args.holdout is None else args.holdout
        if holdout < 1:
            from shardrec.tools.cli.main import CliError

            raise CliError(f"--holdout must be >= 1 to evaluate, got {holdout}")
        with tempfile.TemporaryDirectory(prefix="shardrec-train-") as scratch:
            target = args.save_embeddings or Path(scratch) / "embeddings"
            summary = run_training(args, target, holdout)
            args.holdout = holdout
            report = _evaluate(args, target, True)
        preface = (
            f"Embeddings: trained here (factors {args.factors}, iterations {args.iterations}) "
            f"in {summary.training_seconds:.2f} s"
        )
    table = report.markdown()
    print(preface)
    print()
    print(table, end="")
    if args.out_table is not None:
        args.out_table.parent.mkdir(parents=True, exist_ok=True)
        args.out_table.write_text(table, encoding="utf-8")
    return 0
