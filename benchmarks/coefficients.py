"""The capacity coefficients file (`benchmarks/coefficients.json`): write it, derive it, measure it.

    python benchmarks/coefficients.py derive --results RESULTS.json [--out FILE]
    python benchmarks/coefficients.py measure [--items 200000 --dimension 64 --shards 4] [--out FILE]

`measure` is a short first measurement on this machine with what exists (the index builder,
in-process hnswlib, real shard and router processes on 127.0.0.1). `make bench` supersedes each
field it measures: provenance entries record which command produced which field, and a field
measured again drops out of the older entry.

Every number written here comes from a measurement on this machine; nothing is a guess.

This file is the command line; the work is in
    coefficient_file.py        merge measured fields into the file (write_coefficients, update_from_run)
    coefficient_derivation.py  coefficient fields from measurements (pure)
    coefficient_measure.py     the `measure` steps (offline, then real processes)
    coefficient_harness.py     shard and router processes, /proc CPU and memory, load loops
    raw_http.py                byte-exact HTTP/1.1 exchanges and the load client
The file's format is the capacity planner's: `shardrec.tools.capacity.coefficients`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coefficient_derivation import coefficients_from_bench
from coefficient_file import DEFAULT_PATH, write_coefficients
from coefficient_measure import measure

from shardrec.tools.capacity.coefficients import load_coefficients

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/coefficients.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    derive = sub.add_parser("derive", help="write coefficients from a bench results JSON")
    derive.add_argument("--results", type=Path, required=True)
    derive.add_argument("--out", type=Path, default=DEFAULT_PATH)
    run = sub.add_parser("measure", help="a short first measurement on this machine")
    run.add_argument("--items", type=int, default=200_000)
    run.add_argument("--dimension", type=int, default=64)
    run.add_argument("--shards", type=int, default=4)
    run.add_argument("--m", type=int, default=16)
    run.add_argument("--ef-construction", type=int, default=200)
    run.add_argument("--users", type=int, default=100_000)
    run.add_argument("--queries", type=int, default=1000)
    run.add_argument("--recall", type=float, default=0.95)
    run.add_argument("--requests", type=int, default=3000, help="requests per CPU measurement")
    run.add_argument("--router-items", type=int, default=20_000)
    run.add_argument("--router-shards", type=int, nargs="+", default=[1, 2, 8])
    run.add_argument("--file-points-items", type=int, default=20_000)
    run.add_argument("--latency-requests", type=int, default=3000)
    run.add_argument("--check-rates", type=float, nargs="+", default=[100.0, 300.0])
    run.add_argument("--check-requests", type=int, default=3000)
    run.add_argument("--check-out", type=Path, default=HERE / "tailsim_check.json")
    run.add_argument("--work-dir", default=None, help="where to create the work folder")
    run.add_argument("--resume", default=None, help="reuse the offline part of an earlier work folder")
    run.add_argument("--out", type=Path, default=DEFAULT_PATH)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        if args.command == "derive":
            results = json.loads(args.results.read_text(encoding="utf-8"))
            existing = load_coefficients(args.out) if args.out.exists() else None
            written = write_coefficients(args.out, coefficients_from_bench(results, existing))
        else:
            written = write_coefficients(args.out, measure(args))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        print(f"coefficients: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(written.provenance)} provenance entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
