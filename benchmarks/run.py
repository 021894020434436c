"""Benchmark harness: `python benchmarks/run.py [--size 200k|1m] [--seconds N] [--quick]`.

Seeded synthetic clustered data, a layout of S shards, efSearch tuned to recall@10 >= target
(against exact brute force), then side by side on this machine: in-process hnswlib (single
query 1 thread; batches all cores), the shard server alone under wrk, and, when
`benchmarks/router_bench.py` exists, the router rows it returns (`run(context) -> list[Row]`);
with --with-chroma, Chroma's HTTP server at the same recall (benchmarks/chroma_bench.py).
Writes the table to docs/benchmarks.md with the command that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Dataset,
    Row,
    ensure_layout,
    machine_line,
    make_dataset,
    markdown_table,
    marked_sections,
)
from inprocess import InProcessShards, batched_baseline, single_query_baseline, tune_ef
from shard_load import shard_rows

QUICK_NOTE = "**Quick run (3 s per scenario): proves the harness works; not a measurement.**"
SIZES = {"200k": (200_000, 64), "1m": (1_000_000, 64), "20k": (20_000, 64)}


@dataclass
class BenchContext:
    """What a router benchmark (benchmarks/router_bench.py) receives."""

    work: Path
    layout: Path
    data: Dataset
    ef_search: int
    k: int
    seconds: float
    connections: int
    batch: int
    inprocess_single: Row
    inprocess_batched: Row
    notes: list[str] = field(default_factory=list)
    baselines: Callable[[float], tuple[float, float]] | None = None
    """The in-process baselines measured again for `seconds`: (single q/s, batched q/s), for the
    router's interleaved pass (router_load.py)."""
    headline: str = ""
    """That pass's section (heading, method, table), written under the main table."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="200k", help="items x 64 dims (default 200k)"
    )
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--metric", choices=["cosine", "ip", "l2"], default="cosine")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries for recall")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections for single queries")
    parser.add_argument("--batch", type=int, default=64, help="queries per batch")
    parser.add_argument(
        "--quick", action="store_true", help="3 s runs: proves the harness, not a measurement"
    )
    parser.add_argument("--skip-router", action="store_true")
    parser.add_argument(
        "--with-chroma",
        action="store_true",
        help="also Chroma's HTTP server at the same recall (benchmarks/chroma_bench.py; own venv)",
    )
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench-out")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args()


def _machine() -> str:
    return machine_line(
        os.getloadavg()[0], caveat="shared machine: compare CPU ms per request more than requests per second"
    )


def _router_rows(context: BenchContext) -> list[Row]:
    if not (Path(__file__).parent / "router_bench.py").exists():
        context.notes.append("Router rows: benchmarks/router_bench.py not present yet.")
        return []
    import router_bench

    rows: list[Row] = router_bench.run(context)
    return rows


def _baselines(  # noqa: PLR0917 - two call sites, the run's parts
    shards: InProcessShards, data: Dataset, args: argparse.Namespace, ef: int, recall: float, seconds: float
) -> tuple[Row, Row]:
    """The in-process rows the router's ratios are to, each measured for `seconds`: single
    queries on one thread, batches."""
    single = single_query_baseline(shards, data.queries, args.k, seconds, recall=recall, ef=ef)
    batched = batched_baseline(shards, data.queries, args.k, seconds, batch=args.batch, recall=recall, ef=ef)
    return single, batched


def main() -> int:
    args = parse_args()
    if args.quick:
        args.seconds = 3.0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    machine = _machine()
    count, dimension = SIZES[args.size]
    data = make_dataset(
        args.work_dir, count, dimension, queries=args.queries, k=args.k, metric=args.metric, seed=args.seed
    )
    layout = ensure_layout(args.work_dir, data, args.shards, m=16, ef_construction=200)
    shards = InProcessShards.load(layout)
    ef, recall, curve = tune_ef(shards, data, args.k, args.target_recall)
    shards.set_ef(ef)
    print(f"efSearch {ef}: recall@{args.k} {recall:.3f}", file=sys.stderr)
    single, batched = _baselines(shards, data, args, ef, recall, args.seconds)
    rows = [single, batched]
    rows += shard_rows(
        args.work_dir,
        layout,
        data,
        ef=ef,
        k=args.k,
        seconds=args.seconds,
        connections=args.connections,
        batch=args.batch,
    )

    def baselines(seconds: float) -> tuple[float, float]:
        single_again, batched_again = _baselines(shards, data, args, ef, recall, seconds)
        return single_again.queries_per_s, batched_again.queries_per_s

    context = BenchContext(
        args.work_dir, layout, data, ef, args.k, args.seconds, args.connections, args.batch, single, batched,
        baselines=baselines,
    )  # fmt: skip
    if not args.skip_router:
        rows += _router_rows(context)
    if args.with_chroma:
        from chroma_bench import chroma_rows

        chroma, summary, _ = chroma_rows(
            args.work_dir, data, k=args.k, seconds=args.seconds, connections=args.connections,
            target_recall=single.recall, ours=rows,
        )  # fmt: skip
        rows += chroma
        context.notes.append(summary)
    command = "python benchmarks/run.py " + shlex.join(sys.argv[1:])
    write_report(args, machine, data, layout, curve, ef, rows, context, command, time.monotonic() - started)
    if not args.quick:
        # The capacity planner's coefficients follow the code: a full run refreshes them.
        from coefficient_file import update_from_run

        update_from_run(args.work_dir / "results.json", REPO / "benchmarks" / "coefficients.json")
    for row in rows:
        print(
            f"{row.scenario}: {row.queries_per_s:,.0f} q/s, p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms",
            file=sys.stderr,
        )
    return 0


def write_report(  # noqa: PLR0917 - one call site, every part of the report
    args: argparse.Namespace,
    machine: str,
    data: Dataset,
    layout: Path,
    curve: list[tuple[int, float]],
    ef: int,
    rows: list[Row],
    context: BenchContext,
    command: str,
    elapsed: float,
) -> None:
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
        ).stdout.strip()
        or "unknown"
    )
    curve_text = ", ".join(f"ef {e}: {r:.3f}" for e, r in curve)
    text = f"""# Benchmarks

Generated by `{command}` (also `make bench`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {commit}
in {elapsed:.0f} s.{" " + QUICK_NOTE if args.quick else ""}

- Machine: {machine}.
- Data: {data.name}: {len(data.items):,} items x {data.items.shape[1]} dims, seeded clustered vectors;
  {len(data.queries)} held-out queries from the same distribution; metric {data.metric}.
- Layout: {args.shards} shards (jump hash of item id), hnswlib M=16, ef_construction=200 (`{layout.name}`).
- Recall@{args.k} of search-every-shard-and-merge against exact brute force, by efSearch: {curve_text}.
  Every row below uses efSearch {ef}, the smallest reaching {args.target_recall}.
- Load generator: `wrk` (C, one thread) with a Lua script cycling through distinct binary bodies; its own
  CPU per request is listed so it can be seen not to be the bottleneck.
- CPU ms/request per process = CPU time of that process during the run / requests answered (for batch
  rows, per batch). RSS is the resident set after the run. "—" = not applicable.
- Peers (Chroma's HTTP server, Redis's query engine and Vector Sets, Qdrant Edge) on the same vectors at equal
  recall, with the P3 verdict: the "Peers side by side" section below (`make bench-peers`), a run
  of its own.

{markdown_table(rows).replace("nan", "—")}
"""
    for note in context.notes:
        text += f"\n- {note}"
    if context.headline:
        text = f"{text.rstrip()}\n\n{context.headline}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Sections other commands write (make bench-ab, cutover_window.py) are their own runs: keep them.
    with contextlib.suppress(OSError):
        kept = marked_sections(args.out.read_text())
        if kept:
            text = text.rstrip() + "\n\n" + kept
    args.out.write_text(text.rstrip() + "\n")
    raw = {
        "command": command,
        "machine": machine,
        "ef_search": ef,
        "recall_curve": curve,
        "rows": [row.as_json() for row in rows],
    }
    (args.work_dir / "results.json").write_text(json.dumps(raw, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
