"""Router worker processes: 1 vs 2 workers (SO_REUSEPORT, and one shared socket) side by side in one
run, with the issue's P1/P2 rows, and what each worker costs in memory.

    python benchmarks/router_workers.py [--count 100000] [--seconds 6] [--write-doc]

Throughput: seeded clustered vectors (`--count` x 64, cosine), 4 shards x 1 replica, efSearch tuned
to recall@10 >= 0.95; the in-process hnswlib baselines (single query, one thread; batches of 64,
all cores) and then, for each router configuration, the rows of benchmarks/router_load.py (single
query at two concurrencies, ~half the saturating load, batches at two concurrencies; CPU of the
router's process group and of the shards). Memory: a layout with `--users` users (64 dims, 20 seen
items each) and a router of 2 workers over it; Rss/Pss (anonymous and file-backed) of each process
from /proc/<pid>/smaps_rollup once the layout is active and after a load of user queries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Row,
    ensure_layout,
    machine_line,
    make_dataset,
    markdown_table,
    router_argv,
    running,
    shard_argv,
    start_server,
    write_marked_section,
)
from inprocess import InProcessShards, batched_baseline, single_query_baseline, tune_ef
from router_load import router_pids
from router_load import run as router_rows

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- router-workers:begin -->", "<!-- router-workers:end -->"
CONFIGS = ((1, "reuseport"), (2, "reuseport"), (2, "shared"))


def smaps(pid: int) -> dict[str, float]:
    """MiB of Rss, Pss, Pss_Anon and Pss_File of one process (/proc/<pid>/smaps_rollup)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
            values[name] = int(rest.split()[0]) / 1024
    return values


def memory_rows(work: Path, users: int) -> str:
    rng = np.random.default_rng(3)
    items = 20_000
    layout = work / f"users-{users}" / "layout"
    if not (layout / "layout.json").exists():
        source = work / f"users-{users}" / "embeddings"
        user_ids = [f"user-{u:07d}" for u in range(users)]
        write_embeddings_dir(
            source,
            rng.normal(size=(items, 64)).astype(np.float32),
            [f"item-{i}" for i in range(items)],
            users=rng.normal(size=(users, 64)).astype(np.float32),
            user_ids=user_ids,
        )
        seen = "".join(
            f"{u}\titem-{(i * 7 + j) % items}\n" for i, u in enumerate(user_ids) for j in range(20)
        )
        (source / "seen.tsv").write_text(seen)
        build_layout(
            source, layout, version="v1", shards=1, metric="ip", m=8, ef_construction=32, progress=False
        )
    shard = start_server("mem-shard", shard_argv(layout, 0, threads=1))
    manifest = json.loads((layout / "layout.json").read_text())
    topology = work / "mem-topology.json"
    topology.write_text(
        json.dumps(
            {
                "revision": 1,
                "active": {
                    "layout": manifest["layout"], "version": "v1", "shards": 1, "dimension": 64,
                    "metric": "ip", "artifact_dir": str(layout),
                    "endpoints": [{"shard": 0, "replicas": [{"name": "s0", "url": shard.url}]}],
                },
            }
        )
    )  # fmt: skip
    lines = [
        f"Memory: a layout of {users:,} users x 64 dims with 20 seen items each "
        f"(users.npy {users * 64 * 4 / 2**20:.0f} MiB), a router of 2 workers (SO_REUSEPORT), "
        "MiB from /proc/<pid>/smaps_rollup (Pss splits pages shared between processes):",
        "",
        "| process | when | Rss | Pss | Pss anon | Pss file |",
        "|---|---|---:|---:|---:|---:|",
    ]
    argv = router_argv(topology, workers=2)
    with running([shard]), running([start_server("mem-router", argv)]) as (router,):
        time.sleep(2.0)  # both workers load the table (the first /readyz answered proves one)
        pids = router_pids(router)
        for when in ("layout active", f"after {2 * 2000:,} user queries"):
            for index, pid in enumerate(pids):
                m = smaps(pid)
                name = "supervisor" if index == 0 else f"worker {index - 1}"
                lines.append(
                    f"| {name} | {when} | {m['Rss']:.0f} | {m['Pss']:.0f} | {m['Pss_Anon']:.0f} | "
                    f"{m['Pss_File']:.0f} |"
                )
            for round_ in range(2):  # new connections: both workers serve
                for start in range(0, 2000, 100):
                    with httpx.Client(base_url=router.url, timeout=10) as client:
                        for u in range(start, start + 100):
                            client.post(
                                "/v1/recommend", json={"user_id": f"user-{(u * 7919 + round_) % users:07d}"}
                            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench-out")
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    k, batch = 10, 64
    data = make_dataset(args.work_dir, args.count, 64, queries=1000, k=k, metric="cosine", seed=7)
    layout = ensure_layout(args.work_dir, data, 4, m=16, ef_construction=200)
    shards = InProcessShards.load(layout)
    ef, recall, _ = tune_ef(shards, data, k, 0.95)
    shards.set_ef(ef)
    single = single_query_baseline(shards, data.queries, k, args.seconds, recall=recall, ef=ef)
    batched = batched_baseline(shards, data.queries, k, args.seconds, batch=batch, recall=recall, ef=ef)
    del shards
    context = SimpleNamespace(
        work=args.work_dir, layout=layout, data=data, ef_search=ef, k=k, seconds=args.seconds,
        connections=args.connections, batch=batch, inprocess_single=single, inprocess_batched=batched,
    )  # fmt: skip
    rows: list[Row] = [single, batched]
    for workers, sockets in CONFIGS:
        rows += router_rows(context, workers=workers, sockets=sockets, spikes=False)
        print(f"done: {workers} workers, {sockets}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
        memory = memory_rows(Path(scratch), args.users)
    table = markdown_table(rows).replace("nan", "—")
    section = (
        f"{BEGIN}\n## Router worker processes: 1 vs 2 workers (`benchmarks/router_workers.py`)\n\n"
        f"`python benchmarks/router_workers.py --count {args.count} --seconds {args.seconds:g} --write-doc` "
        f"in {time.monotonic() - started:.0f} s: "
        f"{args.count:,} x 64 cosine, 4 shards x 1 replica, efSearch {ef} (recall@10 {recall:.3f}). "
        "The router, its workers, the 4 shard servers and wrk share the machine's cores, so a second "
        "worker can only take CPU the shards would otherwise use: compare the router's CPU per request "
        "across rows (a worker's capacity is 1 / that, per core it is given); ratios are to the "
        "in-process rows of this run.\n\n"
        f"- Machine: {machine_line(load_start, os.getloadavg()[0])}\n\n"
        f"{table}\n{memory}{END}\n"
    )
    print(section)
    if args.write_doc:
        write_marked_section(DOC, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
