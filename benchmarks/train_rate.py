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
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import scipy.sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import machine_line, write_marked_section

from shardrec.tools.capacity.pipeline import AlsMeasurement, AlsPoint, als_iteration_estimate, fit_als_cost
from shardrec.tools.pipeline.movielens import load_movielens, resolve_movielens_dir
from shardrec.tools.pipeline.training import TrainParams, confidence_matrix, fit_factors, weight

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


def synthetic_matrix(users: int, items: int, draws: int, seed: int = 7) -> scipy.sparse.csr_matrix:
    """A seeded users x items rating matrix of `draws` (user, item) draws: users uniform, items by
    a Zipf-like popularity (rank^-0.8), ratings 1-5; repeated pairs add up."""
    import scipy.sparse

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    rows = rng.integers(0, users, size=draws)
    cols = rng.choice(items, size=draws, p=popularity / popularity.sum())
    ratings = rng.integers(1, 6, size=draws).astype(np.float32)
    return scipy.sparse.csr_matrix((ratings, (rows, cols)), shape=(users, items), dtype=np.float32)


def _check_rows(measured: AlsMeasurement, sizes: list[str], factors: list[int], repeats: int) -> list[str]:
    """Table rows: the fit's estimate against a measurement on larger seeded matrices."""
    lines = []
    for spec in sizes:
        users, items, draws = (int(float(part)) for part in spec.split("x"))
        base = TrainParams(iterations=3, threads=1, user_vectors="trained")
        matrix = weight(synthetic_matrix(users, items, draws), base)
        nnz = int(matrix.nnz)
        for f in factors:
            params = dataclasses.replace(base, factors=f)
            fit_factors(matrix, params)
            cpu = statistics.median(_measure(matrix, params, repeats))
            low, estimate, high = als_iteration_estimate(measured, nnz=nnz, rows=users + items, factors=f)
            lines.append(
                f"| {users:,} x {items:,} | {nnz:,} | {nnz / measured.nnz:.0f}x | {f} | {cpu:.3f} | "
                f"{estimate:.3f} ({low:.3f}-{high:.3f}) | {cpu / estimate:.2f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=None, help="MovieLens folder (default: as recctl)")
    parser.add_argument("--factors", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--check",
        nargs="*",
        default=["200000x20000x2000000", "1000000x50000x10000000", "200000x20000x20000000"],
        metavar="USERSxITEMSxDRAWS",
        help="seeded synthetic matrices to hold the fit's extrapolation against (3 iterations each)",
    )
    parser.add_argument("--check-factors", type=int, nargs="+", default=[64])
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
    command = "python benchmarks/train_rate.py" + (" " + " ".join(argv) if argv else "")
    measured = AlsMeasurement(command, f"{datetime.now(UTC):%Y-%m-%d}", users, items, nnz, tuple(points))
    fit = fit_als_cost(measured)
    check = _check_rows(measured, args.check, args.check_factors, max(2, args.repeats // 2))
    elapsed = time.perf_counter() - started
    lines = [
        f"<!-- {SECTION}:begin (written by `python benchmarks/train_rate.py`; edit the script, not this) -->",
        "## ALS training rate (`make bench-train`)",
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s, "
        f"{machine_line(load_start, os.getloadavg()[0], caveat='a shared machine')}. "
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
    ]
    if check:
        lines += [
            "",
            "The extrapolation against larger seeded matrices (`synthetic_matrix`: users uniform, "
            "items by popularity rank^-0.8, BM25-weighted like the MovieLens run; repeated draws add "
            "up, so nnz is below the draws; the last at the seed's ~90 nonzeros per row), the same "
            "trainer, 3 iterations per fit, against the fit above (c scaled by rows; the range as "
            "`als_iteration_estimate` gives it). `recctl capacity --pipeline` multiplies its "
            "estimate by the measured / fit ratio of these rows (`als_calibration`).",
            "",
            "| users x items | nnz | x measured nnz | factors | CPU s/iteration measured | fit (range) "
            "| measured / fit |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *check,
        ]
    lines.append(f"<!-- {SECTION}:end -->")
    section = "\n".join(lines) + "\n"
    if args.no_write:
        print(section)
    else:
        write_marked_section(DOC, section)
        print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
