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
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from shardrec.api import pki


@dataclass(frozen=True)
class ShardTls:
    """PEM files: the CA routers trust, and the certificate and key shards serve."""

    ca: Path
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, mode 0600 from the start (keys never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


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
    def tls_dir(self) -> Path:
        """The cluster's CA (`ca.pem`) and the shards' certificate and key (`shard.crt`,
        `shard.key`, mode 0600); `shard_tls` issues them."""
        return self.root / "tls"

    def shard_tls(self, now: datetime) -> ShardTls:
        """The cluster's shard TLS files: a CA of its own and a certificate for 127.0.0.1 and
        localhost, issued on first use and re-issued (with the same CA) once `pki.needs_renewal`
        says so. Running shards read their certificate at start, so a renewed one is served from
        each shard's next start (a local certificate lives 90 days and is renewed at 60)."""
        files = ShardTls(self.tls_dir / "ca.pem", self.tls_dir / "shard.crt", self.tls_dir / "shard.key")
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        if not files.ca.exists() or not (self.tls_dir / "ca.key").exists():
            ca = pki.new_ca(f"shardrec local {self.root.name}", now)
            _write_private(self.tls_dir / "ca.key", ca.key_pem)
            _write_private(files.ca, ca.cert_pem)
            files.cert.unlink(missing_ok=True)
        ca = pki.KeyPair(files.ca.read_bytes(), (self.tls_dir / "ca.key").read_bytes())
        current = files.cert.read_bytes() if files.cert.exists() and files.key.exists() else None
        if (
            current is None
            or pki.needs_renewal(pki.validity(current), now)
            or not pki.signed_by(current, ca.cert_pem)
        ):
            server = pki.new_server_cert(ca, ["localhost"], now, ip_addresses=["127.0.0.1"])
            _write_private(files.key, server.key_pem)
            _write_private(files.cert, server.cert_pem)
        return files

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

    def write_log_dir(self, layout: str, replica: int) -> Path:
        """The write logs of replica `replica` of every shard of `layout`: it outlives the process,
        so a restarted replica replays what it acknowledged. Per layout, because the replicas of
        two layouts run side by side during a rollout; a new layout gets the old one's writes by
        its build's cut and the forwarding after it (tools/local/carry.py)."""
        return self.root / "writes" / layout / f"replica-{replica}"

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
