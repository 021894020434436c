"""Chroma side by side: the peer a user would most likely run instead on one machine.

    python benchmarks/chroma_bench.py [--size 200k] [--seconds 10] [--chroma-venv DIR]
    python benchmarks/run.py --with-chroma          (adds these rows to docs/benchmarks.md)
    python benchmarks/peers_bench.py                (Chroma beside ours and Qdrant Edge, in turns)

Chroma's HTTP server (`chroma run`, chromadb from PyPI, hnswlib inside) on the same vectors as the
harness (`common.make_dataset`), bound to 127.0.0.1 with telemetry off. Its `ef_search` is tuned
to the smallest value whose recall@10 against the same exact top-k matches ours, then wrk drives
single-query requests (one query per body, bodies varied by the harness's Lua script) at a
quarter of the harness's concurrency, at it, and at four times it. Reported like every other row:
QPS, p50/p99, CPU ms per request of the server process (from /proc), RSS, and the ratio of our
router's saturating single-query rate to Chroma's (goal >= 6).

chromadb is a bench-only tool, never a runtime dependency: it runs from its own virtualenv
(default bench-out/chroma-venv, created with the pinned version below when missing), so it never
touches the project's environment. Standalone runs print a markdown table and write
bench-out/chroma-results.json; "ours" is read from the last full run's bench-out/results.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Dataset,
    ProcessStats,
    Row,
    Server,
    WrkResult,
    free_port,
    make_dataset,
    markdown_table,
    recall_at_k,
    rss_mb,
    run_wrk,
    stop_process,
    write_bodies,
)

CHROMADB_VERSION = "1.5.9"
DATABASE = "/api/v2/tenants/default_tenant/databases/default_database"
EF_CANDIDATES = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
SIZES = {"200k": (200_000, 64), "1m": (1_000_000, 64), "20k": (20_000, 64)}
JSON = "application/json"
# "Same recall" is within this of ours: 20 of 10,000 neighbours, below the noise of sampling
# 1000 queries, so Chroma is not pushed to a larger ef_search (and a slower search) by a rounding.
RECALL_TOLERANCE = 0.002
LOAD_DEADLINE_S = 3600.0  # adding 1M vectors takes minutes; anything past an hour is stuck


# --- the chroma executable ---------------------------------------------------------------------


def _chromadb_version(python: Path) -> str | None:
    try:
        done = subprocess.run(
            [str(python), "-c", "import chromadb; print(chromadb.__version__)"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_chroma(venv: Path) -> Path:
    """The `chroma` CLI of `venv`, creating the venv and installing chromadb (pinned) if needed."""
    python, chroma = venv / "bin" / "python", venv / "bin" / "chroma"
    version = _chromadb_version(python) if python.exists() else None
    if version is None:
        if not python.exists():
            print(f"chroma: creating virtualenv {venv}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
        print(
            f"chroma: installing chromadb=={CHROMADB_VERSION} into {venv} (bench only; a few minutes)",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"chromadb=={CHROMADB_VERSION}"],
            check=True,
            timeout=1800,
        )
        version = _chromadb_version(python)
    if version is None or not chroma.exists():
        raise RuntimeError(f"--chroma-venv {venv}: chromadb does not import there, or bin/chroma is missing")
    if version != CHROMADB_VERSION:
        print(
            f"chroma: {venv} has chromadb {version}, not the pinned {CHROMADB_VERSION}; using it",
            file=sys.stderr,
        )
    print(f"chroma: using {chroma} (chromadb {version})", file=sys.stderr, flush=True)
    return chroma


# --- the server --------------------------------------------------------------------------------


def start_chroma(chroma: Path, data_dir: Path, log: Path, timeout_s: float = 120) -> Server:
    """`chroma run` on 127.0.0.1 only; waits for its heartbeat."""
    port = free_port()
    # No telemetry and no OpenTelemetry export: there is no network here besides loopback.
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["ANONYMIZED_TELEMETRY"] = "False"
    # Its default INFO log writes ~4 lines per query; quieter is, if anything, kinder to Chroma.
    env.setdefault("RUST_LOG", "warn")
    argv = [str(chroma), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(data_dir)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    server = Server("chroma", process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chroma exited with {process.returncode}; see {log}")
        try:
            if httpx.get(server.url + "/api/v2/heartbeat", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(process)
    raise RuntimeError(f"chroma not answering within {timeout_s:.0f}s; see {log}")


@dataclass
class Chroma:
    """A running server that can be restarted (ef_search changes apply to a freshly loaded index)."""

    chroma: Path
    data_dir: Path
    log: Path
    server: Server | None = None

    def start(self) -> Server:
        self.server = start_chroma(self.chroma, self.data_dir, self.log)
        return self.server

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.server is not None:
            stop_process(self.server.process)
            self.server = None


@contextmanager
def running_chroma(chroma: Path, data_dir: Path, log: Path) -> Iterator[Chroma]:
    handle = Chroma(chroma, data_dir, log)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


# --- the collection ----------------------------------------------------------------------------


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise RuntimeError(f"chroma {response.request.method} {response.request.url}: {response.text[:500]}")
    return response


def ensure_collection(url: str, data: Dataset, *, m: int, ef_construction: int) -> tuple[str, int]:
    """The collection of `data` with these HNSW parameters (built once, kept under the data dir).
    Returns its id and current ef_search."""
    name = f"{data.name}-{data.metric}-m{m}-efc{ef_construction}"
    with httpx.Client(base_url=url, timeout=300) as client:
        found = client.get(f"{DATABASE}/collections/{name}")
        if found.status_code == 200:
            collection = found.json()
            count = _check(client.get(f"{DATABASE}/collections/{collection['id']}/count")).json()
            if count == len(data.items):
                return collection["id"], int(collection["configuration_json"]["hnsw"]["ef_search"])
            print(f"chroma: {name} holds {count} items, not {len(data.items)}: rebuilding", file=sys.stderr)
            _check(client.delete(f"{DATABASE}/collections/{name}"))
        hnsw = {"space": data.metric, "max_neighbors": m, "ef_construction": ef_construction, "ef_search": 10}
        created = _check(
            client.post(f"{DATABASE}/collections", json={"name": name, "configuration": {"hnsw": hnsw}})
        ).json()
        _add_all(client, created["id"], data)
        return created["id"], 10


def _add_all(client: httpx.Client, collection: str, data: Dataset) -> None:
    checks = _check(client.get("/api/v2/pre-flight-checks")).json()
    batch = min(4096, int(checks.get("max_batch_size", 1000)))
    as_base64 = bool(checks.get("supports_base64_encoding", False))
    started = time.monotonic()
    step = max(batch, len(data.items) // 10)
    for start in range(0, len(data.items), batch):
        if time.monotonic() - started > LOAD_DEADLINE_S:
            raise RuntimeError(f"chroma: adding {len(data.items)} vectors took over {LOAD_DEADLINE_S:.0f}s")
        rows = data.items[start : start + batch]
        embeddings: list[str] | list[list[float]] = (
            [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in rows]
            if as_base64
            else rows.tolist()
        )
        body = {"ids": data.item_ids[start : start + batch], "embeddings": embeddings}
        _check(client.post(f"{DATABASE}/collections/{collection}/add", json=body))
        if (start // batch) % max(1, step // batch) == 0:
            print(
                f"chroma: added {start + len(rows):,}/{len(data.items):,} "
                f"({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )


def set_ef_search(url: str, collection: str, ef: int) -> None:
    body = {"new_configuration": {"hnsw": {"ef_search": ef}}}
    _check(httpx.put(f"{url}{DATABASE}/collections/{collection}", json=body, timeout=60))


def measure_recall(url: str, collection: str, data: Dataset, k: int, chunk: int = 100) -> float:
    found: list[list[str]] = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for start in range(0, len(data.queries), chunk):
            body = {
                "query_embeddings": data.queries[start : start + chunk].tolist(),
                "n_results": k,
                "include": ["distances"],
            }
            found += _check(client.post(f"{DATABASE}/collections/{collection}/query", json=body)).json()[
                "ids"
            ]
    return recall_at_k(found, data.exact, data.item_ids)


def tune_ef(
    handle: Chroma,
    collection: str,
    current_ef: int,
    *,
    data: Dataset,
    k: int,
    target: float,
    candidates: Sequence[int] = EF_CANDIDATES,
) -> tuple[int, float, list[tuple[int, float]]]:
    """Smallest ef_search of `candidates` whose recall is `target` (within RECALL_TOLERANCE).
    Chroma keeps a loaded index with the ef_search it was loaded with, so each change is followed
    by a restart."""
    curve: list[tuple[int, float]] = []
    for ef in candidates:
        if ef != current_ef:
            assert handle.server is not None
            set_ef_search(handle.server.url, collection, ef)
            handle.restart()
            current_ef = ef
        assert handle.server is not None
        recall = measure_recall(handle.server.url, collection, data, k)
        curve.append((ef, recall))
        print(f"chroma: ef_search {ef}: recall@{k} {recall:.3f}", file=sys.stderr, flush=True)
        if recall >= target - RECALL_TOLERANCE:
            break
    return curve[-1][0], curve[-1][1], curve


# --- load --------------------------------------------------------------------------------------


def _query_bodies(queries: np.ndarray, k: int) -> list[bytes]:
    """One query per body, as Chroma's clients send it; padded with JSON whitespace to one size."""
    bodies = [
        json.dumps(
            {
                "query_embeddings": [[round(float(x), 6) for x in row]],
                "n_results": k,
                "include": ["distances"],
            }
        ).encode()
        for row in queries
    ]
    size = max(len(body) for body in bodies)
    return [body + b" " * (size - len(body)) for body in bodies]


def _stats(pid: int, cpu_s: float, result: WrkResult) -> list[ProcessStats]:
    rss, peak = rss_mb(pid)
    return [
        ProcessStats("chroma", 1000 * cpu_s / result.requests, cpu_s / result.seconds, rss, peak),
        ProcessStats("wrk", result.wrk_cpu_ms_per_request, math.nan, math.nan, math.nan),
    ]


def ours_single(rows: Sequence[Row]) -> Row | None:
    """Our router's saturating single-query row (the best single-query rate if none is marked)."""
    router = [
        row for row in rows if row.scenario.startswith("router, single query") and "half" not in row.scenario
    ]
    marked = [row for row in router if "saturating" in row.scenario]
    return (marked or sorted(router, key=lambda row: row.requests_per_s))[-1] if router else None


def chroma_rows(
    work: Path,
    data: Dataset,
    *,
    k: int,
    seconds: float,
    connections: int,
    target_recall: float,
    ours: Sequence[Row] = (),
    venv: Path | None = None,
    m: int = 16,
    ef_construction: int = 200,
) -> tuple[list[Row], str, list[tuple[int, float]]]:
    """Chroma rows for the table, a one-line summary with the ratio, and its recall curve."""
    chroma = find_chroma(venv or work / "chroma-venv")
    data_dir = work / "chroma-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    bodies = _query_bodies(data.queries[: min(512, len(data.queries))], k)
    body_file, body_size = write_bodies(work, "chroma-single", bodies)
    rows: list[Row] = []
    with running_chroma(chroma, data_dir, work / "chroma-server.log") as handle:
        assert handle.server is not None
        collection, current_ef = ensure_collection(
            handle.server.url, data, m=m, ef_construction=ef_construction
        )
        ef, recall, curve = tune_ef(handle, collection, current_ef, data=data, k=k, target=target_recall)
        server = handle.server
        assert server is not None
        route = f"{DATABASE}/collections/{collection}/query"
        runs = []
        # Chroma's rate hardly moves with concurrency (it keeps about one core busy), so the
        # lower one shows its latency and the higher ones match the router's rows.
        for conns in sorted({max(1, connections // 4), connections, 4 * connections}):
            run_wrk(work, server.url, route, JSON, body_file, body_size, seconds=1, connections=conns)
            result, used = run_wrk(
                work, server.url, route, JSON, body_file, body_size,
                seconds=seconds, connections=conns, watch=[server.pid],
            )  # fmt: skip
            runs.append((conns, result, _stats(server.pid, used[server.pid], result)))
    best = max(runs, key=lambda run: run[1].requests_per_s)
    mine = ours_single(ours)
    for conns, result, stats in runs:
        ratio = (
            f"ours/Chroma {mine.requests_per_s / result.requests_per_s:.1f} x (goal >= 6); " if mine else ""
        )
        rows.append(
            Row(
                f"Chroma {CHROMADB_VERSION} HTTP server, single query, wrk -c{conns}"
                + (" (saturating)" if conns == best[0] else ""),
                result.requests_per_s,
                result.requests_per_s,
                result.p50_ms,
                result.p99_ms,
                recall,
                ef,
                stats,
                f"{ratio}one index, M {m}, ef_construction {ef_construction}; errors {result.errors}",
            )
        )
    return rows, _summary(best, curve, mine, target_recall), curve


def _summary(
    best: tuple[int, WrkResult, list[ProcessStats]],
    curve: list[tuple[int, float]],
    mine: Row | None,
    target: float,
) -> str:
    conns, result, stats = best
    ef, recall = curve[-1]
    tried = ", ".join(f"{e}: {r:.3f}" for e, r in curve)
    matched = recall >= target - RECALL_TOLERANCE
    found = "is the smallest within" if matched else "is the last tried, NOT within"
    text = (
        f"Chroma {CHROMADB_VERSION} (`chroma run`, one collection; recall@10 by ef_search: {tried}; "
        f"ef_search {ef} {found} {RECALL_TOLERANCE} of recall {target:.3f}): "
        f"{result.requests_per_s:,.0f} req/s at wrk -c{conns}, "
        f"{stats[0].cpu_ms_per_request:.3f} CPU ms/request, RSS {stats[0].rss_mb:.0f} MB"
    )
    if mine is None:
        return text + "; no router rows to compare with."
    ours_cpu = sum(p.cpu_ms_per_request for p in mine.processes if p.name != "wrk")
    ratio = mine.requests_per_s / result.requests_per_s
    return text + (
        f". Our router's saturating single-query rate {mine.requests_per_s:,.0f} req/s (recall "
        f"{mine.recall:.3f}, router + shards {ours_cpu:.3f} CPU ms/request) is {ratio:.1f} x Chroma's "
        f"(goal >= 6: {'met' if ratio >= 6 else 'MISSED'}); per request Chroma spends "
        f"{stats[0].cpu_ms_per_request / ours_cpu:.1f} x the CPU of router + shards."
    )


# --- standalone --------------------------------------------------------------------------------


def _last_run(work: Path, size: str) -> list[Row]:
    """Rows of the last full `benchmarks/run.py` on the same data size, if any."""
    path = work / "results.json"
    if not path.exists():
        return []
    raw = json.loads(path.read_text())
    argv = shlex.split(raw.get("command", ""))
    ran_size = argv[argv.index("--size") + 1] if "--size" in argv[:-1] else "200k"
    if ran_size != size:
        return []
    rows = []
    for row in raw["rows"]:
        processes = [ProcessStats(**p) for p in row.pop("processes")]
        rows.append(Row(**row, processes=processes))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="200k")
    parser.add_argument("--metric", choices=["cosine", "ip", "l2"], default="cosine")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (also 1/4 and 4x that)")
    parser.add_argument(
        "--target-recall",
        type=float,
        help="default: the recall of our rows in bench-out/results.json, else 0.95",
    )
    parser.add_argument(
        "--chroma-venv", type=Path, help="virtualenv with chromadb (default WORK/chroma-venv)"
    )
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench-out")
    args = parser.parse_args()
    for flag, value in (("--seconds", args.seconds), ("--connections", args.connections), ("--k", args.k)):
        if value <= 0:
            parser.error(f"{flag} must be positive, got {value}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    count, dimension = SIZES[args.size]
    data = make_dataset(
        args.work_dir, count, dimension, queries=args.queries, k=args.k, metric=args.metric, seed=args.seed
    )
    ours = _last_run(args.work_dir, args.size) if args.metric == "cosine" and args.k == 10 else []
    mine = ours_single(ours)
    target = args.target_recall or (mine.recall if mine else 0.95)
    rows, summary, curve = chroma_rows(
        args.work_dir,
        data,
        k=args.k,
        seconds=args.seconds,
        connections=args.connections,
        target_recall=target,
        ours=ours,
        venv=args.chroma_venv,
    )
    table_rows = ([mine] if mine else []) + rows
    print(markdown_table(table_rows).replace("nan", "—"))
    print(summary)
    command = "python benchmarks/chroma_bench.py " + shlex.join(sys.argv[1:])
    out = args.work_dir / "chroma-results.json"
    out.write_text(
        json.dumps(
            {
                "command": command,
                "chromadb": CHROMADB_VERSION,
                "target_recall": target,
                "recall_curve": curve,
                "summary": summary,
                "rows": [row.as_json() for row in table_rows],
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
