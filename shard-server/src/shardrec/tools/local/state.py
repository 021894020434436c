"""The runtime's state folder: what lives where, atomic writes, and the one-supervisor lock.

Everything `recctl status` and `recctl down` need from another shell is on disk here, so the
supervisor keeps no state that a restart would lose.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class StateDir:
    """Paths inside one cluster's state folder."""

    root: Path

    @property
    def spec_file(self) -> Path:
        """The desired spec as last applied (YAML of the whole object)."""
        return self.root / "cluster.yaml"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def runtime_file(self) -> Path:
        """Supervisor pid, router URL and the process table, for `recctl status`."""
        return self.root / "runtime.json"

    @property
    def topology_file(self) -> Path:
        return self.root / "topology.json"

    @property
    def router_config_file(self) -> Path:
        return self.root / "router-config.json"

    @property
    def shard_token_file(self) -> Path:
        """The cluster's shard admin token (mode 0600): shards require it on their admin and
        item-vector routes, the router sends it."""
        return self.root / "shard-token"

    def shard_token(self) -> str:
        """The cluster's shard admin token, generated on first use."""
        path = self.shard_token_file
        if not path.exists():
            token = secrets.token_hex(32)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(token + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(path)
        return path.read_text(encoding="ascii").strip()

    @property
    def lock_file(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def layouts_dir(self) -> Path:
        return self.root / "layouts"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def layout_dir(self, layout: str) -> Path:
        return self.layouts_dir / layout

    def ensure(self) -> None:
        for folder in (self.root, self.layouts_dir, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write aside, fsync, rename: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class SupervisorLock:
    """An exclusive flock on the state folder: one supervisor per cluster.

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, state: StateDir) -> None:
        self._path = state.lock_file
        self._handle: IO[str] | None = None

    def try_acquire(self) -> bool:
        handle = self._path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def is_supervisor_running(state: StateDir) -> bool:
    """True while some process holds the supervisor lock."""
    if not state.lock_file.exists():
        return False
    with state.lock_file.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def supervisor_pid(state: StateDir) -> int | None:
    try:
        text = state.lock_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None
