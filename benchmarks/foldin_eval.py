"""The fold-in section of docs/evaluation.md (`make evaluation-foldin`): how good a user folded in
from a few clicks is (shardrec.tools.pipeline.foldin_eval), on MovieLens ml-latest-small.

    python benchmarks/foldin_eval.py                  # 5 folds: every user evaluated (~minutes, niced)
    python benchmarks/foldin_eval.py --folds 2 --no-write

Seeded: only the timings depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_marked_section

from shardrec.tools.pipeline.foldin_eval import evaluate_fold_in
from shardrec.tools.pipeline.movielens import load_movielens, resolve_movielens_dir
from shardrec.tools.pipeline.training import TrainParams

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "evaluation.md"
SECTION = "evaluation-foldin"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=None, help="MovieLens folder (default: as recctl)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--recent", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args(argv)
    loaded = load_movielens(resolve_movielens_dir(args.movielens))
    report = evaluate_fold_in(
        loaded.interactions,
        TrainParams(),
        recent=args.recent,
        folds=args.folds,
        report=lambda line: print(line, file=sys.stderr, flush=True),
    )
    command = "make evaluation-foldin" + (f" (--folds {args.folds})" if args.folds != 5 else "")
    section = (
        f"<!-- {SECTION}:begin ({command}) -->\n"
        f"`python benchmarks/foldin_eval.py --folds {args.folds} --recent {' '.join(map(str, args.recent))}` "
        f"on `{loaded.source['dataset']}`:\n\n{report.markdown()}<!-- {SECTION}:end -->\n"
    )
    print(section)
    if not args.no_write:
        write_marked_section(DOC, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
