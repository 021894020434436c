"""Shared pieces of the benchmark harness: data, layouts, ground truth, processes, wrk, tables.

Scripts in this folder import each other by module name (run them as `python benchmarks/run.py`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt

from shardrec.api.commands import ROUTER_MODULE, SHARD_MODULE, router_arguments, shard_arguments
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.scoring import Metric, exact_top_k
from shardrec.serving.index.synthetic import clustered

REPO = Path(__file__).resolve().parents[1]
MARKED_SECTION = re.compile(r"<!-- ([a-z0-9-]+):begin.*?-->.*?<!-- \1:end -->", re.S)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, as every benchmark's machine line names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_line(
    load_start: float, load_end: float | None = None, *, software: str = "", caveat: str = ""
) -> str:
    """Where a benchmark ran, as every generated section states it: OS, CPUs and their model,
    Python (and `software`, e.g. library versions), and the load average around the run; these
    machines are shared, so the load says how much to trust absolute numbers (`caveat` says what
    to compare instead)."""
    extra = f", {software}" if software else ""
    load = f"load average {load_start:.1f} at start"
    if load_end is not None:
        load += f", {load_end:.1f} at end"
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), Python "
        f"{platform.python_version()}{extra}; {load}" + (f" ({caveat})" if caveat else "")
    )


def marked_sections(text: str) -> str:
    """Every section of a document that another command writes between `<!-- NAME:begin -->` and
    `<!-- NAME:end -->` (bench-ab, cutover-window, ...), so a rewrite of the rest keeps them."""
    return "\n\n".join(match.group(0) for match in MARKED_SECTION.finditer(text))


def write_marked_section(doc: Path, section: str) -> None:
    """Replace `section`'s namesake in `doc`, or append it: `section` runs from its
    `<!-- NAME:begin ... -->` to its `<!-- NAME:end -->`; the rest of the document is kept."""
    found = MARKED_SECTION.fullmatch(section.strip())
    if found is None:
        raise ValueError("a marked section runs from <!-- NAME:begin --> to <!-- NAME:end -->")
    name = found.group(1)
    text = doc.read_text(encoding="utf-8")
    existing = re.search(rf"<!-- {name}:begin.*?-->.*?<!-- {name}:end -->", text, re.S)
    if existing:
        text = text[: existing.start()] + section.strip() + text[existing.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section.strip() + "\n"
    doc.write_text(text, encoding="utf-8")


Floats = npt.NDArray[np.float32]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Dataset:
    """Items (indexed), held-out queries from the same distribution, and their exact top-k."""

    name: str
    items: Floats
    item_ids: list[str]
    queries: Floats
    exact: npt.NDArray[np.int64]  # (queries, k) row indices into items
    metric: Metric
    embeddings_dir: Path


def make_dataset(
    work: Path, count: int, dimension: int, *, queries: int, k: int, metric: Metric, seed: int
) -> Dataset:
    """Seeded clustered vectors; the last `queries` rows are held out as queries. Cached in `work`."""
    name = f"synthetic-{count}x{dimension}-s{seed}"
    folder = work / name
    vectors = clustered(count + queries, dimension, clusters=max(50, count // 2000), spread=0.45, seed=seed)
    items, held_out = vectors[:count], vectors[count:]
    ids = [f"item-{i}" for i in range(count)]
    if not (folder / "items.npy").exists():
        write_embeddings_dir(folder, items, ids)
    truth_path = work / f"{name}-{metric}-q{queries}-k{k}.npy"
    if truth_path.exists():
        exact = np.load(truth_path)
    else:
        chunk = max(1, 20_000_000 // count)
        exact = np.concatenate(
            [exact_top_k(metric, held_out[i : i + chunk], items, k) for i in range(0, queries, chunk)]
        )
        np.save(truth_path, exact)
    return Dataset(name, items, ids, held_out, exact, metric, folder)


def ensure_layout(work: Path, data: Dataset, shards: int, *, m: int, ef_construction: int) -> Path:
    """Build (once) the layout of `data` with these parameters."""
    out = work / f"{data.name}-{data.metric}-S{shards}-m{m}-efc{ef_construction}"
    if not (out / "layout.json").exists():
        print(f"building {out.name} ...", file=sys.stderr, flush=True)
        build_layout(
            data.embeddings_dir,
            out,
            version="bench",
            shards=shards,
            metric=data.metric,
            m=m,
            ef_construction=ef_construction,
            progress=True,
        )
    return out


def recall_at_k(found: Sequence[Sequence[str]], exact: npt.NDArray[np.int64], ids: list[str]) -> float:
    hits = sum(len({ids[i] for i in row} & set(got)) for row, got in zip(exact.tolist(), found, strict=True))
    return hits / exact.size


@dataclass
class ProcessStats:
    """CPU ms per request and resident memory of one process over a measured interval."""

    name: str
    cpu_ms_per_request: float
    cpu_utilisation: float  # cores busy on average
    rss_mb: float
    peak_rss_mb: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def group_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU of several processes together (a router: its supervisor and workers)."""
    return sum(cpu_seconds(pid) for pid in pids)


def process_group(pid: int) -> list[int]:
    """`pid` and its child processes: a router and the workers it started (router/workers.py), if
    it started any."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def rss_mb(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    queries_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    recall: float
    ef_search: int
    processes: list[ProcessStats] = field(default_factory=list)
    note: str = ""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


# --- server processes -------------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for servers that need one on their command line)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid


def start_server(
    name: str,
    argv: Sequence[str],
    ready_path: str = "/readyz",
    timeout_s: float = 120,
    env: dict[str, str] | None = None,
) -> Server:
    """Start a server that prints `... listening on http://HOST:PORT` first, wait until ready.
    `env`: its environment (None: this process's)."""
    process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if "listening on " not in line:
        process.kill()
        raise RuntimeError(f"{name} did not start: {line!r}")
    server = Server(name, process, line.split()[-1])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{name} not ready within {timeout_s}s")


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 20, kill_wait_s: float = 10) -> None:
    """Stop one server process: SIGTERM, `grace_s` to exit (a peer's server may flush), then SIGKILL."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(kill_wait_s)


def stop_servers(servers: Sequence[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)


@contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        yield servers
    finally:
        stop_servers(servers)


def shard_argv(
    layout: Path,
    shard: int,
    ef_search: int | None = None,
    threads: int | None = None,
    *,
    write_log_dir: Path | None = None,
) -> list[str]:
    """A shard server on 127.0.0.1 and a port of its choosing (`start_server` reads it from the
    first line); None leaves a setting at the server's default."""
    arguments = shard_arguments(
        layout_dir=str(layout),
        shard=shard,
        host="127.0.0.1",
        port=0,
        ef_search=ef_search,
        search_threads=threads,
        write_log_dir=None if write_log_dir is None else str(write_log_dir),
    )
    return [sys.executable, "-m", SHARD_MODULE, *arguments]


def router_argv(
    topology: Path,
    config: Path | None = None,
    *,
    api_keys_file: Path | None = None,
    workers: int | None = None,
) -> list[str]:
    """A router on 127.0.0.1 and a port of its choosing, reading `topology` (and `config`); None
    leaves a setting at the router's default (workers: as many as its CPUs allow)."""
    arguments = router_arguments(
        host="127.0.0.1",
        port=0,
        topology_file=str(topology),
        router_config=None if config is None else str(config),
        api_keys_file=None if api_keys_file is None else str(api_keys_file),
        workers=workers,
    )
    return [sys.executable, "-m", ROUTER_MODULE, *arguments]


# --- wrk ---------------------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- Cycles through fixed-size request bodies stored back to back in BODY_FILE, so every request
-- carries a different query; reports latency percentiles as one JSON line.
local size = tonumber(os.getenv("BODY_SIZE"))
local path = os.getenv("BODY_FILE")
local route = os.getenv("BODY_PATH")
local content_type = os.getenv("BODY_TYPE")
local api_key = os.getenv("BODY_API_KEY")
local headers = {["Content-Type"] = content_type}
if api_key and #api_key > 0 then headers["x-api-key"] = api_key end
local bodies = {}
local counter = 0
init = function(args)
  local f = assert(io.open(path, "rb"))
  local all = f:read("*a")
  f:close()
  for i = 0, (#all / size) - 1 do bodies[#bodies + 1] = all:sub(i * size + 1, (i + 1) * size) end
  counter = math.random(#bodies)
end
request = function()
  counter = counter + 1
  return wrk.format("POST", route, headers, bodies[(counter % #bodies) + 1])
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "errors": %d, '
      .. '"p50_us": %d, "p99_us": %d, "mean_us": %f}\n',
    summary.requests, summary.duration, errors, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    wrk_cpu_ms_per_request: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def write_bodies(work: Path, name: str, bodies: Sequence[bytes]) -> tuple[Path, int]:
    sizes = {len(body) for body in bodies}
    if len(sizes) != 1:
        raise ValueError(f"{name}: bodies must all have one size, got {sorted(sizes)}")
    path = work / f"bodies-{name}.bin"
    path.write_bytes(b"".join(bodies))
    return path, sizes.pop()


def run_wrk(  # noqa: PLR0917 - mirrors wrk's own arguments
    work: Path,
    url: str,
    route: str,
    content_type: str,
    body_file: Path,
    body_size: int,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    watch: Sequence[int] = (),
    on_done: Callable[[], None] | None = None,
    api_key: str | None = None,
) -> tuple[WrkResult, dict[int, float]]:
    """Run wrk; return its result and the CPU seconds each watched pid used meanwhile. `api_key`:
    sent as X-API-Key on every request (a router started with --api-keys-file)."""
    script = work / "bodies.lua"
    script.write_text(WRK_SCRIPT)
    env = {
        **os.environ,
        "BODY_FILE": str(body_file),
        "BODY_SIZE": str(body_size),
        "BODY_PATH": route,
        "BODY_TYPE": content_type,
        "BODY_API_KEY": api_key or "",
    }
    before = {pid: cpu_seconds(pid) for pid in watch}
    process = subprocess.Popen(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    _, status, usage = os.wait4(process.pid, 0)
    used = {pid: cpu_seconds(pid) - start for pid, start in before.items()}
    output = process.stdout.read().decode() if process.stdout else ""
    if status != 0 or "WRK_RESULT" not in output:
        raise RuntimeError(f"wrk failed: {output}")
    data = json.loads(output.split("WRK_RESULT", 1)[1].strip().splitlines()[0])
    requests = max(1, int(data["requests"]))
    result = WrkResult(
        requests=requests,
        seconds=data["duration_us"] / 1e6,
        errors=int(data["errors"]),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        wrk_cpu_ms_per_request=1000 * (usage.ru_utime + usage.ru_stime) / requests,
    )
    if on_done:
        on_done()
    return result, used


def markdown_table(rows: Sequence[Row]) -> str:
    head = (
        "| scenario | queries/s | requests/s | p50 ms | p99 ms | recall@10 | efSearch "
        "| CPU ms/request per process | RSS MB per process | note |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|\n"
    )
    lines = []
    for row in rows:
        cpu = ", ".join(f"{p.name} {p.cpu_ms_per_request:.3f}" for p in row.processes)
        rss = ", ".join(f"{p.name} {p.rss_mb:.0f}" for p in row.processes)
        lines.append(
            f"| {row.scenario} | {row.queries_per_s:,.0f} | {row.requests_per_s:,.0f} | {row.p50_ms:.2f} | "
            f"{row.p99_ms:.2f} | {row.recall:.3f} | {row.ef_search} | {cpu} | {rss} | {row.note} |"
        )
    return head + "\n".join(lines) + "\n"
