"""Supervised child processes: start with logs to a file, notice death, restart with backoff, stop.

A tick-driven design (the supervisor calls `tick(now)` in its loop) keeps this free of threads and
makes restarts deterministic to test: the clock is an argument.

A process is known by its identity, pid *and* start time (field 22 of /proc/<pid>/stat): a pid
alone may have been reused by an unrelated process since it was recorded. A new supervisor adopts
the children of a dead one only when both match (`adoption_decision`), and signals a process it did
not start only through a pidfd opened before its start time was checked again (`signal_verified`),
so a reused pid is never adopted nor signalled.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# A process that stayed up this long is considered healthy again: its next crash restarts fast.
STABLE_AFTER_S = 30.0
# Every child of a local runtime (replicas, router, builds) carries its state folder in this
# environment variable: a new supervisor finds what a dead one left running even when the dead
# one's process table on disk is stale (a full disk), and only ever its own cluster's processes.
STATE_DIR_ENV = "SHARDREC_LOCAL_STATE_DIR"
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessIdentity:
    """One process for as long as it lives: a pid is reused, a (pid, start time) pair is not."""

    pid: int
    start_time: int  # clock ticks after boot, field 22 of /proc/<pid>/stat


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat this module needs."""

    state: str
    session: int
    start_time: int


def parse_stat(text: str) -> ProcStat | None:
    """Parse /proc/<pid>/stat. The command name (field 2) is in parentheses and may itself hold
    spaces and parentheses, so the fields are counted after its *last* closing parenthesis."""
    _, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 20:
        return None
    try:
        # rest starts at field 3 (state): session is field 6, starttime field 22
        return ProcStat(state=fields[0], session=int(fields[3]), start_time=int(fields[19]))
    except ValueError:
        return None


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    try:
        return parse_stat((proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def identity_of(pid: int, proc: Path = PROC) -> ProcessIdentity | None:
    stat = read_stat(pid, proc)
    return ProcessIdentity(pid, stat.start_time) if stat is not None else None


def is_alive(identity: ProcessIdentity, proc: Path = PROC) -> bool:
    """The very process `identity` names still runs (a zombie has finished)."""
    stat = read_stat(identity.pid, proc)
    return stat is not None and stat.start_time == identity.start_time and stat.state not in ("Z", "X")


def carries_state_dir(pid: int, root: Path, proc: Path = PROC) -> bool:
    """The process was started by a local runtime for the state folder `root`."""
    try:
        environ = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return f"{STATE_DIR_ENV}={root}".encode() in environ.split(b"\0")


def processes_of_state_dir(root: Path, proc: Path = PROC) -> Iterator[tuple[ProcessIdentity, int]]:
    """(identity, session) of every live process carrying `root` as its state folder."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = read_stat(pid, proc)
        if stat is None or stat.state in ("Z", "X") or not carries_state_dir(pid, root, proc):
            continue
        if read_stat(pid, proc) == stat:  # the same process before and after the environ read
            yield ProcessIdentity(pid, stat.start_time), stat.session


def signal_verified(identity: ProcessIdentity, sig: signal.Signals) -> bool:
    """Send `sig` to the process `identity` names and to no other. The pidfd pins the process the
    pid named when it was opened; its start time is checked after, so a pid reused in between is
    refused. False if that process is gone."""
    try:
        fd = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return False
    try:
        if not is_alive(identity):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def stop_verified(identity: ProcessIdentity, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, of a process this supervisor did not start."""
    if not signal_verified(identity, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while is_alive(identity) and time.monotonic() < deadline:
        time.sleep(0.05)
    if signal_verified(identity, signal.SIGKILL):
        deadline = time.monotonic() + grace_s
        while is_alive(identity) and time.monotonic() < deadline:
            time.sleep(0.05)


class Adoption(enum.Enum):
    ADOPT = "adopt"  # the recorded process runs what this supervisor would run: keep it
    REPLACE = "replace"  # it runs, but not what this supervisor would run: stop it
    GONE = "gone"  # it exited, or its pid now names another process: leave that pid alone


def adoption_decision(
    recorded: ProcessIdentity,
    current: ProcStat | None,
    recorded_digest: str | None,
    wanted_digest: str | None,
) -> Adoption:
    """What a new supervisor does with a process its dead predecessor recorded."""
    if current is None or current.start_time != recorded.start_time or current.state in ("Z", "X"):
        return Adoption.GONE
    if wanted_digest is not None and recorded_digest == wanted_digest:
        return Adoption.ADOPT
    return Adoption.REPLACE


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. Two specs that compare equal describe the same process."""

    name: str
    argv: tuple[str, ...]
    log_file: Path
    env: tuple[tuple[str, str], ...] = ()
    port: int | None = None
    # A digest of what the process reads once at start (its config files): a change is a changed
    # spec, so the process is restarted to apply it.
    revision: str = ""


def spec_digest(spec: ProcessSpec) -> str:
    """Names a spec in the process table on disk without writing its environment (secrets) there."""
    text = repr((spec.name, spec.argv, str(spec.log_file), spec.env, spec.port, spec.revision))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ManagedProcess:
    """One supervised child and its restart bookkeeping."""

    spec: ProcessSpec
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start_at: float = 0.0
    backoff_s: float = INITIAL_BACKOFF_S
    last_exit_code: int | None = None
    # A process a dead supervisor started and this one adopted (it cannot wait() on it).
    adopted: ProcessIdentity | None = None
    identity: ProcessIdentity | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        if self.popen is not None:
            return self.popen.pid
        return self.adopted.pid if self.adopted is not None else None

    def is_running(self) -> bool:
        if self.adopted is not None:
            return is_alive(self.adopted)
        return self.popen is not None and self.popen.poll() is None

    def start(self, now: float) -> None:
        self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.spec.log_file.open("ab")
        env = {**os.environ, **dict(self.spec.env)}
        # A new session so that `recctl down` (or a crash of the supervisor's terminal) can signal
        # each child's whole group, and Ctrl-C in the terminal reaches only the supervisor.
        self.popen = subprocess.Popen(
            list(self.spec.argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.started_at = now
        self.identity = identity_of(self.popen.pid)

    def reap(self, now: float) -> bool:
        """If the child died, record it and schedule a restart with backoff. True if it died."""
        if self.adopted is not None:
            if is_alive(self.adopted):
                return False
            self.adopted = self.identity = None
            self.last_exit_code = None  # not this process's child: its exit code is not known
        else:
            if self.popen is None or self.popen.poll() is None:
                return False
            self.last_exit_code = self.popen.returncode
            self.popen = self.identity = None
        lived = now - self.started_at
        self.backoff_s = (
            INITIAL_BACKOFF_S if lived >= STABLE_AFTER_S else min(self.backoff_s * 2, MAX_BACKOFF_S)
        )
        self.next_start_at = now + self.backoff_s
        self.restarts += 1
        return True

    def stop(self, grace_s: float = 5.0) -> None:
        if self.adopted is not None:
            stop_verified(self.adopted, grace_s)
            self.adopted = self.identity = None
        if self.popen is not None and self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=grace_s)
        self.popen = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


class ProcessTable:
    """The set of children the supervisor should keep running, keyed by name."""

    def __init__(self) -> None:
        self._procs: dict[str, ManagedProcess] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._procs

    def get(self, name: str) -> ManagedProcess | None:
        return self._procs.get(name)

    def items(self) -> Sequence[tuple[str, ManagedProcess]]:
        return sorted(self._procs.items())

    def adopt(self, spec: ProcessSpec, identity: ProcessIdentity, restarts: int, now: float) -> None:
        """Supervise a running process a dead supervisor started with `spec`."""
        self._procs[spec.name] = ManagedProcess(
            spec, started_at=now, restarts=restarts, adopted=identity, identity=identity
        )

    def ensure(self, spec: ProcessSpec, now: float) -> ManagedProcess:
        """Run `spec` under its name; a changed spec replaces the running process."""
        current = self._procs.get(spec.name)
        if current is not None and current.spec == spec:
            return current
        if current is not None:
            current.stop()
        proc = ManagedProcess(spec)
        proc.start(now)
        self._procs[spec.name] = proc
        return proc

    def remove(self, name: str, grace_s: float = 5.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.stop(grace_s)

    def tick(self, now: float) -> list[str]:
        """Reap dead children and restart those whose backoff expired. Returns names that died."""
        died = []
        for name, proc in self._procs.items():
            if proc.reap(now):
                died.append(name)
            if proc.popen is None and proc.adopted is None and now >= proc.next_start_at:
                proc.start(now)
        return died

    def stop_all(self, grace_s: float = 5.0) -> None:
        for proc in self._procs.values():
            if proc.adopted is not None:
                signal_verified(proc.adopted, signal.SIGTERM)
            elif proc.popen is not None and proc.popen.poll() is None:
                _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self._procs.values():
            proc.stop(max(0.1, deadline - time.monotonic()))
        self._procs.clear()
