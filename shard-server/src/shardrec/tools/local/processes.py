"""Supervised child processes: start with logs to a file, notice death, restart with backoff, stop.

A tick-driven design (the supervisor calls `tick(now)` in its loop) keeps this free of threads and
makes restarts deterministic to test: the clock is an argument.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# A process that stayed up this long is considered healthy again: its next crash restarts fast.
STABLE_AFTER_S = 30.0


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. Two specs that compare equal describe the same process."""

    name: str
    argv: tuple[str, ...]
    log_file: Path
    env: tuple[tuple[str, str], ...] = ()
    port: int | None = None


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
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def is_running(self) -> bool:
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

    def reap(self, now: float) -> bool:
        """If the child died, record it and schedule a restart with backoff. True if it died."""
        if self.popen is None or self.popen.poll() is None:
            return False
        self.last_exit_code = self.popen.returncode
        self.popen = None
        lived = now - self.started_at
        self.backoff_s = (
            INITIAL_BACKOFF_S if lived >= STABLE_AFTER_S else min(self.backoff_s * 2, MAX_BACKOFF_S)
        )
        self.next_start_at = now + self.backoff_s
        self.restarts += 1
        return True

    def stop(self, grace_s: float = 5.0) -> None:
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
            if proc.popen is None and now >= proc.next_start_at:
                proc.start(now)
        return died

    def stop_all(self, grace_s: float = 5.0) -> None:
        for proc in self._procs.values():
            if proc.popen is not None and proc.popen.poll() is None:
                _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self._procs.values():
            proc.stop(max(0.1, deadline - time.monotonic()))
        self._procs.clear()
