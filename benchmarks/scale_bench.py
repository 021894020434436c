"""Search cost at scale: what one shard needs, in ef and CPU, for a recall target, by items and dimension.

    python benchmarks/scale_bench.py --sizes 100k --dims 64,256  # one section per run
    python benchmarks/scale_bench.py --sizes 1m --dims 64        # the long one (10M not run yet)
    python benchmarks/scale_bench.py --quick                     # 20k x 32: a smoke run, no doc
    make bench-scale                                             # 100k x 64, niced, writes the doc

For each (items, dimension): seeded embeddings whose variance lives in half the axes
(`synthetic.low_rank_clustered`), built by the real builder (`build_layout`, cosine,
M=16, efConstruction=200) as one shard and as S shards; held-out queries from the same
distribution with exact top-110 by brute force. Then:

- build rate (items/s, wall, all cores) and index bytes per item;
- recall@10 against ef for one shard and for S shards merged (each shard asked for 10 at that ef,
  merged by score, as the router does); the smallest ef reaching 0.90 / 0.95 / 0.98;
- CPU per query at the one-shard ef for 0.95, through `ShardIndex.search` one query at a time on
  one thread, without exclusions and with 100 excluded items (the query's exact neighbours 11-110,
  as a user's seen items sit near the user: the shard fetches k + 100).

Numbers go to build/bench-scale/results.json and, with --write-doc, to the marked section of
docs/benchmarks.md (`benchmarks/common.write_marked_section`); tests/ship/test_benchmark_docs.py
checks that the committed table has the shape `render` writes. `recctl capacity` plans from these
rows: each is a point of `shardrec/tools/capacity/scale.py` (MEASURED, copied by hand with its
command), and tests/ship/test_scale_points.py fails until a new or re-run table is copied there.
Timings are CPU time of this process (`time.process_time`) where they are per query, so a shared
machine's other load inflates them less than wall time would; the build is wall time with every core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coefficient_file import host_description
from common import REPO, write_marked_section

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.scoring import exact_top_k
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.synthetic import low_rank_clustered, participation_ratio


def markers(items: Sequence[int], dimensions: Sequence[int]) -> tuple[str, str]:
    """The doc section of one run, named by its sizes and dimensions: each run writes its own
    table, so the long runs (1M, 10M, 256 dimensions) are repeated apart from the short ones."""
    sizes = "-".join(size_label(count, 0).split(" x ")[0].lower() for count in items)
    name = f"bench-scale-{sizes}-d" + "-".join(str(dimension) for dimension in dimensions)
    return f"<!-- {name}:begin (make bench-scale) -->", f"<!-- {name}:end -->"


K = 10
EXCLUDED = 100
TARGETS = (0.90, 0.95, 0.98)
EF_GRID = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
PLANNER_EF = 24  # the fixed efSearch `recctl capacity` planned with before it fitted these tables
HEADER = (
    "| items x dim | PR | build items/s | bytes/item | ef@0.90 | ef@0.95 | ef@0.98 "
    f"| S merged: ef@0.90 | ef@0.95 | ef@0.98 | recall@10 at ef {PLANNER_EF} | S merged "
    f"| CPU µs/query at ef {PLANNER_EF} | at ef@0.95 | at ef@0.95, 100 excluded |"
)
ALIGN = "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ScaleResult:
    items: int
    dimension: int
    shards: int
    queries: int
    participation_ratio: float
    build_items_per_second: float
    bytes_per_item: float
    recall_single: dict[int, float]  # ef -> recall@10, one shard
    recall_merged: dict[int, float]  # ef -> recall@10, S shards merged
    cpu_us_per_query_planner_ef: float  # at PLANNER_EF, no exclusions
    cpu_us_per_query: float
    cpu_us_per_query_excluded: float
    ef_measured: int  # the ef the CPU columns ran at


def parse_size(text: str) -> int:
    """`100k`, `1m`, `10m`, or a plain number."""
    lowered = text.strip().lower()
    for suffix, factor in (("k", 1_000), ("m", 1_000_000)):
        if lowered.endswith(suffix):
            return int(float(lowered[:-1]) * factor)
    return int(lowered)


def size_label(items: int, dimension: int) -> str:
    if items % 1_000_000 == 0:
        return f"{items // 1_000_000}M x {dimension}"
    return f"{items // 1000}k x {dimension}"


def ef_needed(recalls: dict[int, float], target: float) -> int | None:
    """The smallest measured ef whose recall reaches `target` (None: not within the grid)."""
    reached = [ef for ef, recall in sorted(recalls.items()) if recall >= target]
    return reached[0] if reached else None


def _ef(value: int | None) -> str:
    return str(value) if value is not None else f"> {EF_GRID[-1]}"


def row(result: ScaleResult) -> str:
    return (
        f"| {size_label(result.items, result.dimension)} | {result.participation_ratio:.0f} "
        f"| {result.build_items_per_second:.0f} | {result.bytes_per_item:.0f} "
        + " ".join(f"| {_ef(ef_needed(result.recall_single, target))}" for target in TARGETS)
        + "".join(f" | {_ef(ef_needed(result.recall_merged, target))}" for target in TARGETS)
        + f" | {result.recall_single.get(PLANNER_EF, float('nan')):.3f} "
        f"| {result.recall_merged.get(PLANNER_EF, float('nan')):.3f} "
        f"| {result.cpu_us_per_query_planner_ef:.0f} | {result.cpu_us_per_query:.0f} "
        f"| {result.cpu_us_per_query_excluded:.0f} |"
    )


def render(results: Sequence[ScaleResult], command: str, stamp: str, machine: str) -> str:
    """The doc section of one run; `machine` says where it ran (`machine_line`)."""
    shards = sorted({result.shards for result in results})
    queries = ", ".join(str(count) for count in sorted({result.queries for result in results}))
    dimensions = sorted({result.dimension for result in results})
    sizes = ", ".join(size_label(items, 0).split(" x ")[0] for items in sorted({r.items for r in results}))
    begin, end = markers(sorted({result.items for result in results}), dimensions)
    return "\n".join(
        [
            begin,
            f"### Search cost at scale: ef and CPU for a recall target ({sizes} items, "
            f"{', '.join(map(str, dimensions))} dimensions)",
            "",
            f"`{command}` on {stamp}, {machine}. Seeded clustered embeddings with their variance in "
            "half the axes (`synthetic.low_rank_clustered`; PR: participation ratio of the generated "
            "vectors), cosine, M=16, efConstruction=200, built by `build_layout`; recall@10 against "
            f"brute force over {queries} held-out queries. ef@x: the smallest ef of "
            f"{', '.join(map(str, EF_GRID))} reaching recall x on one shard; 'S merged': "
            f"{', '.join(map(str, shards))} shards of items/S each, each asked for 10 at that ef, "
            f"merged by score; ef {PLANNER_EF}: the fixed ef `recctl capacity` planned with before it "
            "fitted these tables. CPU: "
            f"`ShardIndex.search` at ef {PLANNER_EF} and at the one-shard ef@0.95, one query at a time, "
            "one thread, process CPU time, median of 3 passes; 'with 100 excluded': the query's exact "
            "neighbours 11-110 excluded (the shard fetches k + 100, so hnswlib searches with ef >= 110). "
            "Build: wall time of one shard by `build_layout` with every core; bytes/item: the hnswlib "
            "index of one shard.",
            "",
            HEADER,
            ALIGN,
            *(row(result) for result in results),
            end,
        ]
    )


def machine_line(load_start: float, load_end: float) -> str:
    """CPU model and count, memory, OS, Python and hnswlib, and the load around the run."""
    return (
        f"{host_description()}, Python {platform.python_version()}, hnswlib {version('hnswlib')}, "
        f"niced on a shared machine (load average {load_start:.1f} at start, {load_end:.1f} at end)"
    )


# --- measuring ------------------------------------------------------------------------------------


def _unit(vectors: Floats) -> Floats:
    out: Floats = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return out


def _exact(items: Floats, queries: Floats, k: int) -> npt.NDArray[np.int64]:
    chunk = max(1, 50_000_000 // max(1, len(items)))
    return np.concatenate(
        [exact_top_k("cosine", queries[i : i + chunk], items, k) for i in range(0, len(queries), chunk)]
    )


def _build(work: Path, name: str, embeddings: Path, shards: int) -> tuple[Path, float]:
    out = work / f"{name}-S{shards}"
    if out.exists():
        shutil.rmtree(out)
    started = time.monotonic()
    build_layout(
        embeddings,
        out,
        version="scale",
        shards=shards,
        metric="cosine",
        m=16,
        ef_construction=200,
        progress=False,
    )
    return out, time.monotonic() - started


def _recall(found: Sequence[Sequence[int]], exact: npt.NDArray[np.int64]) -> float:
    hits = sum(len(set(row[:K]) & set(truth[:K])) for row, truth in zip(found, exact.tolist(), strict=True))
    return hits / (len(found) * K)


def _single_recalls(shard: ShardIndex, queries: Floats, exact: npt.NDArray[np.int64]) -> dict[int, float]:
    recalls = {}
    for ef in EF_GRID:
        shard.index.set_ef(ef)
        labels, _ = shard.index.knn_query(queries, k=K, num_threads=1)
        recalls[ef] = _recall([[int(shard.ids[i].removeprefix("i")) for i in row] for row in labels], exact)
    return recalls


def _merged_recalls(
    shards: Sequence[ShardIndex], queries: Floats, exact: npt.NDArray[np.int64]
) -> dict[int, float]:
    recalls = {}
    for ef in EF_GRID:
        merged: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
        for shard in shards:
            shard.index.set_ef(ef)
            labels, distances = shard.index.knn_query(queries, k=K, num_threads=1)
            for row in range(len(queries)):
                merged[row] += [
                    (float(d), int(shard.ids[i].removeprefix("i")))
                    for i, d in zip(labels[row], distances[row], strict=True)
                ]
        recalls[ef] = _recall([[item for _, item in sorted(row)[:K]] for row in merged], exact)
    return recalls


def _cpu_per_query(
    shard: ShardIndex, queries: Floats, exclude: Sequence[Sequence[str]] | None, passes: int = 3
) -> float:
    """Microseconds of process CPU per query through the shard's search path: the median of
    `passes` passes over every query."""
    per_pass = []
    for _ in range(passes):
        started = time.process_time()
        for row in range(len(queries)):
            shard.search(
                queries[row : row + 1], K, [exclude[row]] if exclude is not None else None, threads=1
            )
        per_pass.append((time.process_time() - started) / len(queries) * 1e6)
    return float(np.median(per_pass))


def measure_one(
    work: Path, items: int, dimension: int, *, shards: int, queries: int, seed: int
) -> ScaleResult:
    name = f"scale-{items}x{dimension}-s{seed}"
    print(f"{name}: generating", file=sys.stderr, flush=True)
    vectors = low_rank_clustered(
        items + queries,
        dimension,
        intrinsic=dimension // 2,
        clusters=max(50, items // 2000),
        spread=1.0,
        seed=seed,
    )
    data, held_out = vectors[:items], _unit(vectors[items:])
    ratio = participation_ratio(data[: min(items, 50_000)])
    embeddings = work / name
    if embeddings.exists():
        shutil.rmtree(embeddings)
    write_embeddings_dir(embeddings, data, [f"i{i}" for i in range(items)])
    exact = _exact(_unit(data), held_out, K + EXCLUDED)
    del vectors
    print(f"{name}: building 1 shard", file=sys.stderr, flush=True)
    one, seconds = _build(work, name, embeddings, 1)
    single = ShardIndex.load(one, 0)
    bytes_per_item = single.index_bytes / items
    recall_single = _single_recalls(single, held_out, exact)
    single.index.set_ef(PLANNER_EF)
    planner = _cpu_per_query(single, held_out, None)
    ef = ef_needed(recall_single, 0.95) or EF_GRID[-1]
    single.index.set_ef(ef)
    exclude = [[f"i{i}" for i in row[K:]] for row in exact.tolist()]
    plain = _cpu_per_query(single, held_out, None)
    excluded = _cpu_per_query(single, held_out, exclude)
    del single
    shutil.rmtree(one)
    print(f"{name}: building {shards} shards", file=sys.stderr, flush=True)
    many, _ = _build(work, name, embeddings, shards)
    parts = [ShardIndex.load(many, shard) for shard in range(shards)]
    recall_merged = _merged_recalls(parts, held_out, exact)
    del parts
    shutil.rmtree(many)
    shutil.rmtree(embeddings)
    return ScaleResult(
        items=items,
        dimension=dimension,
        shards=shards,
        queries=queries,
        participation_ratio=ratio,
        build_items_per_second=items / seconds,
        bytes_per_item=bytes_per_item,
        recall_single=recall_single,
        recall_merged=recall_merged,
        cpu_us_per_query_planner_ef=planner,
        cpu_us_per_query=plain,
        cpu_us_per_query_excluded=excluded,
        ef_measured=ef,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1m", help="item counts, comma-separated (100k, 1m, 10m)")
    parser.add_argument("--dims", default="64,256", help="dimensions, comma-separated")
    parser.add_argument("--shards", type=int, default=4, help="S for the merged columns (default 4)")
    parser.add_argument("--queries", type=int, default=300, help="held-out queries (default 300)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bench-scale")
    parser.add_argument("--write-doc", action="store_true", help="rewrite the section of docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="20k x 32, 100 queries: a smoke run")
    args = parser.parse_args(argv)
    try:
        sizes = [parse_size(text) for text in args.sizes.split(",")]
        dims = [int(text) for text in args.dims.split(",")]
    except ValueError as error:
        parser.error(f"--sizes/--dims: {error}")
    if args.quick:
        sizes, dims, args.queries = [20_000], [32], 100
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    results = [
        measure_one(args.work, items, dim, shards=args.shards, queries=args.queries, seed=args.seed)
        for items in sizes
        for dim in dims
    ]
    (args.work / "results.json").write_text(json.dumps([asdict(result) for result in results], indent=2))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    command = "python benchmarks/scale_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(results, command.strip(), stamp, machine_line(load_start, os.getloadavg()[0]))
    print(section)
    if args.write_doc and not args.quick:
        write_marked_section(REPO / "docs" / "benchmarks.md", section)
        print(f"wrote {REPO / 'docs' / 'benchmarks.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
