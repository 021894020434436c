"""`recctl index build` and `recctl index verify`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shardrec.api.commands import IndexBuildFlags
from shardrec.serving.index.build import BuildError, build_layout
from shardrec.serving.index.embeddings import EmbeddingsError
from shardrec.serving.index.layout import LayoutError, verify_layout
from shardrec.serving.index.scoring import METRICS
from shardrec.tools.cli.main import CliError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("index", help="build and verify sharded HNSW index layouts")
    commands = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    build = commands.add_parser("build", help="build a layout from an embeddings directory")
    build.add_argument(
        "--embeddings", type=Path, required=True, help="embeddings directory (docs/embeddings-format.md)"
    )
    build.add_argument(
        "--out", type=Path, required=True, help="layout folder to create (must not hold a layout)"
    )
    build.add_argument("--version", required=True, help="index version label, e.g. v3 or 2026-11-23")
    build.add_argument("--shards", type=int, required=True, help="number of shards (partitions)")
    build.add_argument("--metric", choices=METRICS, default="cosine", help="similarity (default cosine)")
    build.add_argument("--m", type=int, default=16, help="HNSW graph degree M (default 16)")
    build.add_argument("--ef-construction", type=int, default=200, help="HNSW ef_construction (default 200)")
    build.add_argument(
        IndexBuildFlags.WORKERS,
        type=int,
        default=None,
        help="build threads (default: the CPUs this process may use: affinity and CPU quota)",
    )
    build.add_argument(
        "--layout", default=None, help="layout id recorded in layout.json (default: --out's name)"
    )
    build.add_argument(
        "--dimension", type=int, default=None, help="fail unless the embeddings have this dimension"
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=run_build)

    verify = commands.add_parser("verify", help="check manifests, shard numbering and every sha256")
    verify.add_argument("layout_dir", type=Path, metavar="DIR", help="layout folder")
    verify.set_defaults(func=run_verify)


def run_build(args: argparse.Namespace) -> int:
    try:
        manifest = build_layout(
            args.embeddings,
            args.out,
            version=args.version,
            shards=args.shards,
            metric=args.metric,
            m=args.m,
            ef_construction=args.ef_construction,
            workers=args.workers,
            layout=args.layout,
            expected_dimension=args.dimension,
            progress=not args.no_progress,
        )
    except (BuildError, EmbeddingsError, LayoutError) as exc:
        raise CliError(str(exc)) from exc
    counts = [entry.count for entry in manifest.shard_entries]
    print(
        f"built layout {manifest.layout} (version {manifest.version}) in {args.out}: {manifest.item_count} "
        f"items in {manifest.shards} shards {counts}, dimension {manifest.dimension}, "
        f"metric {manifest.metric}, {manifest.users.count if manifest.users else 0} users, "
        f"{manifest.build_seconds:.1f}s"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        manifest = verify_layout(args.layout_dir)
    except LayoutError as exc:
        raise CliError(str(exc)) from exc
    summary = {
        "layout": manifest.layout,
        "version": manifest.version,
        "shards": manifest.shards,
        "items": manifest.item_count,
        "dimension": manifest.dimension,
        "metric": manifest.metric,
        "users": manifest.users.count if manifest.users else 0,
    }
    print(f"ok: {json.dumps(summary)}")
    return 0
