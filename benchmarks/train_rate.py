"""The ALS training rate of the project's own trainer on MovieLens ml-latest-small (`make bench-train`).

    python benchmarks/train_rate.py                 # rewrite the train-rate section of docs/benchmarks.md
    python benchmarks/train_rate.py --no-write      # print it only

Fits `shardrec.tools.pipeline.training.fit_factors` (implicit's CPU ALS, conjugate gradient, what
`recctl train` runs) on the BM25-weighted ratings at several factor counts, one thread, and reports
the process CPU seconds per iteration. `recctl capacity --pipeline` extrapolates these points
(copied into `shardrec/tools/capacity/pipeline.py` MEASURED_ALS; tests/ship/test_train_points.py
fails until the two agree) by the cost of one CG ALS iteration, `a x nnz x f + b x (users + items)
x f^2`, to the seed's 100M users x 10M items.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import scipy.sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_marked_section

from shardrec.tools.capacity.pipeline import AlsMeasurement, AlsPoint, fit_als_cost
from shardrec.tools.pipeline.movielens import load_movielens, resolve_movielens_dir
from shardrec.tools.pipeline.training import TrainParams, confidence_matrix, fit_factors

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "train-rate"


def _measure(matrix: scipy.sparse.csr_matrix, params: TrainParams, repeats: int) -> list[float]:
    """Process CPU seconds per iteration of each of `repeats` fits."""
    seconds = []
    for _ in range(repeats):
        started = time.process_time()
        fit_factors(matrix, params)
        seconds.append((time.process_time() - started) / params.iterations)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=None, help="MovieLens folder (default: as recctl)")
    parser.add_argument("--factors", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    loaded = load_movielens(resolve_movielens_dir(args.movielens))
    base = TrainParams(iterations=args.iterations, threads=1, user_vectors="trained")
    matrix, user_ids, item_ids = confidence_matrix(loaded.interactions, base)
    nnz, users, items = int(matrix.nnz), len(user_ids), len(item_ids)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    points = []
    for factors in args.factors:
        params = dataclasses.replace(base, factors=factors)
        fit_factors(matrix, params)  # warm-up: imports, thread pool, page cache
        per_iteration = _measure(matrix, params, args.repeats)
        points.append(
            AlsPoint(
                factors=factors,
                cpu_s_median=statistics.median(per_iteration),
                cpu_s_min=min(per_iteration),
                cpu_s_max=max(per_iteration),
            )
        )
    elapsed = time.perf_counter() - started
    command = "python benchmarks/train_rate.py" + (" " + " ".join(argv) if argv else "")
    measured = AlsMeasurement(command, f"{datetime.now(UTC):%Y-%m-%d}", users, items, nnz, tuple(points))
    fit = fit_als_cost(measured)
    lines = [
        f"<!-- {SECTION}:begin (written by `python benchmarks/train_rate.py`; edit the script, not this) -->",
        "## ALS training rate (`make bench-train`)",
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}, "
        f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end (a shared machine). "
        f"MovieLens {loaded.source['dataset']}: {users:,} users x {items:,} items, nnz {nnz:,} "
        f"BM25-weighted ratings. `fit_factors` (what `recctl train` runs: implicit "
        "AlternatingLeastSquares, conjugate gradient, float32) with one thread, "
        f"{args.iterations} iterations per fit after a warm-up fit; process CPU seconds per iteration "
        f"over {args.repeats} fits.",
        "",
        "| factors | CPU s/iteration (median) | min | max | fit a·nnz·f + b·(users+items)·f² + c |",
        "|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        modelled = fit.cpu_seconds(nnz=nnz, rows=users + items, factors=point.factors, overhead="constant")
        lines.append(
            f"| {point.factors} | {point.cpu_s_median:.4f} | {point.cpu_s_min:.4f} | "
            f"{point.cpu_s_max:.4f} | {modelled:.4f} |"
        )
    lines += [
        "",
        f"Least-squares fit on the medians (coefficients >= 0): a = {fit.a_ns:.2f} ns per "
        f"(nonzero x factor), b = {fit.b_ns:.3f} ns per (row x factor²), c = {fit.c_s:.4f} s per "
        "iteration independent of the factors (at this size: whether it grows with rows or with "
        "nonzeros is not separated by one data set). `recctl capacity --pipeline` extrapolates it; "
        "the rows are copied into `MEASURED_ALS` of "
        "[pipeline.py](../shard-server/src/shardrec/tools/capacity/pipeline.py).",
        f"<!-- {SECTION}:end -->",
    ]
    section = "\n".join(lines) + "\n"
    if args.no_write:
        print(section)
    else:
        write_marked_section(DOC, section)
        print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
