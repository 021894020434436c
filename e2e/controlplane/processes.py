"""Control-plane processes: spawn in their own process group, record PID + start time, stop by PID only.

Teardown signals a recorded PID only while its start time and argv[0] still match (_owns), so a stale
state file can never kill an unrelated process that reused the PID.
Part of e2e/controlplane (cluster.py puts this directory on sys.path; see its docstring).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_TAIL_LINES = 25


class ControlPlaneError(RuntimeError):
    """The control plane failed to start, or a wait timed out; the message carries log tails."""


def free_port() -> int:
    """A port that was free a moment ago; callers retry on 'address already in use'."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def proc_start_time(pid: int) -> str | None:
    """Kernel start time of pid (stat field 22): with the pid it identifies a process despite PID reuse."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def is_alive(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


@dataclass
class Component:
    """One control-plane process; pid/start_time/argv0 are what `down` needs to kill it safely later."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int = 0
    start_time: str = ""

    def spawn(self) -> None:
        with self.log.open("ab") as log:
            # start_new_session: own process group (teardown signals the whole group) and survives
            # the parent exiting, which `cluster.py up` relies on to detach.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self.proc.pid
        self.start_time = proc_start_time(self.pid) or ""

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_time": self.start_time,
            "argv0": self.argv[0],
            "log": str(self.log),
        }


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _owns(entry: dict[str, Any]) -> bool:
    """True if the pid in a state entry is still the process we started (same start time and argv[0])."""
    pid = int(entry["pid"])
    if not pid or proc_start_time(pid) != entry["start_time"]:
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return False
    return argv0 == str(entry["argv0"])


def terminate(
    entries: Sequence[dict[str, Any]],
    procs: dict[int, subprocess.Popen[bytes]] | None = None,
    grace: float = 10.0,
    kill_wait: float = 5.0,
) -> None:
    """SIGTERM the process groups of entries, wait up to `grace` s, then SIGKILL, wait up to `kill_wait` s.

    Only PIDs verified by _owns() are signalled, so a stale state file can never kill an unrelated process.
    """
    procs = procs or {}
    pids = [int(e["pid"]) for e in entries if _owns(e)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)  # pgid == pid because of start_new_session
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            for pid in pids:
                if pid in procs:
                    procs[pid].poll()  # reap our own children so they do not linger as zombies
            pids = [p for p in pids if is_alive(p)]
            if pids:
                time.sleep(0.1)
        if not pids:
            return
