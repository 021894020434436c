"""`shardrec-shard`: serve shard I of a layout over HTTP (wire format: `wire.py`; client: `client.py`).

Every flag falls back to an environment variable, SHARDREC_SHARD_<FLAG> (e.g.
SHARDREC_SHARD_LAYOUT_DIR, SHARDREC_SHARD_EF_SEARCH, SHARDREC_SHARD_ADMIN_TOKEN; the flag names
and the rule are in `shardrec.api.commands`, whose `shard_arguments` builds the command line
the operator, the local runtime and the benchmarks run). `--port 0` picks a free port; the first
stdout line is always `shardrec-shard listening on http(s)://HOST:PORT` (https with --tls-cert).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.util
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from shardrec.api.commands import DEFAULT_EF_SEARCH, env_name
from shardrec.api.commands import ShardFlags as F
from shardrec.serving.credentials import StaticTokens, TokenFile, TokenFileError, TokenSource
from shardrec.serving.heap import settle_heap
from shardrec.serving.http_limits import HttpLimits, guarded_protocol
from shardrec.serving.shard.app import Drain, ShardServer, build_api
from shardrec.serving.shard.engine import EngineSettings, LoadRejectedError, SearchEngine
from shardrec.serving.shard.exit_codes import EXIT_LOAD_FAILED, EXIT_PORT_IN_USE
from shardrec.serving.shard.metrics import ShardMetrics
from shardrec.serving.sockets import bound_tcp_socket
from shardrec.serving.tls import CertificateReloader, server_context

LISTEN_BACKLOG = 4096
CERT_RELOAD_CHECK_S = 2.0
"""How often a TLS shard looks for a renewed certificate (two stat calls)."""
GRACEFUL_SHUTDOWN_S = 5
"""How long SIGTERM waits for requests in flight and connections to close before it cancels them.
The pre-stop drain has already turned routers away (`Drain`), so what is left is answered in
milliseconds; a TLS connection whose peer never answers the close (a stuck or partitioned router)
would otherwise hold the shard for asyncio's 30 s TLS shutdown timeout per connection."""
# Router -> shard bodies are at most app.MAX_BODY_BYTES (64 MiB) over a local network; the idle
# timeout is longer than the router's pool keeps connections idle.
HTTP_LIMITS = HttpLimits(header_timeout_s=10.0, body_timeout_s=30.0, keep_alive_s=120.0)


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(env_name(F.PROCESS, flag), default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardrec-shard", description="Serve one shard of a layout.")
    parser.add_argument(
        F.LAYOUT_DIR,
        type=Path,
        default=_env(F.LAYOUT_DIR),
        help="layout artifact folder; omit to start empty and load via /v1/admin/load",
    )
    parser.add_argument(
        F.LAYOUT_ROOT,
        type=Path,
        default=_env(F.LAYOUT_ROOT),
        help="POST /v1/admin/load takes only layouts under this folder (default: the folder holding "
        f"{F.LAYOUT_DIR}; without either, any folder the admin token holder names)",
    )
    parser.add_argument(F.SHARD, type=int, default=_env(F.SHARD), help="shard number, 0-based")
    parser.add_argument(F.HOST, default=_env(F.HOST, "127.0.0.1"))
    parser.add_argument(F.PORT, type=int, default=int(_env(F.PORT, "9100") or 9100))
    parser.add_argument(F.EF_SEARCH, type=int, default=int(_env(F.EF_SEARCH) or DEFAULT_EF_SEARCH))
    parser.add_argument(
        F.SEARCH_THREADS,
        type=int,
        default=_env(F.SEARCH_THREADS),
        help="threads running knn_query (default: usable CPUs)",
    )
    parser.add_argument(
        F.DRAIN_SECONDS,
        type=float,
        default=float(_env(F.DRAIN_SECONDS, "0") or 0),
        help="GET /prestop fails /readyz and returns after this long (the pod's preStop hook)",
    )
    parser.add_argument(
        F.MAX_WAIT_MS,
        type=float,
        default=float(_env(F.MAX_WAIT_MS, "0") or 0),
        help="longest a request waits for others to join its batch (default 0: next tick)",
    )
    parser.add_argument(F.MAX_BATCH_QUERIES, type=int, default=int(_env(F.MAX_BATCH_QUERIES) or 512))
    parser.add_argument(
        F.ADMIN_TOKEN,
        default=_env(F.ADMIN_TOKEN),
        help="require 'Authorization: Bearer TOKEN' on /v1/admin/load and /v1/items/vectors",
    )
    parser.add_argument(
        F.WRITE_LOG_DIR,
        type=Path,
        default=_env(F.WRITE_LOG_DIR),
        help="folder of this replica's write logs (item upserts and deletes); unset: writes refused",
    )
    parser.add_argument(
        F.ADMIN_TOKEN_FILE,
        type=Path,
        default=_env(F.ADMIN_TOKEN_FILE),
        help="accepted admin tokens, one a line, re-read when the file changes (a mounted Secret: "
        "shardrec.api.credentials); instead of --admin-token",
    )
    parser.add_argument(
        F.TLS_CERT, type=Path, default=_env(F.TLS_CERT), help="serve HTTPS with this PEM certificate"
    )
    parser.add_argument(F.TLS_KEY, type=Path, default=_env(F.TLS_KEY), help="the key of --tls-cert (PEM)")
    parser.add_argument(F.LOG_LEVEL, default=_env(F.LOG_LEVEL, "warning"))
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.layout_dir is not None and args.shard is None:
        parser.error(f"--shard is required with --layout-dir (or set {env_name(F.PROCESS, F.SHARD)})")
    if args.shard is not None and int(args.shard) < 0:
        parser.error(f"--shard must be >= 0, got {args.shard}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.ef_search < 1:
        parser.error(f"--ef-search must be >= 1, got {args.ef_search}")
    if args.search_threads is not None and int(args.search_threads) < 1:
        parser.error(f"--search-threads must be >= 1, got {args.search_threads}")
    if args.drain_seconds < 0:
        parser.error(f"--drain-seconds must be >= 0, got {args.drain_seconds}")
    if args.max_wait_ms < 0:
        parser.error(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.admin_token and args.admin_token_file is not None:
        parser.error("--admin-token and --admin-token-file are exclusive")


def _admin_tokens(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TokenSource | None:
    if args.admin_token_file is not None:
        try:
            return TokenFile(args.admin_token_file)
        except TokenFileError as exc:
            parser.error(f"--admin-token-file: {exc}")
    return StaticTokens(args.admin_token) if args.admin_token else None


def _tls_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """uvicorn's TLS settings ({} for plain HTTP); None after reporting files that do not load
    (checked here so the error is one line, not a traceback from inside uvicorn)."""
    if args.tls_cert is None:
        return {}
    try:
        server_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        print(f"shardrec-shard: error: cannot load --tls-cert/--tls-key: {exc}", file=sys.stderr)
        return None
    return {"ssl_certfile": str(args.tls_cert), "ssl_keyfile": str(args.tls_key)}


def _fastest(module: str, fast: str, fallback: str) -> str:
    return fast if importlib.util.find_spec(module) is not None else fallback


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    admin_tokens = _admin_tokens(parser, args)
    settings = EngineSettings(
        ef_search=args.ef_search,
        max_wait_s=args.max_wait_ms / 1000.0,
        max_batch_queries=args.max_batch_queries,
        write_log_dir=args.write_log_dir,
    )
    if args.search_threads is not None:
        settings.search_threads = int(args.search_threads)
    metrics = ShardMetrics()
    engine = SearchEngine(metrics, settings)
    shard = int(args.shard) if args.shard is not None else None
    failure: list[str] = []
    server: uvicorn.Server | None = None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if args.layout_dir is not None and shard is not None:
            task = asyncio.create_task(_initial_load(engine, args.layout_dir, shard))
            task.add_done_callback(_on_initial_load)
            tasks.append(task)
        if server is not None and server.config.ssl is not None:
            reloader = CertificateReloader(server.config.ssl, args.tls_cert, args.tls_key)
            tasks.append(asyncio.create_task(_reload_certificates(reloader)))
        yield
        for task in tasks:
            task.cancel()
        engine.close()

    def _on_initial_load(task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        failure.append(str(task.exception()))
        if server is not None:
            server.should_exit = True

    drain = Drain(seconds=args.drain_seconds)
    layout_root = args.layout_root or (args.layout_dir.parent if args.layout_dir is not None else None)
    api = build_api(
        engine, metrics, shard, admin_tokens, lifespan=lifespan, drain=drain, layout_root=layout_root
    )
    app = ShardServer(engine, metrics, api)
    sock = _bound_socket(args.host, args.port)
    if isinstance(sock, int):
        return sock
    port = sock.getsockname()[1]
    tls = _tls_settings(args)
    if tls is None:
        return 1
    scheme = "https" if tls else "http"
    # Listening before the line is printed: a caller connects as soon as it reads it (uvicorn would
    # listen only once it has started, and a connection before that is refused).
    sock.listen(LISTEN_BACKLOG)
    print(f"shardrec-shard listening on {scheme}://{args.host}:{port}", flush=True)
    config = uvicorn.Config(
        app,
        loop=_fastest("uvloop", "uvloop", "asyncio"),
        # Header size/count, header and body read timeouts, idle timeout (serving/http_limits.py).
        http=guarded_protocol(HTTP_LIMITS),
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        backlog=LISTEN_BACKLOG,
        timeout_keep_alive=int(HTTP_LIMITS.keep_alive_s),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        proxy_headers=False,  # shards are called by routers directly, never through a proxy
        server_header=False,
        date_header=False,
        **tls,
    )
    server = uvicorn.Server(config)
    settle_heap()  # the import-time heap is built: freeze it (serving/heap.py)
    server.run(sockets=[sock])
    if failure:
        print(f"shardrec-shard: error: {failure[0]}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    return 0


def _bound_socket(host: str, port: int) -> socket.socket | int:
    """The server's socket, bound (not listening yet), or the exit code when the port is taken."""
    try:
        sock = bound_tcp_socket(host, port)
    except OSError as exc:
        print(f"shardrec-shard: error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_PORT_IN_USE if exc.errno == errno.EADDRINUSE else 1
    return sock


async def _reload_certificates(reloader: CertificateReloader) -> None:
    while True:
        await asyncio.sleep(CERT_RELOAD_CHECK_S)
        if reloader.check():
            print(f"shardrec-shard: serving the renewed certificate {reloader.cert_file}", file=sys.stderr)


async def _initial_load(engine: SearchEngine, layout_dir: Path, shard: int) -> None:
    try:
        await engine.load(layout_dir, shard)
    except LoadRejectedError as exc:
        raise RuntimeError(f"cannot serve shard {shard} of {layout_dir}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
