"""Router CPU per query, before and after a change, side by side in one run (issue #19).

    python benchmarks/router_cpu.py --base 9dbfc08 [--count 200000] [--seconds 8] [--rounds 3]
        [--workers 1,2] [--connections 16,64] [--codes base,new,floor] [--profile-dir DIR]

The router and its 4 shard servers (one replica each) run either this tree's code ("new") or
the `--base` commit's (`git archive` of shard-server/src, put first on their PYTHONPATH: "base").
"floor" is the floor under both: an empty ASGI app served the way a router worker serves
(benchmarks/http_floor.py, one process, no shards), so its CPU per request is what HTTP in Python
costs here before any of the router's own work.
Each round starts every (code, workers) cluster once, A and B interleaved (the order flips every
round), warms it, and measures each wrk concurrency: CPU ms per request of the router's process
group and of the shards together, from /proc, as benchmarks/router_load.py reports them, and the
router's read and write syscalls per request (/proc/<pid>/io: exact, whatever the machine's load).
The machine is shared, so compare CPU per request (medians over rounds), not requests/s.

`--write-doc`: also write the table into docs/benchmarks.md (its router-cpu section).

`--profile-dir`: also record a py-spy profile (raw, collapsed stacks) of one worker of each router
under the largest concurrency (needs `py-spy` in the venv and ptrace permission).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Server,
    ensure_layout,
    machine_line,
    make_dataset,
    router_argv,
    run_wrk,
    running,
    shard_argv,
    start_server,
    write_bodies,
    write_marked_section,
)
from router_load import JSON, _padded, _vector_body, _write_config, router_pids


@dataclass
class Sample:
    code: str
    workers: int
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    router_ms: float
    shards_ms: float
    router_reads: float  # read syscalls per request
    router_writes: float  # write syscalls per request


BEGIN, END = "<!-- router-cpu:begin -->", "<!-- router-cpu:end -->"
DOC = REPO / "docs" / "benchmarks.md"
FLOOR_ARGV = [sys.executable, str(Path(__file__).with_name("http_floor.py"))]
"""The "floor" code: an empty ASGI app served as a router worker serves (benchmarks/http_floor.py),
one process whatever --workers says, no shards."""


def _ratio(router_ms: float, shards_ms: float) -> str:
    return f"{router_ms / shards_ms:.2f}" if shards_ms else "—"


def syscalls(pid: int) -> tuple[int, int]:
    """(read, write) syscalls of a process so far (/proc/<pid>/io: syscr, syscw)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def export_base(ref: str, into: Path) -> Path:
    """shard-server/src of commit `ref`, extracted under `into`; returns the source folder."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "shard-server/src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "shard-server" / "src"


def start_with(name: str, argv: list[str], pythonpath: Path | None) -> Server:
    """`start_server` with `pythonpath` first on the process's (and its children's) PYTHONPATH."""
    previous = os.environ.get("PYTHONPATH")
    if pythonpath is not None:
        os.environ["PYTHONPATH"] = str(pythonpath)
    try:
        return start_server(name, argv)
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def profile(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
         "--format", "raw", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def measure(  # noqa: PLR0917 - one call site
    args: argparse.Namespace,
    router: Server,
    shards: list[Server],
    code: str,
    workers: int,
    round_number: int,
    body: tuple[Path, int],
) -> list[Sample]:
    body_file, body_size = body
    connections_list = [int(c) for c in args.connections.split(",")]
    group = router_pids(router)
    watch = [*group, *(s.pid for s in shards)]
    run_wrk(
        args.work_dir, router.url, "/v1/recommend", JSON, body_file, body_size,
        seconds=2, connections=max(connections_list),
    )  # fmt: skip
    samples = []
    for connections in connections_list:
        spy = None
        if args.profile_dir and connections == max(connections_list):
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            out = args.profile_dir / f"{code}-w{workers}-r{round_number}.txt"
            spy = profile(group[-1], out, max(1, round(args.seconds) - 1))
        before = [syscalls(pid) for pid in group]
        result, used = run_wrk(
            args.work_dir, router.url, "/v1/recommend", JSON, body_file, body_size,
            seconds=args.seconds, connections=connections, watch=watch,
        )  # fmt: skip
        after = [syscalls(pid) for pid in group]
        if spy is not None:
            spy.wait(30)
        per_request = 1000 / result.requests
        sample = Sample(
            code,
            workers,
            connections,
            result.requests_per_s,
            result.p50_ms,
            result.p99_ms,
            sum(used[p] for p in group) * per_request,
            sum(used[s.pid] for s in shards) * per_request,
            sum(b[0] - a[0] for a, b in zip(before, after, strict=True)) / result.requests,
            sum(b[1] - a[1] for a, b in zip(before, after, strict=True)) / result.requests,
        )
        samples.append(sample)
        print(
            f"round {round_number} {code:4} w{workers} c{connections:3}: "
            f"{sample.requests_per_s:7.0f} req/s p50 {sample.p50_ms:6.2f} p99 {sample.p99_ms:6.2f} ms, "
            f"router {sample.router_ms:.3f} shards {sample.shards_ms:.3f} ms CPU/query, ratio "
            f"{_ratio(sample.router_ms, sample.shards_ms)}; router syscalls/request: "
            f"{sample.router_reads:.2f} reads {sample.router_writes:.2f} writes; errors {result.errors}",
            flush=True,
        )
    return samples


def median_table(
    samples: list[Sample], workers_list: list[int], connections_list: list[int], codes: list[str]
) -> str:
    """Medians over the rounds, one row per (workers, concurrency, code)."""
    lines = [
        "| workers | wrk -c | code | router CPU ms/query | shards CPU ms/query | router/shards "
        "| router reads/query | router writes/query | requests/s | p50 ms | p99 ms |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    median = statistics.median
    for workers in workers_list:
        for connections in connections_list:
            for code in codes:
                mine = [
                    s for s in samples if (s.code, s.workers, s.connections) == (code, workers, connections)
                ]
                if not mine:
                    continue
                router_ms = median([s.router_ms for s in mine])
                shards_ms = median([s.shards_ms for s in mine])
                ratio = f"{median([s.router_ms / s.shards_ms for s in mine]):.2f}" if shards_ms else "—"
                lines.append(
                    f"| {workers} | {connections} | {code} | {router_ms:.3f} | {shards_ms:.3f} | {ratio} | "
                    f"{median([s.router_reads for s in mine]):.2f} | "
                    f"{median([s.router_writes for s in mine]):.2f} | "
                    f"{median([s.requests_per_s for s in mine]):,.0f} | "
                    f"{median([s.p50_ms for s in mine]):.2f} | {median([s.p99_ms for s in mine]):.2f} |"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="9dbfc08", help="commit whose router is 'base'")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--ef-search", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--codes", default="base,new")
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench-out")
    parser.add_argument("--profile-dir", type=Path)
    parser.add_argument("--write-doc", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    workers_list = [int(w) for w in args.workers.split(",")]
    connections_list = [int(c) for c in args.connections.split(",")]
    codes = args.codes.split(",")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data = make_dataset(args.work_dir, args.count, 64, queries=1000, k=10, metric="cosine", seed=7)
    layout = ensure_layout(args.work_dir, data, 4, m=16, ef_construction=200)
    singles = _padded([_vector_body(data.queries[i], 10) for i in range(512)])
    body = write_bodies(args.work_dir, "router-cpu-single", singles)
    samples: list[Sample] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="router-cpu-base-") as temporary:
        base_src = export_base(args.base, Path(temporary)) if "base" in codes else None
        for round_number in range(args.rounds):
            order = codes if round_number % 2 == 0 else codes[::-1]
            for workers in workers_list:
                for code in order:
                    pythonpath = base_src if code == "base" else None
                    shards = [
                        start_with(f"shard-{i}", shard_argv(layout, i, args.ef_search), pythonpath)
                        for i in range(0 if code == "floor" else 4)
                    ]
                    with running(shards):
                        topology, config = _write_config(args.work_dir, layout, shards, 64, name="router-cpu")
                        argv = (
                            FLOOR_ARGV if code == "floor" else router_argv(topology, config, workers=workers)
                        )
                        router = start_with("router", argv, pythonpath)
                        with running([router]):
                            samples += measure(args, router, shards, code, workers, round_number, body)
    print(f"\n{len(samples)} runs in {time.monotonic() - started:.0f} s; medians over {args.rounds} rounds")
    table = median_table(samples, workers_list, connections_list, codes)
    print(table)
    if args.write_doc:
        command = (
            f"python benchmarks/router_cpu.py --codes {args.codes} --workers {args.workers} "
            f"--connections {args.connections} --rounds {args.rounds} --seconds {args.seconds:g} "
            f"--count {args.count} --write-doc"
        )
        section = (
            f"{BEGIN}\n## Router CPU per request by load, and the HTTP floor (`benchmarks/router_cpu.py`)\n\n"
            f"`{command}` in {time.monotonic() - started:.0f} s: {args.count:,} x 64 cosine, 4 shards x 1 "
            f"replica, efSearch {args.ef_search}, single queries by vector at k=10 under wrk at each "
            "concurrency; medians over the rounds (codes interleaved, order flipped every round). "
            '"floor" is an empty ASGI app served the way a router worker serves '
            "(benchmarks/http_floor.py): what HTTP in Python costs here before any of the router's "
            "own work. The router, the shards and wrk share the machine's cores.\n\n"
            f"- Machine: {machine_line(load_start, os.getloadavg()[0])}\n\n{table}\n{END}\n"
        )
        write_marked_section(DOC, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
