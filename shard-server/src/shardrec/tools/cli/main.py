"""Entry point of `recctl`. Subcommand modules register themselves through `register(subparsers)`.

Argument errors name the bad flag (argparse does) and exit 2; domain errors print one line
`recctl: error: ...` and exit 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from shardrec import __version__

# Each module exposes `register(subparsers) -> None` and sets `func` on its parsers.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "shardrec.tools.cli.crd_cmd",
    "shardrec.tools.cli.index_cmd",
    "shardrec.tools.cli.train_cmd",
    "shardrec.tools.cli.evaluate_cmd",
    "shardrec.tools.cli.local_cmd",
    "shardrec.tools.cli.demo_cmd",
    "shardrec.tools.cli.capacity_cmd",
)


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recctl",
        description="Sharded, replicated recommendation serving: train, index, serve, operate.",
    )
    parser.add_argument("--version", action="version", version=f"recctl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        print(f"recctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Under `python -m shardrec.tools.cli.main` (the local runtime's builds) this module runs as
    # __main__, a second copy whose CliError is not the one the subcommands raise: call the
    # package's own main so their errors end as one line, not a traceback.
    from shardrec.tools.cli.main import main as package_main

    sys.exit(package_main())
