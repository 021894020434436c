"""Item writes under load: write throughput and latency, and what they cost the reads (issue 18).

    python benchmarks/writes_bench.py [--seconds 8] [--rounds 2] [--writers 8] [--write-doc] [--quick]

Real processes on 127.0.0.1: one layout (`--items` x `--dimension`, 2 shards) served by
`--replicas` shard servers per shard, each with its own write log (`--write-log-dir`, fsync per
write batch; replica 0 of each shard is its leader), and one router per acknowledgement policy
(`writes.ack` all / majority, `--workers 1`, an API key with the write permission). For each
router, interleaved in rounds (A, B, C, A, B, C, ... so load drift on this shared machine hits
every phase alike), for `--seconds` each:

  A. reads only: wrk at `--connections` on /v1/recommend (user queries, X-API-Key);
  B. the same reads while `--writers` concurrent writers (asyncio + httpx, one process thread)
     send PUT /v1/items/{id} with distinct ids (every 10th operation a DELETE of an id the writer
     upserted 5 operations before) as fast as the acknowledgements come back;
  C. the writers alone.

Write rates count acknowledged (200) writes that completed inside the phase's window; errors are
non-2xx answers or transport errors (wrk's count for reads). The fsync cost is timed on the
write logs' disk (200-byte appends, each fsynced) at the start and at the end of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Server,
    WrkResult,
    cpu_model,
    cpu_seconds,
    router_argv,
    run_wrk,
    running,
    shard_argv,
    start_server,
    write_bodies,
    write_marked_section,
)

from shardrec.api.topology import LayoutTopology, ReplicaEndpoint, ShardEndpoints, Topology
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.tools.local.state import atomic_write_text

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- writes-bench:begin -->", "<!-- writes-bench:end -->"
DEFAULT_REPLICAS = 2


def markers(replicas: int) -> tuple[str, str]:
    """The section a run writes: one per replica count (2, the default, is the main one)."""
    name = "writes-bench" if replicas == DEFAULT_REPLICAS else f"writes-bench-r{replicas}"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


SHARDS = 2
KEY = "k-writer"
HEADERS = {"x-api-key": KEY}
ACKS = ("all", "majority")
PHASES = {"A": "reads only", "B": "reads + writes", "C": "writes only"}
DELETE_EVERY = 10
FAILED_WRITE_PAUSE_S = 0.05


@dataclass(frozen=True)
class Op:
    ended: float  # monotonic
    seconds: float
    status: int  # HTTP status; 0 for a transport error


@dataclass(frozen=True)
class Writes:
    acknowledged: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    refused: tuple[tuple[int, int], ...] = ()  # (status, count) of the errors; status 0: transport

    @property
    def per_s(self) -> float:
        return self.acknowledged / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Cpu:
    """Cores busy on average over a phase: the router, every shard server, and this process (the
    writers' thread; its main thread only waits)."""

    router: float
    shards: float
    writers: float
    queue_wait_ms: float  # the shards' mean wait of a query for a search thread (paused by writes)
    shard_call_ms: float  # the router's mean read request to a shard replica (sent to answered)


@dataclass(frozen=True)
class Costs:
    """Where the reads' time went, over a phase: what applying writes took from each shard server
    (its searches paused, the apply's CPU), a search's time inside the shard server, and how long
    the processes' threads were runnable but waiting for a CPU (this machine is shared)."""

    paused_ms_per_s: float = 0.0  # per shard server (mean): searches paused for writes
    drain_ms_per_s: float = 0.0  # ... of which waiting for the running searches to end
    barriers_per_s: float = 0.0  # per shard server (mean): pauses
    apply_cpu_ms_per_s: float = 0.0  # per shard server (mean): CPU of applying writes to hnswlib
    apply_ms_per_s: float = 0.0  # per shard server (mean): wall time of the apply
    search_ms: float = 0.0  # a search request inside a shard server (mean): queue, search, answer
    requests_per_barrier: float = 0.0  # write requests (lead, replicate) committed per pause
    runq_router_ms_per_s: float = 0.0  # the router's threads waiting for a CPU
    runq_shards_ms_per_s: float = 0.0  # per shard server (mean): its threads waiting for a CPU


SHARD_SAMPLES = {
    "barriers": "shardrec_shard_write_barriers_total",
    "drain": "shardrec_shard_write_barrier_wait_seconds_total",
    "paused": "shardrec_shard_write_exclusive_seconds_total",
    "apply": "shardrec_shard_write_apply_seconds_total",
    "apply_cpu": "shardrec_shard_write_apply_cpu_seconds_total",
    "groups": "shardrec_shard_write_group_requests_count",
    "group_requests": "shardrec_shard_write_group_requests_sum",
    "search_s": 'shardrec_shard_request_seconds_sum{route="search"}',
    "searches": 'shardrec_shard_request_seconds_count{route="search"}',
}


def shard_samples(urls: Sequence[str]) -> dict[str, float]:
    """SHARD_SAMPLES summed over the shard servers at `urls` (0 for a sample a server lacks)."""
    total = dict.fromkeys(SHARD_SAMPLES, 0.0)
    for url in urls:
        values = {}
        for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        for name, key in SHARD_SAMPLES.items():
            total[name] += values.get(key, 0.0)
    return total


def run_queue_seconds(pid: int) -> float:
    """Time the threads of `pid` (those alive now) were runnable but not running (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def histogram(urls: Sequence[str], name: str, label: str = "") -> tuple[float, float]:
    """Sum (s) and count of histogram `name` over the processes at `urls` (lines with `label`)."""
    total, count = 0.0, 0.0
    for url in urls:
        for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
            if label not in line:
                continue
            if line.startswith(name + "_sum"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith(name + "_count"):
                count += float(line.rsplit(" ", 1)[1])
    return total, count


def queue_wait(urls: Sequence[str]) -> tuple[float, float]:
    return histogram(urls, "shardrec_shard_queue_wait_seconds")


def shard_calls(url: str) -> tuple[float, float]:
    return histogram([url], "shardrec_router_shard_request_duration_seconds", 'outcome="ok"')


def _mean_ms(before: tuple[float, float], after: tuple[float, float]) -> float:
    count = after[1] - before[1]
    return 1000 * (after[0] - before[0]) / count if count else 0.0


class CpuWatch:
    def __init__(self, router: Server, shards: Sequence[Server]) -> None:
        self.router, self.shards = router, list(shards)
        self.pids = [shard.pid for shard in self.shards]
        self.waited = queue_wait([shard.url for shard in self.shards])
        self.calls = shard_calls(router.url)
        self.samples = shard_samples([shard.url for shard in self.shards])
        self.run_queue = (run_queue_seconds(router.pid), sum(map(run_queue_seconds, self.pids)))
        self.started = time.monotonic()
        self.before = (cpu_seconds(router.pid), sum(map(cpu_seconds, self.pids)), _self_cpu_seconds())

    def costs(self) -> Costs:
        """Per second of the phase so far (call right after `cores`)."""
        wall = max(time.monotonic() - self.started, 1e-9)
        now = shard_samples([shard.url for shard in self.shards])
        d = {name: now[name] - self.samples[name] for name in now}
        router_q = run_queue_seconds(self.router.pid) - self.run_queue[0]
        shards_q = sum(map(run_queue_seconds, self.pids)) - self.run_queue[1]
        per_shard = 1000 / (wall * len(self.shards))
        return Costs(
            paused_ms_per_s=d["paused"] * per_shard,
            drain_ms_per_s=d["drain"] * per_shard,
            barriers_per_s=d["barriers"] / (wall * len(self.shards)),
            apply_cpu_ms_per_s=d["apply_cpu"] * per_shard,
            apply_ms_per_s=d["apply"] * per_shard,
            search_ms=1000 * d["search_s"] / d["searches"] if d["searches"] else 0.0,
            requests_per_barrier=d["group_requests"] / d["barriers"] if d["barriers"] else 0.0,
            runq_router_ms_per_s=max(router_q, 0.0) * 1000 / wall,
            runq_shards_ms_per_s=max(shards_q, 0.0) * per_shard,
        )

    def cores(self) -> Cpu:
        wall = time.monotonic() - self.started
        now = (cpu_seconds(self.router.pid), sum(map(cpu_seconds, self.pids)), _self_cpu_seconds())
        router, shards, writers = ((b - a) / wall for a, b in zip(self.before, now, strict=True))
        waited = _mean_ms(self.waited, queue_wait([shard.url for shard in self.shards]))
        return Cpu(router, shards, writers, waited, _mean_ms(self.calls, shard_calls(self.router.url)))


@dataclass(frozen=True)
class Phase:
    ack: str
    round: int
    phase: str  # A, B or C
    reads: WrkResult | None
    writes: Writes | None
    cpu: Cpu
    costs: Costs = field(default_factory=Costs)


@dataclass
class Writers:
    """`count` concurrent writers in a thread of their own (its own event loop), until stopped."""

    url: str
    count: int
    dimension: int
    tag: str
    ops: list[Op] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    first_ack: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Writers:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.count, max_keepalive_connections=self.count)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, limits=limits) as client:
            await asyncio.gather(*(self._writer(client, w) for w in range(self.count)))

    async def _writer(self, client: httpx.AsyncClient, writer: int) -> None:
        rng = np.random.default_rng(hash((self.tag, writer)) & 0xFFFFFFFF)
        n = 0
        while not self.stop.is_set():
            if n % DELETE_EVERY == DELETE_EVERY - 1:
                method, item, body = "DELETE", f"{self.tag}-{writer}-{n - 5}", None
            else:
                method, item = "PUT", f"{self.tag}-{writer}-{n}"
                body = {"vector": rng.normal(size=self.dimension).astype(np.float32).tolist()}
            started = time.monotonic()
            try:
                answer = await client.request(method, f"/v1/items/{item}", json=body, headers=HEADERS)
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
            ended = time.monotonic()
            self.ops.append(Op(ended, ended - started, status))
            if status == 200:
                self.first_ack.set()
            else:
                await asyncio.sleep(FAILED_WRITE_PAUSE_S)  # no hot loop on a refusing router
            n += 1

    def summary(self, start: float, end: float) -> Writes:
        """The writes that completed inside [start, end]."""
        inside = [op for op in list(self.ops) if start <= op.ended <= end]
        acked = [op.seconds for op in inside if op.status == 200]
        p50, p99 = (float(np.percentile(acked, q)) * 1000 for q in (50, 99)) if acked else (0.0, 0.0)
        refused = Counter(op.status for op in inside if op.status != 200)
        return Writes(
            len(acked), len(inside) - len(acked), end - start, p50, p99, tuple(sorted(refused.items()))
        )


def fsync_ms(folder: Path, count: int) -> list[float]:
    """`count` 200-byte appends to one file in `folder`, each fsynced; the fsync times in ms."""
    path = folder / "fsync-probe.bin"
    times = []
    with path.open("ab") as file:
        for _ in range(count):
            file.write(b"x" * 200)
            file.flush()
            started = time.perf_counter()
            os.fsync(file.fileno())
            times.append((time.perf_counter() - started) * 1000)
    path.unlink()
    return times


def build(work: Path, items: int, dimension: int, users: int) -> Path:
    rng = np.random.default_rng(7)
    source = write_embeddings_dir(
        work / "embeddings",
        rng.normal(size=(items, dimension)).astype(np.float32),
        [f"item-{i}" for i in range(items)],
        users=rng.normal(size=(users, dimension)).astype(np.float32),
        user_ids=[user_id(u) for u in range(users)],
    )
    out = work / "layout"
    build_layout(source, out, version="v1", shards=SHARDS, metric="ip", progress=False)
    return out


def user_id(number: int) -> str:
    return f"user-{number:07d}"


def topology(layout: Path, dimension: int, replicas: dict[int, list[Server]]) -> Topology:
    active = LayoutTopology(
        layout=layout.name,
        version="v1",
        shards=SHARDS,
        dimension=dimension,
        metric="ip",
        artifact_dir=str(layout),
        endpoints=[
            ShardEndpoints(shard=s, replicas=[ReplicaEndpoint(name=p.name, url=p.url) for p in procs])
            for s, procs in replicas.items()
        ],
    )
    return Topology(revision=1, active=active)


def start_router(
    work: Path, ack: str, topology_file: Path, prefix: str = "", env: dict[str, str] | None = None
) -> Server:
    config = work / f"router-{prefix}{ack}.json"
    config.write_text(json.dumps({"writes": {"ack": ack}}))
    keys = work / "api-keys"
    keys.write_text(f"writer:{KEY} read,write\n")
    argv = router_argv(topology_file, config, api_keys_file=keys, workers=1)
    return start_server(f"router-{prefix}{ack}", argv, env=env)


def baseline_env(work: Path, ref: str) -> tuple[dict[str, str], str]:
    """An environment whose `python -m shardrec...` runs the serving code of git `ref` (its
    shard-server/src exported to `work`, ahead of the installed package on PYTHONPATH), and the
    commit `ref` names (short)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{ref}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    out = work / f"baseline-{commit}"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "shard-server/src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    source = out / "shard-server" / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")])),
    }
    found = subprocess.run(
        [sys.executable, "-c", "import shardrec; print(shardrec.__file__)"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if not found.startswith(str(source)):
        raise RuntimeError(f"the baseline's code is not the one imported: {found}")
    return env, commit


# --- tables --------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.1f}"


def phases_table(rows: Sequence[Phase], connections: int, writers: int) -> str:
    lines = [
        f"| ack | round | phase (reads: wrk -c{connections}; writes: {writers} writers) | read req/s "
        "| read p50 ms | read p99 ms | read errors | acked writes/s | write p50 ms | write p99 ms "
        "| write errors | CPU cores: router / shards / writers | shard queue wait ms (mean) "
        "| router's read call to a shard ms (mean) | shard-side search ms (mean) "
        "| searches paused for writes ms/s per shard server (pauses/s) "
        "| apply CPU ms/s per shard server | waiting for a CPU ms/s: router / per shard server |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        r, w = row.reads, row.writes
        reads = (
            f"{r.requests_per_s:,.0f} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | {r.errors}"
            if r
            else "- | - | - | -"
        )
        writes = f"{w.per_s:,.1f} | {_ms(w.p50_ms)} | {_ms(w.p99_ms)} | {w.errors}" if w else "- | - | - | -"
        cpu = f"{row.cpu.router:.2f} / {row.cpu.shards:.2f} / {row.cpu.writers:.2f}"
        c = row.costs
        lines.append(
            f"| {row.ack} | {row.round} | {row.phase} {PHASES[row.phase]} | {reads} | {writes} | {cpu} "
            f"| {row.cpu.queue_wait_ms:.2f} | {row.cpu.shard_call_ms:.2f} | {c.search_ms:.2f} "
            f"| {c.paused_ms_per_s:.1f} ({c.barriers_per_s:.1f}) | {c.apply_cpu_ms_per_s:.1f} "
            f"| {c.runq_router_ms_per_s:.0f} / {c.runq_shards_ms_per_s:.0f} |"
        )
    return "\n".join(lines)


def _pick(rows: Sequence[Phase], ack: str, phase: str) -> list[Phase]:
    return [row for row in rows if row.ack == ack and row.phase == phase]


def _span(values: Sequence[float], digits: int = 2) -> str:
    """The median of the rounds, and their range when they differ: `3.10 (2.90-4.00)`."""
    if not values:
        return "-"
    low, high, mid = min(values), max(values), statistics.median(values)
    if round(low, digits) == round(high, digits):
        return f"{mid:,.{digits}f}"
    return f"{mid:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def summary_table(rows: Sequence[Phase], labels: Sequence[str] = ACKS) -> str:
    """Per ack policy: the ratios of each round's B to the same round's A (read p99, read req/s),
    and write throughput with and without the reads; median of the rounds (range)."""
    lines = [
        "| ack (median of the rounds, range) | read p99 ms alone | read p99 ms with writes "
        "| read p99 ratio (B/A) | read req/s ratio (B/A) "
        "| acked writes/s with reads | acked writes/s alone | write p99 ms alone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ack in labels:
        alone, mixed, writes = _pick(rows, ack, "A"), _pick(rows, ack, "B"), _pick(rows, ack, "C")
        pairs = [(a.reads, b.reads) for a, b in zip(alone, mixed, strict=False) if a.reads and b.reads]
        if not pairs:
            continue
        lines.append(
            f"| {ack} | {_span([a.p99_ms for a, _ in pairs], 1)} | {_span([b.p99_ms for _, b in pairs], 1)} "
            f"| {_span([b.p99_ms / a.p99_ms for a, b in pairs])} "
            f"| {_span([b.requests_per_s / a.requests_per_s for a, b in pairs])} "
            f"| {_span([m.writes.per_s for m in mixed if m.writes], 1)} "
            f"| {_span([c.writes.per_s for c in writes if c.writes], 1)} "
            f"| {_span([c.writes.p99_ms for c in writes if c.writes], 1)} |"
        )
    return "\n".join(lines)


def fsync_line(start: Sequence[float], end: Sequence[float]) -> str:
    def describe(values: Sequence[float]) -> str:
        q = np.percentile(values, [50, 99])
        return (
            f"p50 {q[0]:.2f} ms, p99 {q[1]:.2f} ms, mean {statistics.fmean(values):.2f} ms (n={len(values)})"
        )

    return (
        f"fsync of a 200-byte append on the write logs' disk: at the start {describe(start)}; "
        f"at the end {describe(end)}."
    )


def attribution(rows: Sequence[Phase], label: str, connections: int) -> str:
    """Where the reads' extra time with writes went (B against the same round's A; medians of the
    rounds). A read's mean time in the system is `connections` / read req/s (Little's law, wrk is
    closed-loop); it splits, by the metrics the processes keep, into the shards' queue wait (which
    holds the pauses for writes), the rest of a search inside a shard server, the router's call to
    a shard outside the shard server, and the router outside its shard calls."""
    pairs = [(a, b) for a, b in zip(_pick(rows, label, "A"), _pick(rows, label, "B"), strict=False)
             if a.reads and b.reads]  # fmt: skip
    if not pairs:
        return ""

    def med(value: Callable[[Phase], float], phase: int) -> float:
        return statistics.median(value(pair[phase]) for pair in pairs)

    def parts(row: Phase) -> tuple[float, float, float, float]:
        assert row.reads is not None
        total = 1000 * connections / row.reads.requests_per_s
        queue, shard, call = row.cpu.queue_wait_ms, row.costs.search_ms, row.cpu.shard_call_ms
        return queue, shard - queue, call - shard, total - call

    def total(row: Phase) -> float:
        assert row.reads is not None
        return 1000 * connections / row.reads.requests_per_s

    deltas = [statistics.median(parts(b)[i] - parts(a)[i] for a, b in pairs) for i in range(4)]
    c = [b.costs for _, b in pairs]
    paused = statistics.median(x.paused_ms_per_s for x in c)
    pauses = statistics.median(x.barriers_per_s for x in c)
    drain = statistics.median(x.drain_ms_per_s for x in c)
    per_pause = paused / pauses if pauses else 0.0
    return (
        f"Where the reads' time went, {label}: a read's mean time in the system ({connections} "
        f"connections / read req/s) {med(total, 0):.1f} ms alone, {med(total, 1):.1f} ms with the "
        f"writes (medians). Of the difference: the shards' queue wait, which holds the pauses for "
        f"writes, {deltas[0]:+.2f} ms; the rest of a search inside a shard server {deltas[1]:+.2f} ms; "
        f"the router's call to a shard outside the shard server (transport, both event loops, the "
        f"scheduler) {deltas[2]:+.2f} ms; the router outside its shard calls {deltas[3]:+.2f} ms. "
        f"With the writes, each shard server paused its searches {paused:.1f} ms/s "
        f"({paused / 10:.1f}% of the time: {pauses:.1f} pauses/s of {per_pause:.2f} ms, "
        f"{drain:.1f} ms/s of it waiting for the running search to end; "
        f"{statistics.median(x.requests_per_barrier for x in c):.1f} write requests per pause) and "
        f"spent {statistics.median(x.apply_cpu_ms_per_s for x in c):.1f} ms CPU/s applying them "
        f"({statistics.median(x.apply_ms_per_s for x in c):.1f} ms/s wall). Threads waiting for a "
        f"CPU: the router {med(lambda r: r.costs.runq_router_ms_per_s, 0):.0f} -> "
        f"{med(lambda r: r.costs.runq_router_ms_per_s, 1):.0f} ms/s, each shard server "
        f"{med(lambda r: r.costs.runq_shards_ms_per_s, 0):.0f} -> "
        f"{med(lambda r: r.costs.runq_shards_ms_per_s, 1):.0f} ms/s; CPU cores router / shards / "
        f"writers {med(lambda r: r.cpu.router, 0):.2f} / {med(lambda r: r.cpu.shards, 0):.2f} / "
        f"{med(lambda r: r.cpu.writers, 0):.2f} -> {med(lambda r: r.cpu.router, 1):.2f} / "
        f"{med(lambda r: r.cpu.shards, 1):.2f} / {med(lambda r: r.cpu.writers, 1):.2f}."
    )


def reading(rows: Sequence[Phase], replicas: int, connections: int = 8) -> str:
    """The numbers in words, computed (a hand-written reading would go stale on the next run)."""
    parts = []
    for ack in ACKS:
        pairs = [
            (a.reads, b.reads)
            for a, b in zip(_pick(rows, ack, "A"), _pick(rows, ack, "B"), strict=False)
            if a.reads and b.reads
        ]
        with_reads = [m.writes.per_s for m in _pick(rows, ack, "B") if m.writes]
        alone = [c.writes.per_s for c in _pick(rows, ack, "C") if c.writes]
        if pairs and with_reads and alone:
            p99 = _span([b.p99_ms / a.p99_ms for a, b in pairs])
            throughput = _span([b.requests_per_s / a.requests_per_s for a, b in pairs])
            parts.append(
                f"ack={ack}: with the writes the read p99 was x{p99} and read throughput x{throughput} "
                "of the same round's reads alone (median of the rounds, range); "
                f"{statistics.median(with_reads):,.0f} acknowledged writes/s beside the reads, "
                f"{statistics.median(alone):,.0f} alone (medians)."
            )
    read_errors = sum(r.reads.errors if r.reads else 0 for r in rows)
    write_errors = sum(r.writes.errors if r.writes else 0 for r in rows)
    refused: Counter[int] = Counter()
    for row in rows:
        refused.update(dict(row.writes.refused) if row.writes else {})
    kinds = ", ".join(f"{count} x {status or 'transport error'}" for status, count in sorted(refused.items()))
    parts.append(
        f"Errors over every phase: {read_errors} reads (wrk: non-2xx, timeouts, socket errors), "
        f"{write_errors} writes{f' ({kinds})' if kinds else ''}."
    )
    parts.extend(filter(None, (attribution(rows, ack, connections) for ack in ACKS)))
    if replicas == 2:
        parts.append(
            "With 2 replicas a majority is 2 (`ready // 2 + 1`), so `majority` waits for the follower "
            "as `all` does: the two policies' rows are the same configuration measured twice, i.e. "
            "a measure of the run's noise; they differ from 3 replicas on (`--replicas 3`)."
        )
    return " ".join(parts)


def machine() -> str:
    model = cpu_model()
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


# --- run -----------------------------------------------------------------------------------------


def run_phase(  # noqa: PLR0917 - one phase of one round
    work: Path,
    router: Server,
    shards: Sequence[Server],
    ack: str,
    round_: int,
    phase: str,
    bodies: tuple[Path, int],
    args: argparse.Namespace,
) -> Phase:
    tag = f"w-{ack}-{round_}-{phase}"
    watch = CpuWatch(router, shards)
    if phase == "A":
        reads, _ = run_wrk(
            work, router.url + "/v1/recommend", "/v1/recommend", "application/json", *bodies,
            seconds=args.seconds, connections=args.connections, api_key=KEY,
        )  # fmt: skip
        return Phase(ack, round_, phase, reads, None, watch.cores(), watch.costs())
    with Writers(router.url, args.writers, args.dimension, tag) as writers:
        writers.first_ack.wait(10)
        start = time.monotonic()
        watch = CpuWatch(router, shards)
        if phase == "B":
            result: WrkResult | None
            result, _ = run_wrk(
                work, router.url + "/v1/recommend", "/v1/recommend", "application/json", *bodies,
                seconds=args.seconds, connections=args.connections, api_key=KEY,
            )  # fmt: skip
        else:
            result = None
            time.sleep(max(1, round(args.seconds)))
        end = time.monotonic()
        cpu, costs = watch.cores(), watch.costs()
    return Phase(ack, round_, phase, result, writers.summary(start, end), cpu, costs)


INTRO = """## Item writes: throughput, latency and the read p99 they cost

Item upserts and deletes (`PUT`/`DELETE /v1/items/{id}`, docs/design.md "Item writes") go to the
owning shard's leader (replica 0), which numbers, appends and fsyncs them, then to the follower;
the router acknowledges by `writes.ack`. Applying a write stops that replica's searches until it
is applied, so writes cost reads. Real processes on this machine: one layout on 2 shards x
{replicas} replicas, each replica with its own write log on the same disk, one router per ack
policy (`--workers 1`). Phases interleaved per round (A reads alone, B the same reads with the
writers, C the writers alone), so drift on this shared machine hits each phase alike. The
writers are a Python asyncio + httpx thread in the benchmark process, closed loop (the next write
as soon as the previous one is acknowledged); every 10th operation is a delete."""


def write_doc(text: str, command: str, reading: str, replicas: int) -> None:
    begin, end = markers(replicas)
    intro = INTRO.replace("{replicas}", str(replicas))
    if replicas != DEFAULT_REPLICAS:
        intro = (
            f"### Item writes with {replicas} replicas per shard\n\nAs above, with {replicas} replicas "
            f"per shard: a majority is {replicas // 2 + 1} of {replicas}, so `majority` acknowledges "
            "before the slowest follower has the write."
        )
    block = (
        f"{begin}\n{intro}\n\n`{command}` on this machine "
        f"({time.strftime('%Y-%m-%d')}):\n\n{text}\n\n{reading}\n{end}"
    )
    write_marked_section(DOC, block)


AB_BEGIN, AB_END = "<!-- writes-bench-ab:begin -->", "<!-- writes-bench-ab:end -->"
AB_INTRO = """### Item writes: the shard servers' write path before and after, in one run

The same benchmark (2 shards x 2 replicas, ack=all) on two clusters started side by side from
one layout: the serving code of an earlier commit (`--baseline`, exported from git and put first
on the processes' PYTHONPATH) and this tree's. Their phases alternate in every round (before A, B,
C, then after A, B, C), so the machine's drift hits both alike; compare each cluster's B/A ratios
(its own reads alone in the same round) rather than raw numbers across rows."""


def write_ab_doc(text: str, command: str, words: str) -> None:
    block = (
        f"{AB_BEGIN}\n{AB_INTRO}\n\n`{command}` on this machine "
        f"({time.strftime('%Y-%m-%d')}):\n\n{text}\n\n{words}\n{AB_END}"
    )
    write_marked_section(DOC, block)


def start_shards(  # noqa: PLR0917 - a cluster's shard servers
    work: Path,
    layout: Path,
    replicas: int,
    servers: list[Server],
    prefix: str = "",
    env: dict[str, str] | None = None,
) -> dict[int, list[Server]]:
    """`replicas` shard servers per shard, each with its own write log; replica 0 leads."""
    started: dict[int, list[Server]] = {}
    for shard in range(SHARDS):
        for replica in range(replicas):
            name = f"{prefix}s{shard}-r{replica}"
            argv = shard_argv(layout, shard, threads=1, write_log_dir=work / "writes" / name)
            server = start_server(name, argv, env=env)
            servers.append(server)
            started.setdefault(shard, []).append(server)
    return started


def footer(args: argparse.Namespace, load_start: Sequence[float], load_end: Sequence[float]) -> str:
    def loads(values: Sequence[float]) -> str:
        return " / ".join(f"{v:.1f}" for v in values)

    return (
        f"Machine: {machine()}; load average (1/5/15 min) at the start {loads(load_start)}, "
        f"at the end {loads(load_end)}. Layout {args.items:,} items x {args.dimension} dims, "
        f"{SHARDS} shards x {args.replicas} replicas, {args.rounds} rounds of {args.seconds:g} s per phase."
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dimension", type=int, default=32)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=2, help="shard servers per shard")
    parser.add_argument("--seconds", type=float, default=8.0, help="each phase")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8, help="wrk connections for the reads")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers")
    parser.add_argument("--fsyncs", type=int, default=100, help="fsyncs timed at the start and the end")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4k items, 2 s phases, 1 round")
    parser.add_argument("--write-doc", action="store_true", help="write the tables into docs/benchmarks.md")
    parser.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also run the serving code of GIT_REF (a second cluster, ack=all), interleaved with "
        "this tree's in every round: before/after in one run (its own section with --write-doc)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.users, args.seconds, args.rounds, args.fsyncs = 4000, 2000, 2.0, 1, 20
    return args


def report_ab(
    rows: Sequence[Phase], before: str, args: argparse.Namespace, closing: list[str], command: str
) -> None:
    """The before/after tables and words (--baseline): the baseline's ack=all rows beside this
    tree's, as they alternated."""
    after = "all, after (this tree)"
    pairs = [
        replace(row, ack=after) if row.ack == "all" else row for row in rows if row.ack in (before, "all")
    ]
    ab = "\n\n".join(
        [phases_table(pairs, args.connections, args.writers), summary_table(pairs, (before, after)), *closing]
    )
    words = " ".join(attribution(pairs, label, args.connections) for label in (before, after))
    print(ab + "\n\n" + words)
    if args.write_doc:
        write_ab_doc(ab, command, words)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(
        ["python benchmarks/writes_bench.py", *(a for a in (argv or []) if a != "--write-doc")]
    )
    load_start = os.getloadavg()
    rows: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="shardrec-writes-bench-") as tmp:
        work = Path(tmp)
        fsync_start = fsync_ms(work, args.fsyncs)
        layout = build(work, args.items, args.dimension, args.users)
        rng = np.random.default_rng(11)
        queries = [
            json.dumps({"user_id": user_id(int(u)), "k": 10}).encode()
            for u in rng.integers(args.users, size=20_000)
        ]
        bodies = write_bodies(work, "users", queries)
        servers: list[Server] = []
        clusters: list[tuple[str, Server, list[Server]]] = []  # (label, router, its shard servers)
        before = ""
        with running(servers):
            if args.baseline:
                env, commit = baseline_env(work, args.baseline)
                before = f"all, before ({commit})"
                old = start_shards(work, layout, args.replicas, servers, "before-", env)
                old_topology = work / "topology-before.json"
                atomic_write_text(old_topology, topology(layout, args.dimension, old).model_dump_json())
                servers.append(start_router(work, "all", old_topology, "before-", env))
                clusters.append((before, servers[-1], [s for procs in old.values() for s in procs]))
            replicas = start_shards(work, layout, args.replicas, servers)
            shard_servers = [server for procs in replicas.values() for server in procs]
            topology_file = work / "topology.json"
            atomic_write_text(topology_file, topology(layout, args.dimension, replicas).model_dump_json())
            routers = {ack: start_router(work, ack, topology_file) for ack in ACKS}
            servers.extend(routers.values())
            clusters.extend((ack, routers[ack], shard_servers) for ack in ACKS)
            warmup = argparse.Namespace(**{**vars(args), "seconds": 1})
            for label, router, shards in clusters:  # connections open, code paths hot (unmeasured)
                for phase in PHASES:
                    run_phase(work, router, shards, label, 0, phase, bodies, warmup)
            for round_ in range(1, args.rounds + 1):
                for label, router, shards in clusters:
                    for phase in PHASES:
                        row = run_phase(work, router, shards, label, round_, phase, bodies, args)
                        line = phases_table([row], args.connections, args.writers).splitlines()[-1]
                        print(line, flush=True)
                        rows.append(row)
        fsync_end = fsync_ms(work, args.fsyncs)
    current = [row for row in rows if row.ack in ACKS]
    closing = [fsync_line(fsync_start, fsync_end), footer(args, load_start, os.getloadavg())]
    text = "\n\n".join(
        [phases_table(current, args.connections, args.writers), summary_table(current), *closing]
    )
    words = reading(current, args.replicas, args.connections)
    print(text + "\n\n" + words)
    if args.write_doc:
        write_doc(text, command, words, args.replicas)
    if before:
        report_ab(rows, before, args, closing, command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
