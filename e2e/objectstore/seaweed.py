"""A real S3-compatible object store for tests and benchmarks: SeaweedFS (`weed server -s3`) on 127.0.0.1.

Standard library only (the benchmark runs it from a venv with just the S3 client libraries).

    with SeaweedS3.start(find_weed(), workdir) as s3:
        s3.endpoint                     # http://127.0.0.1:<port>
        s3.access_key, s3.secret_key    # the one identity of its s3 config json
        s3.create_bucket("index")
        s3.stop(); s3.restart()         # an unreachable store, then the same store again

Every listener (master, volume, filer, S3 and their gRPC ports) gets a free port on 127.0.0.1 and the
data, sockets and log live in `workdir`, so sessions run in parallel. `ip` and `argv_prefix` put it
elsewhere: the real node's e2e (e2e/node) runs it inside the node's network namespace
(`argv_prefix=nsenter --net=...`, nsenter execs so the PID stays the server's) bound to the pod bridge's
gateway address, which pods reach and nothing off this machine does; never 0.0.0.0. The process is
stopped by its PID (SIGTERM, then SIGKILL). The binary comes from e2e/objectstore/build.sh (cached per
version).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGION = "us-east-1"
# `weed server` never finishes its graceful stop in 10 s (measured: the volume server waits 10 s
# after SIGTERM, -volume.preStopSeconds; without that wait the filer retries flushing its metadata
# log to the stopped volume server for 15 s), so every stop ended in SIGKILL after waiting 10 s.
# Waiting 2 s ends it the same way, 8 s sooner (test_storage_s3 reads the store back after a
# stop and restart).
STOP_GRACE_S = 2.0
MAX_VOLUMES = 1000
"""Volumes the test store may grow: 7 per bucket at its first write, so ~140 buckets."""


class WeedNotFoundError(RuntimeError):
    """The weed binary is not built (run e2e/objectstore/build.sh)."""


def _versions() -> dict[str, str]:
    values = {}
    for line in (HERE / "versions.env").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _go_version() -> str | None:
    try:
        out = subprocess.run(
            ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def find_weed() -> Path:
    """The cached weed binary of versions.env (SHARDREC_WEED overrides), or WeedNotFoundError."""
    override = os.environ.get("SHARDREC_WEED")
    if override:
        return Path(override)
    cache = Path(os.environ.get("SHARDREC_CACHE") or Path.home() / ".cache" / "shardrec")
    version = _versions()["SEAWEEDFS_VERSION"]
    go = _go_version()
    candidates = (
        [cache / "objectstore" / f"seaweedfs-{version}-go{go.removeprefix('go')}" / "weed"] if go else []
    )
    candidates += sorted((cache / "objectstore").glob(f"seaweedfs-{version}-go*/weed"))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise WeedNotFoundError(
        f"SeaweedFS {version} is not built under {cache / 'objectstore'}: run `bash e2e/objectstore/build.sh`"
    )


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held together while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --- a minimal SigV4 signer (only for the harness's own bucket requests) ------------------------------


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def signed_request(
    method: str, endpoint: str, path: str, *, access_key: str, secret_key: str, body: bytes = b""
) -> urllib.request.Request:
    """A path-style S3 request signed with AWS Signature Version 4."""
    now = datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = endpoint.split("://", 1)[1].rstrip("/")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload]
    )
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(f"AWS4{secret_key}".encode(), day), REGION), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{endpoint.rstrip('/')}{path}", data=body or None, method=method)
    for name, value in headers.items():
        if name != "host":
            request.add_header(name, value)
    request.add_header(
        "Authorization",
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}",
    )
    return request


@dataclass
class SeaweedS3:
    """One `weed server -s3` process (master + volume + filer + S3 gateway) on 127.0.0.1."""

    binary: Path
    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    access_key: str = field(default_factory=lambda: "AKSHARDREC" + secrets.token_hex(5).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None
    ip: str = "127.0.0.1"
    argv_prefix: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @classmethod
    @contextmanager
    def start(
        cls,
        binary: Path,
        workdir: Path,
        *,
        timeout: float = 90.0,
        ip: str = "127.0.0.1",
        argv_prefix: tuple[str, ...] = (),
    ) -> Iterator[SeaweedS3]:
        """Start, yield, stop. `ip`: the one address every listener binds (never 0.0.0.0); `argv_prefix`:
        a wrapper that must exec the binary (e.g. nsenter into a network namespace)."""
        if ip in {"0.0.0.0", "::", ""}:
            raise ValueError("SeaweedFS binds one address, never every interface")
        server = cls(binary, workdir, ip=ip, argv_prefix=tuple(argv_prefix))
        try:
            server._launch(timeout)
            yield server
        finally:
            server.stop()

    def _write_config(self) -> Path:
        config = {
            "identities": [
                {
                    "name": "shardrec-tests",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.workdir / "s3.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        path.chmod(0o600)
        return path

    def _launch(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        if not self.ports:
            names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
            self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        p = self.ports
        argv = [
            *self.argv_prefix,
            str(self.binary),
            "server",
            f"-ip={self.ip}",
            f"-ip.bind={self.ip}",
            f"-dir={data}",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=1024",
            # An explicit count: 0 means free disk / volume size, and every bucket's first write
            # grows 7 volumes, so with 45 GB free the store refused first writes after ~6 buckets
            # (500 "no free volumes left"). Volumes are files that grow as written (none is
            # preallocated), so a high count costs nothing until used.
            f"-volume.max={MAX_VOLUMES}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={self._write_config()}",
        ]
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Ready when an authenticated bucket listing answers 200 (S3 gateway, filer and master up)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited {self.process.returncode} while starting: {self.log_tail()}")
            try:
                request = signed_request(
                    "GET", self.endpoint, "/", access_key=self.access_key, secret_key=self.secret_key
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}"
            except OSError as error:
                last = str(error)
            time.sleep(0.3)
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint} not ready after {timeout:.0f}s ({last}): {self.log_tail()}"
        )

    def create_bucket(self, name: str, *, attempts: int = 20) -> None:
        """PUT /<name> (idempotent); retried briefly while the volume layout grows on first use."""
        for attempt in range(attempts):
            request = signed_request(
                "PUT", self.endpoint, f"/{name}", access_key=self.access_key, secret_key=self.secret_key
            )
            try:
                with urllib.request.urlopen(request, timeout=30):
                    return
            except urllib.error.HTTPError as error:
                body = error.read().decode(errors="replace")
                if error.code == 409 or "BucketAlreadyOwnedByYou" in body or "BucketAlreadyExists" in body:
                    return
                if attempt + 1 == attempts or error.code < 500:
                    raise RuntimeError(f"create bucket {name}: HTTP {error.code}: {body[:300]}") from error
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the process by its PID (its own session): SIGTERM, then SIGKILL after STOP_GRACE_S."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self, timeout: float = 90.0) -> None:
        """Start again on the same ports and data (after `stop`)."""
        self.stop()
        self._launch(timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client_env(self) -> dict[str, str]:
        """AWS_* variables (the only way credentials reach recctl) for this store's identity."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
