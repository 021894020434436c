"""Several router worker processes on one port, so a router pod uses every core it is given.

The router is one asyncio event loop, about one core. `shardrec-router --workers N` (default:
the CPUs of the process's affinity capped by its cgroup quota, `serving/cpus.py`) starts N worker
processes that all serve the same port. Two ways to share it (`--worker-sockets`):

- `reuseport` (default): each worker binds its own listening socket with SO_REUSEPORT; the kernel
  spreads new connections over them by a hash of the 4-tuple. The supervisor holds one bound,
  never-listening socket of the group, so the port stays reserved (and `--port 0` is resolved once).
- `shared`: the supervisor listens and every worker accepts from the one inherited socket (what
  uvicorn's own `--workers` does); whichever worker's loop wakes first takes the connection.

Each worker is a fresh interpreter (`python -m shardrec.serving.router.main`, re-executed, not
forked: no event loop or thread state crosses a fork). Each watches the topology itself, so a
topology document or layout switch reaches every worker on its own; each loads the layout's user
table, whose vectors are memory-mapped (`serving/index/users.py`), so the page cache holds them
once for all workers.

What the pod reports (`RouterServing`, to the operator's pod annotation and in /readyz) must be
true of every worker: each worker writes its own report to `<run dir>/serving-<i>.json`, and the
pod's report is `combine_serving` of all of them, the least advanced worker's (a switch is
confirmed only once every worker made it). Worker 0 delivers it to the pod annotation.
Metrics: each worker keeps its own in memory and publishes them (twice a second, and when it
answers /metrics) to files of prometheus_client's multiprocess format under the run dir, which
whichever worker answers /metrics sums (`router/metrics.py`).

A worker that dies is started again (after a 1 s pause); more than `MAX_RESTARTS` deaths within
`RESTART_WINDOW_S` stop the pod with exit code 1, so Kubernetes sees a crash loop. Workers die with
the supervisor (PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves no worker holding the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from shardrec.api.canary import CanaryStats, merged
from shardrec.api.topology import RouterServing
from shardrec.serving.router.metrics import MULTIPROCESS_ENV
from shardrec.serving.router.serving_report import ServingReporter
from shardrec.serving.sockets import bound_tcp_socket

log = logging.getLogger("shardrec.router.workers")

WorkerSockets = Literal["reuseport", "shared"]
WORKER_SOCKETS: Final = ("reuseport", "shared")

# Set by the supervisor in each worker's environment (internal: not flags).
ENV_INDEX: Final = "SHARDREC_ROUTER_WORKER_INDEX"
ENV_COUNT: Final = "SHARDREC_ROUTER_WORKER_COUNT"
ENV_RUN_DIR: Final = "SHARDREC_ROUTER_WORKER_DIR"
ENV_LISTEN_FD: Final = "SHARDREC_ROUTER_LISTEN_FD"
ENV_PARENT: Final = "SHARDREC_ROUTER_SUPERVISOR_PID"
METRICS_DIR_ENV: Final = MULTIPROCESS_ENV
PROMETHEUS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
"""Never passed to workers: prometheus_client's own multiprocess mode would write every metric
update to a file (the workers publish in batches instead, `router/metrics.py`)."""

MAX_RESTARTS: Final = 5
RESTART_WINDOW_S: Final = 60.0
RESTART_PAUSE_S: Final = 1.0
BOARD_POLL_S: Final = 0.2


def worker_count(requested: int | None, usable: int) -> int:
    """Workers to run: the number asked for, else one per usable CPU (quota included); at least 1."""
    return max(1, requested if requested is not None else usable)


# --- what the pod serves: every worker's report, combined --------------------------------------


def combine_serving(reports: Sequence[RouterServing | None]) -> RouterServing:
    """The pod's report from its workers' (None: a worker that has not reported yet).

    It is the least advanced worker's: the smallest (epoch, revision) wins, and a worker that has
    not reported counts as having applied nothing; among workers at that order, `layout`,
    `version` and `prepared` are kept only where they all agree (else None), `error` is the first
    one given, and `switched_at` the latest (the pod switched when its last worker did). So the
    operator and the local runtime confirm a switch or a staged layout only once every worker
    serves it. Pure."""
    if not reports:
        return RouterServing()
    known = [report if report is not None else RouterServing() for report in reports]
    order = min((report.epoch, report.revision) for report in known)
    laggards = [report for report in known if (report.epoch, report.revision) == order]

    def agreed(values: list[str | None]) -> str | None:
        return values[0] if len(set(values)) == 1 else None

    layouts = [report.layout for report in laggards]
    layout = agreed(layouts)
    errors = [report.error for report in known if report.error]
    if layout is None and len(set(layouts)) > 1:
        errors.insert(0, f"router workers serve different layouts: {sorted({str(x) for x in layouts})}")
    return RouterServing(
        layout=layout,
        version=agreed([report.version for report in laggards]) if layout is not None else None,
        revision=order[1],
        epoch=order[0],
        prepared=agreed([report.prepared for report in laggards]),
        error="; ".join(errors)[:1024],
        switched_at=max(report.switched_at for report in laggards),
        canary=combine_canary([report.canary for report in known]),
    )


CanaryReport = dict[str, str | int | float | None]


def combine_canary(reports: Sequence[CanaryReport | None]) -> CanaryReport | None:
    """The pod's canary measurements from its workers' (`GET /canary` of each): added up by
    `shardrec.api.canary.merged`, as the planner adds up routers. Only reports of the newest step
    count (a worker that has not applied it yet still reports the previous one); None without any."""
    known = [CanaryStats.from_report(report) for report in reports if report is not None]
    if not known:
        return None
    newest = max(known, key=lambda stats: stats.step)
    total = merged(known, newest.layout, newest.step)
    return None if total is None else total.to_report()


@dataclass
class ServingBoard:
    """The run directory's `serving-<i>.json` files: each worker writes its own, anyone reads all."""

    run_dir: Path
    index: int
    count: int

    def path(self, index: int) -> Path:
        return self.run_dir / f"serving-{index}.json"

    def write(self, serving: RouterServing) -> None:
        target = self.path(self.index)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_text(serving.model_dump_json(), encoding="utf-8")
        temporary.replace(target)

    def read(self, index: int) -> RouterServing | None:
        try:
            return RouterServing.model_validate_json(self.path(index).read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def combined(self) -> RouterServing:
        return combine_serving([self.read(index) for index in range(self.count)])


@dataclass
class WorkerReporter:
    """A worker's `ServingReporter`: it records the worker's own report on the board; worker 0
    also delivers the pod's combined report to `inner` (the pod annotation) when it changes."""

    board: ServingBoard
    inner: ServingReporter | None = None
    _sent: RouterServing | None = field(default=None, init=False)

    async def report(self, serving: RouterServing) -> None:
        await asyncio.to_thread(self.board.write, serving)

    def pod_serving(self, own: RouterServing) -> RouterServing:
        return self.board.combined()

    async def run(self) -> None:
        if self.inner is None or self.board.index != 0:
            return
        inner = self.inner
        delivery = asyncio.get_running_loop().create_task(inner.run())
        try:
            while True:
                combined = await asyncio.to_thread(self.board.combined)
                if combined != self._sent:
                    await inner.report(combined)
                    self._sent = combined
                await asyncio.sleep(BOARD_POLL_S)
        finally:
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery


# --- in a worker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerEnv:
    """What the supervisor told this worker through its environment."""

    index: int
    count: int
    run_dir: Path
    listen_fd: int | None
    parent: int

    @classmethod
    def from_environ(cls) -> WorkerEnv | None:
        index = os.environ.get(ENV_INDEX)
        if index is None:
            return None
        fd = os.environ.get(ENV_LISTEN_FD)
        return cls(
            index=int(index),
            count=int(os.environ[ENV_COUNT]),
            run_dir=Path(os.environ[ENV_RUN_DIR]),
            listen_fd=int(fd) if fd else None,
            parent=int(os.environ[ENV_PARENT]),
        )


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux prctl PR_SET_PDEATHSIG); exit now if it
    is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        sys.exit(1)


def worker_socket(env: WorkerEnv, host: str, port: int) -> socket.socket:
    """The worker's listening socket: inherited (`shared`), or its own in the SO_REUSEPORT group."""
    if env.listen_fd is not None:
        return socket.socket(fileno=env.listen_fd)
    return bound_tcp_socket(host, port, reuse_port=True, no_delay=True)


# --- the supervisor -----------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]


class Supervisor:
    """Starts `count` workers on one port, relays their output, restarts the ones that die, and
    stops them all on SIGTERM/SIGINT."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        host: str,
        port: int,
        count: int,
        sockets: WorkerSockets,
        backlog: int,
        prog: str,
    ) -> None:
        self.argv = list(argv)
        self.host = host
        self.count = count
        self.sockets = sockets
        self.prog = prog
        self.sock = bound_tcp_socket(host, port, reuse_port=sockets == "reuseport", no_delay=True)
        if sockets == "shared":
            self.sock.listen(backlog)
        self.port: int = self.sock.getsockname()[1]
        self.run_dir = Path(tempfile.mkdtemp(prefix="shardrec-router-"))
        (self.run_dir / "metrics").mkdir()
        self.workers: dict[int, _Worker] = {}
        self.deaths: list[float] = []
        self.stopping = threading.Event()

    def _env(self, index: int) -> dict[str, str]:
        env = {
            **{name: value for name, value in os.environ.items() if name != PROMETHEUS_DIR_ENV},
            ENV_INDEX: str(index),
            ENV_COUNT: str(self.count),
            ENV_RUN_DIR: str(self.run_dir),
            ENV_PARENT: str(os.getpid()),
            METRICS_DIR_ENV: str(self.run_dir / "metrics"),
        }
        if self.sockets == "shared":
            env[ENV_LISTEN_FD] = str(self.sock.fileno())
        return env

    def _start(self, index: int) -> _Worker:
        argv = [sys.executable, "-m", "shardrec.serving.router.main", *self.argv, "--port", str(self.port)]
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            env=self._env(index),
            pass_fds=(self.sock.fileno(),) if self.sockets == "shared" else (),
        )
        assert process.stdout is not None
        line = process.stdout.readline().decode(errors="replace")
        if "listening on" not in line:
            process.wait()
            raise RuntimeError(f"router worker {index} did not start (exit code {process.returncode})")
        threading.Thread(target=_relay, args=(process.stdout,), daemon=True).start()
        return _Worker(index, process)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        try:
            for index in range(self.count):
                self.workers[index] = self._start(index)
            # The same first line as one process prints (the URL last: callers parse it).
            print(f"{self.prog} listening on http://{self.host}:{self.port}", flush=True)
            log.info("%d router workers share the port (%s)", self.count, self.sockets)
            return self._watch()
        except RuntimeError as exc:
            print(f"{self.prog}: error: {exc}", file=sys.stderr)
            return 1
        finally:
            self._stop_all()
            self.sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _watch(self) -> int:
        while not self.stopping.wait(0.2):
            for index, worker in list(self.workers.items()):
                code = worker.process.poll()
                if code is None:
                    continue
                self._mark_dead(worker.process.pid)
                now = time.monotonic()
                self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW_S] + [now]
                log.warning("router worker %d (pid %d) exited with %s", index, worker.process.pid, code)
                if len(self.deaths) > MAX_RESTARTS:
                    print(
                        f"{self.prog}: error: {len(self.deaths)} worker deaths within "
                        f"{RESTART_WINDOW_S:.0f} s; stopping",
                        file=sys.stderr,
                    )
                    return 1
                if self.stopping.wait(RESTART_PAUSE_S):
                    break
                self.workers[index] = self._start(index)
        return 0

    def _mark_dead(self, pid: int) -> None:
        """Drop a dead worker's live gauges (in-flight, cache bytes) from the summed metrics."""
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.run_dir / "metrics"))  # type: ignore[no-untyped-call]

    def _stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.terminate()
        deadline = time.monotonic() + 15
        for worker in self.workers.values():
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(5)


def _relay(stream: object) -> None:
    """Copy a worker's further stdout lines to ours (the first, its listening line, is consumed)."""
    for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
