"""`shardrec-shard`: serve shard I of a layout over HTTP (wire format: `wire.py`; client: `client.py`).

Every flag falls back to an environment variable, SHARDREC_SHARD_<FLAG> (e.g.
SHARDREC_SHARD_LAYOUT_DIR, SHARDREC_SHARD_EF_SEARCH, SHARDREC_SHARD_ADMIN_TOKEN; the flag names
and the rule are in `shardrec.api.commands`, whose `shard_arguments` builds the command line
the operator, the local runtime and the benchmarks run). `--port 0` picks a free port; the first
stdout line is always `shardrec-shard listening on http://HOST:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.util
import os
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from shardrec.api.commands import DEFAULT_EF_SEARCH, env_name
from shardrec.api.commands import ShardFlags as F
from shardrec.serving.http_limits import HttpLimits, guarded_protocol
from shardrec.serving.shard.app import Drain, ShardServer, build_api
from shardrec.serving.shard.engine import EngineSettings, LoadRejectedError, SearchEngine
from shardrec.serving.shard.exit_codes import EXIT_LOAD_FAILED, EXIT_PORT_IN_USE
from shardrec.serving.shard.metrics import ShardMetrics

LISTEN_BACKLOG = 4096
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


def _fastest(module: str, fast: str, fallback: str) -> str:
    return fast if importlib.util.find_spec(module) is not None else fallback


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    settings = EngineSettings(
        ef_search=args.ef_search,
        max_wait_s=args.max_wait_ms / 1000.0,
        max_batch_queries=args.max_batch_queries,
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
        task = None
        if args.layout_dir is not None and shard is not None:
            task = asyncio.create_task(_initial_load(engine, args.layout_dir, shard))
            task.add_done_callback(_on_initial_load)
        yield
        if task is not None:
            task.cancel()
        engine.close()

    def _on_initial_load(task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        failure.append(str(task.exception()))
        if server is not None:
            server.should_exit = True

    drain = Drain(seconds=args.drain_seconds)
    api = build_api(engine, metrics, shard, args.admin_token, lifespan=lifespan, drain=drain)
    app = ShardServer(engine, metrics, api)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"shardrec-shard: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_PORT_IN_USE if exc.errno == errno.EADDRINUSE else 1
    port = sock.getsockname()[1]
    # Listen before saying so: callers connect as soon as they read the line (uvicorn would only
    # listen once it has started, and a connection before that is refused).
    sock.listen(LISTEN_BACKLOG)
    print(f"shardrec-shard listening on http://{args.host}:{port}", flush=True)
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
        proxy_headers=False,  # shards are called by routers directly, never through a proxy
        server_header=False,
        date_header=False,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if failure:
        print(f"shardrec-shard: error: {failure[0]}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    return 0


async def _initial_load(engine: SearchEngine, layout_dir: Path, shard: int) -> None:
    try:
        await engine.load(layout_dir, shard)
    except LoadRejectedError as exc:
        raise RuntimeError(f"cannot serve shard {shard} of {layout_dir}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
