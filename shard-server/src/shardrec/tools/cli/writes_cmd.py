"""`recctl writes export|fold`: take a layout's logged item writes out of its running leaders and
fold them into an embeddings directory.

Why: the operator carries logged writes into a new layout (a version, a shard count) and back
into a kept layout the serving one was carried from, but not into a kept layout whose replicas are
gone or that is two layouts back (docs/operator.md, "Item writes"); such a rollback with writes on
needs writes turned off, and that layout then serves its artifact as built. These two commands put
the writes into an embeddings source first (also the way to turn writes off without losing them):

    recctl writes export --layout <id> --leader URL-of-shard-0 --leader URL-of-shard-1 ... \\
        --token-file token --out carry/        # the leaders' logs as a carry folder (a cut)
    recctl writes fold --embeddings emb/ --carry-dir carry/ --out emb-with-writes/

Writes acknowledged after the export are not in it: stop writing (take the write permission from
the API keys) before exporting. The fold is what `recctl index build --carry-dir` applies (upserts
replace or add an item's vector, deletes remove the item and its seen entries).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx

from shardrec.serving.credentials import TokenFile, TokenFileError
from shardrec.serving.index.carry import apply_to_embeddings, carried_state
from shardrec.serving.index.embeddings import EmbeddingsError, load_embeddings, write_embeddings_dir
from shardrec.serving.index.write_log import WriteLogError
from shardrec.serving.shard.log_export import ExportError, export_carry
from shardrec.serving.tls import client_context
from shardrec.tools.cli.main import CliError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("writes", help="export logged item writes and fold them into embeddings")
    commands = parser.add_subparsers(dest="writes_command", metavar="SUBCOMMAND", required=True)
    export = commands.add_parser(
        "export", help="read every leader's write log over HTTP into a carry folder (a cut)"
    )
    export.add_argument("--layout", required=True, help="layout id the leaders serve (names the cut)")
    export.add_argument(
        "--leader",
        action="append",
        required=True,
        help="base URL of one shard's replica 0 (repeat: one per shard, e.g. through kubectl port-forward)",
    )
    export.add_argument(
        "--token-file",
        type=Path,
        required=True,
        help="file holding the shard admin token (on Kubernetes: the `send` key of <cluster>-shard-token)",
    )
    export.add_argument("--ca", type=Path, help="CA certificate of https:// shards (the cluster's shard CA)")
    export.add_argument(
        "--tls-name", help="the name shard certificates hold, when the URLs name another host (port-forward)"
    )
    export.add_argument("--out", type=Path, required=True, help="carry folder to write")
    export.set_defaults(func=run_export)
    fold = commands.add_parser("fold", help="apply a carry folder's writes to an embeddings directory")
    fold.add_argument("--embeddings", type=Path, required=True, help="embeddings directory to start from")
    fold.add_argument("--carry-dir", type=Path, required=True, help="carry folder (recctl writes export)")
    fold.add_argument("--out", type=Path, required=True, help="embeddings directory to write")
    fold.set_defaults(func=run_fold)


def run_export(args: argparse.Namespace) -> int:
    try:
        token = TokenFile(args.token_file).tokens()[0]
    except TokenFileError as exc:
        raise CliError(f"--token-file: {exc}") from None
    verify: Any = client_context(args.ca) if args.ca is not None else True
    with httpx.Client(verify=verify) as client:
        try:
            cut = export_carry(client, args.leader, token, args.layout, args.out, tls_name=args.tls_name)
        except (ExportError, WriteLogError, OSError) as exc:
            raise CliError(f"writes export: {exc}") from None
    total = sum(cut.upto)
    print(
        f"exported the writes of layout {cut.from_layout} up to {list(cut.upto)} "
        f"({total} records) to {args.out}"
    )
    return 0


def run_fold(args: argparse.Namespace) -> int:
    if args.out.resolve() == args.embeddings.resolve():
        raise CliError("--out must be another directory than --embeddings")
    try:
        cut, state = carried_state(args.carry_dir)
        embeddings = apply_to_embeddings(load_embeddings(args.embeddings), state)
        write_embeddings_dir(
            args.out,
            embeddings.items,
            embeddings.item_ids,
            users=embeddings.users,
            user_ids=embeddings.user_ids,
            seen=embeddings.seen_pairs(),
            metadata=embeddings.metadata or None,
        )
    except (WriteLogError, EmbeddingsError, OSError) as exc:
        raise CliError(f"writes fold: {exc}") from None
    upserts = sum(1 for vector in state.values() if vector is not None)
    print(
        f"folded {upserts} upserts and {len(state) - upserts} deletes of layout {cut.from_layout} into "
        f"{args.out} ({len(embeddings.item_ids)} items)"
    )
    return 0
