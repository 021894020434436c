"""`recctl crd`: print or write the CRD generated from the API models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shardrec.api.crd import CRD_FILENAME, render_crd_yaml


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("crd", help="print or write the RecommenderCluster CRD")
    parser.add_argument(
        "--out-dir",
        type=Path,
        action="append",
        default=[],
        help=f"write {CRD_FILENAME} into this folder (repeatable); print to stdout when absent",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = render_crd_yaml()
    out_dirs: list[Path] = args.out_dir
    if not out_dirs:
        print(text, end="")
    for folder in out_dirs:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CRD_FILENAME).write_text(text, encoding="utf-8")
    return 0
