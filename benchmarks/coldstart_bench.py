"""Shard cold start from the object store against index size: `python benchmarks/coldstart_bench.py`
(also `make bench-coldstart`). Writes its table into docs/benchmarks.md between the coldstart markers.

For each size (default 100k, 300k and 1M items x 64 dims, seeded clustered vectors from
serving/index/synthetic.py), one shard:

1. build the layout with `build_layout` (m=16, ef_construction=200, cosine; cached in `--work`
   with its measured wall and CPU seconds, so a rerun skips it),
2. publish it with `publish_layout` to a SeaweedFS S3 gateway on 127.0.0.1 (e2e/objectstore/seaweed.py),
3. `--rounds` times, into a fresh folder: download = `fetch_shard` (what a shard pod's init step
   runs: streaming GET, sha256 in the stream, fsync); verify = the sha256 of the shard's files
   again (`read_shard_manifest(verify_files=True)`, what the shard server does before it loads);
   load = `hnswlib.Index.load_index`; cold start = download + verify + load.
4. then a real shard server process (`python -m shardrec.serving.shard.main`) on the fetched layout:
   seconds from spawn to `/readyz` 200 (interpreter start, verify, load, warm-up), bounded wait.

Medians over the rounds; CPU = user + system of this process (all threads) during the step. The
script runs niced (`make bench-coldstart`); SeaweedFS and the shard server are stopped by PID.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from shardrec.serving.index.manifest import LayoutManifest
    from shardrec.serving.storage.stores import ObjectStore

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, write_marked_section

BEGIN = (
    "<!-- coldstart:begin (written by `python benchmarks/coldstart_bench.py`; edit the script, not this) -->"
)
END = "<!-- coldstart:end -->"
SIZES = (100_000, 300_000, 1_000_000)
DIMENSION = 64
M, EF_CONSTRUCTION = 16, 200
BUCKET = "coldstart"
READY_TIMEOUT_S = 600.0
HEADER = (
    "| items x dims | shard MiB | build s (CPU s) | build items/s | download MiB/s (CPU s) "
    "| verify MiB/s (CPU s) | hnswlib load s (CPU s) | cold start s | shard server to /readyz s |"
)
ALIGN = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
T = TypeVar("T")


@dataclass(frozen=True)
class Step:
    wall: float
    cpu: float


@dataclass(frozen=True)
class Result:
    """Medians of one index size."""

    items: int
    shard_bytes: int
    build: Step
    download: Step
    verify: Step
    load: Step
    cold_start: float
    ready: float


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[], T]) -> tuple[T, Step]:
    wall0, cpu0 = time.perf_counter(), cpu_now()
    value = run()
    return value, Step(time.perf_counter() - wall0, cpu_now() - cpu0)


def median_step(steps: Sequence[Step]) -> Step:
    return Step(statistics.median(s.wall for s in steps), statistics.median(s.cpu for s in steps))


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- rendering (pure) -----------------------------------------------------------------------------


def size_label(items: int, dimension: int = DIMENSION) -> str:
    if items % 1_000_000 == 0:
        return f"{items // 1_000_000}M x {dimension}"
    return f"{items // 1000}k x {dimension}"


def row(result: Result) -> str:
    mib = result.shard_bytes / (1 << 20)
    return (
        f"| {size_label(result.items)} | {mib:.0f} "
        f"| {result.build.wall:.1f} ({result.build.cpu:.1f}) | {result.items / result.build.wall:.0f} "
        f"| {mib / result.download.wall:.0f} ({result.download.cpu:.2f}) "
        f"| {mib / result.verify.wall:.0f} ({result.verify.cpu:.2f}) "
        f"| {result.load.wall:.2f} ({result.load.cpu:.2f}) | {result.cold_start:.2f} | {result.ready:.2f} |"
    )


def render(results: Sequence[Result], command: str, stamp: str) -> str:
    return "\n".join(
        [
            BEGIN,
            "### Shard cold start from the object store, by index size",
            "",
            f"`{command}` on {stamp}, {os.cpu_count()} CPUs ({platform.machine()}), Python "
            f"{platform.python_version()}, niced, SeaweedFS (e2e/objectstore/versions.env) on 127.0.0.1 "
            "sharing the machine. One shard of seeded clustered vectors (cosine, m=16, "
            "ef_construction=200), published with `publish_layout`; medians over the rounds. "
            "Download = `fetch_shard` (streaming GET with sha256 in the stream, fsync); verify = the "
            "sha256 of the fetched files again, as the shard server does before loading; load = "
            "`hnswlib.Index.load_index`; cold start = download + verify + load. CPU = user + system "
            "of the benchmark process. The last column is a real shard server process on the fetched "
            "layout: spawn to `/readyz` 200 (interpreter start, verify, load, warm-up).",
            "",
            HEADER,
            ALIGN,
            *(row(result) for result in results),
            END,
        ]
    )


def write(section: str) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    write_marked_section(doc, section)
    print(f"wrote {doc}")


# --- measuring ------------------------------------------------------------------------------------


def ensure_layout(work: Path, items: int, seed: int) -> tuple[Path, Step]:
    """The one-shard layout of `items` vectors, built once; its build wall and CPU are kept beside it."""
    from shardrec.serving.index.build import build_layout
    from shardrec.serving.index.embeddings import write_embeddings_dir
    from shardrec.serving.index.synthetic import clustered

    layout = work / f"layout-{items}x{DIMENSION}-s{seed}"
    record = work / f"{layout.name}.build.json"
    if (layout / "layout.json").exists() and record.exists():
        saved = json.loads(record.read_text(encoding="utf-8"))
        return layout, Step(float(saved["wall"]), float(saved["cpu"]))
    shutil.rmtree(layout, ignore_errors=True)
    embeddings = work / f"items-{items}x{DIMENSION}-s{seed}"
    if not (embeddings / "items.npy").exists():
        vectors = clustered(items, DIMENSION, clusters=max(50, items // 2000), spread=0.45, seed=seed)
        write_embeddings_dir(embeddings, vectors, [f"item-{i}" for i in range(items)])
    print(f"building {layout.name} ...", flush=True)
    _, step = timed(
        lambda: build_layout(
            embeddings, layout, version="coldstart", shards=1, metric="cosine", m=M,
            ef_construction=EF_CONSTRUCTION, progress=False,
        )
    )  # fmt: skip
    record.write_text(json.dumps(asdict(step)), encoding="utf-8")
    return layout, step


def shard_bytes(layout: Path) -> int:
    from shardrec.serving.index.layout import read_layout_manifest, read_shard_manifest

    manifest = read_layout_manifest(layout, verify_shards=False)
    return sum(f.bytes for f in read_shard_manifest(layout, manifest, 0, verify_files=False).files)


def time_to_ready(layout: Path) -> float:
    """Spawn a shard server on `layout`; seconds until /readyz answers 200. Stopped by PID after."""
    from common import shard_argv, start_server, stop_servers

    started = time.perf_counter()
    server = start_server("shard", shard_argv(layout, 0, ef_search=50), timeout_s=READY_TIMEOUT_S)
    ready = time.perf_counter() - started
    stop_servers([server])
    return ready


def verify_shard(layout: Path) -> None:
    """What the shard server checks before it loads: manifests and the sha256 of the shard's files."""
    from shardrec.serving.index.layout import read_layout_manifest, read_shard_manifest

    read_shard_manifest(layout, read_layout_manifest(layout, verify_shards=False), 0, verify_files=True)


def load_shard(layout: Path, manifest: LayoutManifest) -> int:
    """hnswlib loads shard 0's index; returns how many items it holds."""
    import hnswlib

    from shardrec.serving.index.manifest import INDEX_FILE
    from shardrec.serving.index.scoring import hnsw_space

    entry = manifest.shard_entries[0]
    index = hnswlib.Index(space=hnsw_space(manifest.metric), dim=manifest.dimension)
    index.load_index(str(layout / entry.directory / INDEX_FILE), max_elements=entry.count)
    return int(index.get_current_count())


def measure_size(store: ObjectStore, work: Path, items: int, rounds: int, seed: int) -> Result:
    from shardrec.serving.storage.layouts import fetch_shard, publish_layout

    layout, build = ensure_layout(work, items, seed)
    layout_id = layout.name
    if layout_id + "/layout.json" not in store.list_keys(layout_id + "/"):
        publish_layout(layout, store, layout_id, log=lambda _: None)
    downloads, verifies, loads, totals, readies = [], [], [], [], []
    dest = work / "fetched"
    for number in range(rounds):
        shutil.rmtree(dest, ignore_errors=True)
        manifest, download = timed(lambda: fetch_shard(store, layout_id, 0, dest))

        _, verified = timed(partial(verify_shard, dest))
        loaded, loading = timed(partial(load_shard, dest, manifest))
        if loaded != items:
            raise SystemExit(f"{layout_id}: loaded {loaded} items, expected {items}")
        ready = time_to_ready(dest)
        downloads.append(download)
        verifies.append(verified)
        loads.append(loading)
        totals.append(download.wall + verified.wall + loading.wall)
        readies.append(ready)
        print(
            f"{size_label(items)} round {number + 1}: download {download.wall:.2f}s, verify "
            f"{verified.wall:.2f}s, load {loading.wall:.2f}s, /readyz after {ready:.2f}s",
            flush=True,
        )
    shutil.rmtree(dest, ignore_errors=True)
    return Result(
        items=items,
        shard_bytes=shard_bytes(layout),
        build=build,
        download=median_step(downloads),
        verify=median_step(verifies),
        load=median_step(loads),
        cold_start=statistics.median(totals),
        ready=statistics.median(readies),
    )


def measure(args: argparse.Namespace) -> list[Result]:
    from shardrec.serving.storage.stores import S3Settings, open_store

    seaweed = load_module("shardrec_e2e_seaweed", REPO / "e2e" / "objectstore" / "seaweed.py")
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    store_dir = args.work / "seaweedfs"
    shutil.rmtree(store_dir, ignore_errors=True)
    with seaweed.SeaweedS3.start(seaweed.find_weed(), store_dir) as s3:
        s3.create_bucket(BUCKET)
        os.environ.update(s3.client_env())
        store = open_store(f"s3://{BUCKET}/", S3Settings(endpoint=s3.endpoint, path_style=True))
        for items in args.sizes:
            results.append(measure_size(store, args.work, items, args.rounds, args.seed))
    shutil.rmtree(store_dir, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="items per index (default 100k 300k 1M)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="cold starts per size (default 3)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=REPO / ".state" / "bench-coldstart")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    results = measure(args)
    sizes = " ".join(str(s) for s in args.sizes)
    command = f"python benchmarks/coldstart_bench.py --sizes {sizes} --rounds {args.rounds}"
    section = render(results, command, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    print(section)
    if not args.no_write:
        write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
