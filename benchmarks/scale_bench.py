"""Search cost at scale: what one shard needs, in ef and CPU, for a recall target, by items and dimension.

    python benchmarks/scale_bench.py --sizes 100k --dims 64,256  # one section per run
    python benchmarks/scale_bench.py --sizes 1m --dims 64        # ~20 min per dimension
    python benchmarks/scale_bench.py --sizes 10m --dims 64 --resume --work DIR  # hours: rerun to resume
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

--resume: each point's stages (data, one-shard build, its measurements, S-shard build, merged
recall) are kept in --work as they finish, and the builds save checkpoints (`build.Checkpoints`), so
the same command run again after a kill continues where it was: 10M items build for hours, longer
than a process may live here. The build is then accounted over every run from the checkpoints: the
table gives its rate from wall time and from process CPU time (a niced build on a shared machine
waits a lot), and the machine line how many runs it took.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
if not sys.stderr.isatty():
    # The builds' progress bars (build_layout's tqdm), written to a log for hours at 10M items:
    # one line a minute. tqdm reads its TQDM_* defaults when it is first imported, below.
    os.environ.setdefault("TQDM_MININTERVAL", "60")

from coefficient_file import host_description
from common import REPO, write_marked_section

from shardrec.serving.cpus import usable_cpus
from shardrec.serving.index.build import Checkpoints, build_layout, read_progress
from shardrec.serving.index.embeddings import ITEMS_FILE, load_matrix, write_embeddings_dir
from shardrec.serving.index.files import publish_atomically
from shardrec.serving.index.scoring import exact_scores
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
# With --resume the build column gives two rates: a niced build resumed over sessions has a wall
# time that says little about the build's cost, its CPU time more.
HEADER_RESUMED = HEADER.replace("| build items/s |", "| build items/s: wall (CPU-based) |")
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
    # Measured with --resume (checkpointed, perhaps over several runs); None for one plain run.
    build_cpu_items_per_second: float | None = None  # items / (the build's process CPU s / cores)
    build_runs: int | None = None  # runs that added items to the one-shard build
    build_cores: int | None = None  # the cores the build could use
    runs: int | None = None  # runs of the bench on this point (1 + resumes)
    load_average_first: float | None = None  # at the end of the first run's data stage
    load_average_last: float | None = None  # at the end of the last stage (measure-S)


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


def _resumed(results: Sequence[ScaleResult]) -> bool:
    return any(result.build_runs is not None for result in results)


def row(result: ScaleResult) -> str:
    build = f"{result.build_items_per_second:.0f}"
    if result.build_cpu_items_per_second is not None:
        build += f" ({result.build_cpu_items_per_second:.0f})"
    return (
        f"| {size_label(result.items, result.dimension)} | {result.participation_ratio:.0f} "
        f"| {build} | {result.bytes_per_item:.0f} "
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
            + (_build_text_resumed(results) if _resumed(results) else _BUILD_TEXT)
            + "; bytes/item: the hnswlib index of one shard.",
            "",
            HEADER_RESUMED if _resumed(results) else HEADER,
            ALIGN,
            *(row(result) for result in results),
            end,
        ]
    )


_BUILD_TEXT = "Build: wall time of one shard by `build_layout` with every core"


def _build_text_resumed(results: Sequence[ScaleResult]) -> str:
    runs = ", ".join(f"{size_label(r.items, r.dimension)}: {r.build_runs}" for r in results)
    cores = ", ".join(str(core) for core in sorted({r.build_cores for r in results if r.build_cores}))
    return (
        "Build: one shard by `build_layout` with every core, niced in the background, checkpointed "
        f"and resumed in later runs (runs that built: {runs}); "
        "wall: items per wall second of hnswlib's `add_items` summed over the runs, CPU-based: items "
        f"per (its process CPU seconds / {cores} cores), the rate if the cores had been the build's "
        "alone; checkpoint saves and loads not counted"
    )


def machine_line(load_start: float, load_end: float, *, runs: int | None = None) -> str:
    """CPU model and count, memory, OS, Python and hnswlib, and the load around the run (with
    `runs`: around the runs of a resumed measurement, and how many there were)."""
    load = f"load average {load_start:.1f} at start, {load_end:.1f} at end"
    if runs is not None:
        load = (
            f"load average {load_start:.1f} in the first run, {load_end:.1f} at the end; "
            f"{runs} runs, {runs - 1} resumes"
        )
    return (
        f"{host_description()}, Python {platform.python_version()}, hnswlib {version('hnswlib')}, "
        f"niced on a shared machine ({load})"
    )


# --- measuring ------------------------------------------------------------------------------------
#
# One (items, dimension) point is five stages in its folder under --work: data (embeddings, held-out
# queries, their exact top-110), build-S1, measure-S1, build-S<S>, measure-S<S>. Each stage writes
# its <stage>.json last and atomically, so with --resume a restarted run skips the finished stages,
# and the builds continue from their checkpoints (build.Checkpoints): 10M items take longer than a
# process on a shared machine may live.

CHECKPOINT_SECONDS = 600.0  # of adding, between two checkpoint saves of a shard (a 10M x 64 save: ~4 GB)
# Items scored at a time for the ground truth: with 300 queries ~400 MB of temporaries (scores,
# argpartition's copy and its int64 indices), whatever the item count.
_EXACT_BLOCK = 65_536
Stage = dict[str, Any]


def _log(name: str, text: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} {name}: {text}", file=sys.stderr, flush=True)


def _unit(vectors: Floats) -> Floats:
    out: Floats = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return out


def _exact(
    items: Floats, queries: Floats, k: int, report: Callable[[int], None] | None = None
) -> npt.NDArray[np.int64]:
    """The exact top-k items of each query by cosine, best first, scored a block of items at a time
    (`exact_scores`, as `exact_top_k` scores them) so 10M items need neither a unit copy of the
    matrix nor a query x items score matrix in memory; the blocks' top k are merged by score."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(items), _EXACT_BLOCK):
        block = _unit(np.asarray(items[start : start + _EXACT_BLOCK], dtype=np.float32))
        scores = exact_scores("cosine", queries, block)
        top = np.argpartition(-scores, min(k, len(block)) - 1, axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        merged = np.concatenate([best, top + start], axis=1)
        keep = np.argpartition(-merged_scores, min(k, merged.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best = np.take_along_axis(merged, keep, axis=1)
        if report is not None:
            report(start + len(block))
    order = best_scores.argsort(axis=1, kind="stable")[:, ::-1]
    found: npt.NDArray[np.int64] = np.take_along_axis(best, order, axis=1)
    return found


def _stage(folder: Path, name: str, stage: str, run: Callable[[], Stage]) -> Stage:
    """The result of `stage`: read from its JSON when an earlier run finished it, else run it and
    write the JSON (last, atomically: a JSON present means a finished stage)."""
    path = folder / f"{stage}.json"
    if path.exists():
        _log(name, f"{stage}: finished by an earlier run, skipped")
        loaded: Stage = json.loads(path.read_text(encoding="utf-8"))
        return loaded
    _log(name, f"{stage}: starting")
    started = time.monotonic()
    result = run()
    result["stage_wall_seconds"] = round(time.monotonic() - started, 3)
    publish_atomically(path, json.dumps(result, indent=2).encode())
    _log(name, f"{stage}: done in {result['stage_wall_seconds']:.0f} s")
    return result


def _data_stage(folder: Path, name: str, items: int, dimension: int, *, queries: int, seed: int) -> Stage:
    """Embeddings (written in place, memory-mapped from then on), held-out queries, their exact
    top k + 100: deterministic by seed, so a rerun of this stage writes the same files."""
    vectors = low_rank_clustered(
        items + queries,
        dimension,
        intrinsic=dimension // 2,
        clusters=max(50, items // 2000),
        spread=1.0,
        seed=seed,
    )
    _log(name, "data: generated")
    held_out = _unit(vectors[items:])
    np.save(folder / "queries.npy", held_out)
    ratio = participation_ratio(vectors[: min(items, 50_000)])
    write_embeddings_dir(folder / "embeddings", vectors[:items], [f"i{i}" for i in range(items)])
    del vectors
    _log(name, "data: embeddings written; exact neighbours next")
    matrix = load_matrix(folder / "embeddings" / ITEMS_FILE)
    tenth = max(1, items // 10)

    def report(done: int) -> None:
        if done // tenth != (done - _EXACT_BLOCK) // tenth or done == items:
            _log(name, f"data: exact neighbours over {done:,} of {items:,} items")

    np.save(folder / "exact.npy", _exact(matrix, held_out, K + EXCLUDED, report))
    return {"participation_ratio": ratio, "load_average": os.getloadavg()[0]}


def _build_stage(folder: Path, name: str, shards: int, *, checkpointed: bool) -> Stage:
    """`build_layout` of the point's embeddings into `shards` shards. Checkpointed: the cost is
    what the shards' checkpoints accumulated over every run (`read_progress`); otherwise one run's
    wall time of the whole `build_layout`, as the tables before checkpoints measured it."""
    out = folder / f"{name}-S{shards}"
    checkpoints = Checkpoints(folder / f"checkpoint-S{shards}", CHECKPOINT_SECONDS) if checkpointed else None
    for stale in folder.glob(f".{out.name}.building-*"):  # left by a run killed before its publish
        shutil.rmtree(stale)
    if checkpoints is None and out.exists():
        shutil.rmtree(out)
    wall, cpu = time.monotonic(), time.process_time()
    build_layout(
        folder / "embeddings",
        out,
        version="scale",
        shards=shards,
        metric="cosine",
        m=16,
        ef_construction=200,
        progress=True,
        checkpoints=checkpoints,
    )
    result: Stage = {
        "shards": shards,
        "cores": usable_cpus(),
        "wall_seconds": time.monotonic() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "runs": 1,
    }
    if checkpoints is not None:
        progress = [read_progress(checkpoints.folder, shard) for shard in range(shards)]
        kept = [asdict(entry) for entry in progress if entry is not None]
        result.update(runs=max((entry["runs"] for entry in kept), default=1), checkpoints=kept)
        if shards == 1:
            result.update(
                {key: kept[0][key] for key in ("wall_seconds", "cpu_seconds", "checkpoint_seconds")}
            )
        else:
            # Shards built side by side share the process's CPU and overlap in wall time: only the
            # per-shard records are kept (the tables use the one-shard build's cost).
            del result["wall_seconds"], result["cpu_seconds"]
    return result


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


def _measure_single(folder: Path, name: str) -> Stage:
    """Recall per ef of the one-shard layout, and CPU per query at ef 24 and at its ef@0.95."""
    held_out, exact = np.load(folder / "queries.npy"), np.load(folder / "exact.npy")
    single = ShardIndex.load(folder / f"{name}-S1", 0)
    recall_single = _single_recalls(single, held_out, exact)
    single.index.set_ef(PLANNER_EF)
    planner = _cpu_per_query(single, held_out, None)
    ef = ef_needed(recall_single, 0.95) or EF_GRID[-1]
    single.index.set_ef(ef)
    exclude = [[f"i{i}" for i in row[K:]] for row in exact.tolist()]
    return {
        "bytes_per_item": single.index_bytes / single.count,
        "recall_single": recall_single,
        "cpu_us_per_query_planner_ef": planner,
        "cpu_us_per_query": _cpu_per_query(single, held_out, None),
        "cpu_us_per_query_excluded": _cpu_per_query(single, held_out, exclude),
        "ef_measured": ef,
        "load_average": os.getloadavg()[0],
    }


def _measure_merged(folder: Path, name: str, shards: int) -> Stage:
    held_out, exact = np.load(folder / "queries.npy"), np.load(folder / "exact.npy")
    parts = [ShardIndex.load(folder / f"{name}-S{shards}", shard) for shard in range(shards)]
    return {"recall_merged": _merged_recalls(parts, held_out, exact), "load_average": os.getloadavg()[0]}


def _drop(*paths: Path) -> None:
    """Remove what a finished stage no longer needs (GBs at 10M), once its JSON is written."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)


def _count_run(folder: Path, *, finished: bool) -> int:
    """This run's number on the point (runs.json): 1, then one more per resume; a run of a
    finished point (to render its table again, say with --write-doc) measures nothing and is
    not counted."""
    path = folder / "runs.json"
    runs = int(json.loads(path.read_text(encoding="utf-8"))["runs"]) if path.exists() else 0
    if not finished:
        runs += 1
        publish_atomically(path, json.dumps({"runs": runs}).encode())
    return runs


def measure_one(
    work: Path, items: int, dimension: int, *, shards: int, queries: int, seed: int, resume: bool = False
) -> ScaleResult:
    """Every stage of one point. Without `resume` the point's folder is cleared first and the
    builds are not checkpointed (one run, as before checkpoints); with it, finished stages are
    kept and the builds continue from their checkpoints."""
    name = f"scale-{items}x{dimension}-s{seed}"
    folder = work / name
    if not resume and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs = _count_run(folder, finished=(folder / f"measure-S{shards}.json").exists())
    _log(name, f"run {runs} of this point in {folder}")
    data = _stage(
        folder, name, "data", lambda: _data_stage(folder, name, items, dimension, queries=queries, seed=seed)
    )
    built = _stage(folder, name, "build-S1", lambda: _build_stage(folder, name, 1, checkpointed=resume))
    _drop(folder / "checkpoint-S1")
    single = _stage(folder, name, "measure-S1", lambda: _measure_single(folder, name))
    _drop(folder / f"{name}-S1")
    _stage(folder, name, f"build-S{shards}", lambda: _build_stage(folder, name, shards, checkpointed=resume))
    _drop(folder / f"checkpoint-S{shards}")
    merged = _stage(folder, name, f"measure-S{shards}", lambda: _measure_merged(folder, name, shards))
    _drop(folder / f"{name}-S{shards}", folder / "embeddings")
    cores = int(built["cores"])
    return ScaleResult(
        items=items,
        dimension=dimension,
        shards=shards,
        queries=queries,
        participation_ratio=float(data["participation_ratio"]),
        build_items_per_second=items / float(built["wall_seconds"]),
        bytes_per_item=float(single["bytes_per_item"]),
        recall_single={int(ef): float(r) for ef, r in single["recall_single"].items()},
        recall_merged={int(ef): float(r) for ef, r in merged["recall_merged"].items()},
        cpu_us_per_query_planner_ef=float(single["cpu_us_per_query_planner_ef"]),
        cpu_us_per_query=float(single["cpu_us_per_query"]),
        cpu_us_per_query_excluded=float(single["cpu_us_per_query_excluded"]),
        ef_measured=int(single["ef_measured"]),
        build_cpu_items_per_second=items / (float(built["cpu_seconds"]) / cores) if resume else None,
        build_runs=int(built["runs"]) if resume else None,
        build_cores=cores if resume else None,
        runs=runs if resume else None,
        load_average_first=float(data["load_average"]) if resume else None,
        load_average_last=float(merged["load_average"]) if resume else None,
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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep finished stages in --work and checkpoint the builds, so the same command run "
        "again continues where a killed run stopped (for 10M: hours over several sessions)",
    )
    args = parser.parse_args(argv)
    try:
        sizes = [parse_size(text) for text in args.sizes.split(",")]
        dims = [int(text) for text in args.dims.split(",")]
    except ValueError as error:
        parser.error(f"--sizes/--dims: {error}")
    if args.quick:
        sizes, dims, args.queries = [20_000], [32], 100
    args.work.mkdir(parents=True, exist_ok=True)
    with (args.work / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            parser.error(f"--work {args.work}: another scale_bench.py is running there")
        load_start = os.getloadavg()[0]
        results = [
            measure_one(
                args.work,
                items,
                dim,
                shards=args.shards,
                queries=args.queries,
                seed=args.seed,
                resume=args.resume,
            )
            for items in sizes
            for dim in dims
        ]
    (args.work / "results.json").write_text(json.dumps([asdict(result) for result in results], indent=2))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    command = "python benchmarks/scale_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    firsts = [result.load_average_first for result in results if result.load_average_first is not None]
    # A resumed point's end is its last stage's, not this run's (which may only render the table).
    lasts = [result.load_average_last for result in results if result.load_average_last is not None]
    runs = max((result.runs or 1 for result in results), default=1)
    machine = machine_line(
        min(firsts, default=load_start),
        max(lasts, default=os.getloadavg()[0]),
        runs=runs if args.resume else None,
    )
    section = render(results, command.strip(), stamp, machine)
    print(section)
    if args.write_doc and not args.quick:
        write_marked_section(REPO / "docs" / "benchmarks.md", section)
        print(f"wrote {REPO / 'docs' / 'benchmarks.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
