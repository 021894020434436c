"""`shardrec-router`: the router process; its HTTP API is docs/router.md.

    shardrec-router (--topology-file FILE | --topology-configmap NAMESPACE/NAME)
                    [--router-config FILE] [--host 127.0.0.1] --port P [--api-keys-file F]

Every flag also reads an environment variable (SHARDREC_ROUTER_<FLAG>, e.g.
SHARDREC_ROUTER_PORT; the rule and the flag names are in `shardrec.api.commands`, whose
`router_arguments` builds the command line the operator and the local runtime run). Bad input
exits 2 with one line naming the flag or file.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shardrec import __version__
from shardrec.api.commands import RouterFlags, env_name
from shardrec.serving.cpus import usable_cpus
from shardrec.serving.credentials import TokenFile, TokenFileError
from shardrec.serving.heap import settle_heap
from shardrec.serving.http_limits import HttpLimits, guarded_protocol
from shardrec.serving.router.auth import OPEN, ApiKeysError, load_api_keys
from shardrec.serving.router.config import (
    RouterConfig,
    RouterConfigError,
    RouterSettings,
    Tuning,
    load_router_config,
)
from shardrec.serving.router.serving_report import PodAnnotationReporter, ServingReporter
from shardrec.serving.router.topology_source import (
    ConfigMapTopologySource,
    FileTopologySource,
    TopologySource,
)
from shardrec.serving.router.workers import (
    WORKER_SOCKETS,
    ServingBoard,
    Supervisor,
    WorkerEnv,
    WorkerReporter,
    die_with_parent,
    worker_count,
    worker_socket,
)
from shardrec.serving.sockets import bound_tcp_socket
from shardrec.serving.tls import client_context

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

PROG = "shardrec-router"

LISTEN_BACKLOG = 4096
# Clients' bodies are at most Limits.max_body_bytes (4 MiB): 10 s is 400 KB/s.
HTTP_LIMITS = HttpLimits(header_timeout_s=10.0, body_timeout_s=10.0, keep_alive_s=75.0)


class UsageError(Exception):
    """Bad flags or files; printed as one line, exit code 2."""


def _env(flag: str) -> str | None:
    return os.environ.get(env_name(RouterFlags.PROCESS, flag))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The shardrec router: the endpoint clients call.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        RouterFlags.TOPOLOGY_FILE,
        default=_env(RouterFlags.TOPOLOGY_FILE),
        help="Topology JSON file to watch.",
    )
    parser.add_argument(
        RouterFlags.TOPOLOGY_CONFIGMAP,
        default=_env(RouterFlags.TOPOLOGY_CONFIGMAP),
        metavar="NAMESPACE/NAME",
        help="ConfigMap (key topology.json) to watch through the Kubernetes API.",
    )
    parser.add_argument(
        RouterFlags.ROUTER_CONFIG,
        default=_env(RouterFlags.ROUTER_CONFIG),
        help='JSON {"router": RouterSpec, "auth": AuthSpec} (camelCase, as in the cluster spec).',
    )
    parser.add_argument(
        RouterFlags.POD_NAME,
        default=_env(RouterFlags.POD_NAME),
        help="This router's pod (Kubernetes): it reports what it serves in the pod's annotations.",
    )
    parser.add_argument(
        RouterFlags.POD_NAMESPACE, default=_env(RouterFlags.POD_NAMESPACE), help="Namespace of --pod-name."
    )
    parser.add_argument(
        RouterFlags.HOST, default=_env(RouterFlags.HOST) or "127.0.0.1", help="Address to bind."
    )
    parser.add_argument(RouterFlags.PORT, default=_env(RouterFlags.PORT), help="Port to bind.")
    parser.add_argument(
        RouterFlags.API_KEYS_FILE,
        default=_env(RouterFlags.API_KEYS_FILE),
        help="API keys, one a line: name:key or key.",
    )
    parser.add_argument(
        RouterFlags.SHARD_TOKEN,
        default=_env(RouterFlags.SHARD_TOKEN),
        help="The shards' admin token, sent as 'Authorization: Bearer' (set it through the "
        "environment, SHARDREC_ROUTER_SHARD_TOKEN, not the command line).",
    )
    parser.add_argument(
        RouterFlags.SHARD_TOKEN_FILE,
        default=_env(RouterFlags.SHARD_TOKEN_FILE),
        help="File whose first line is the token to send to shards, re-read when it changes (a "
        "mounted Secret, rotated by the operator); instead of --shard-token.",
    )
    parser.add_argument(
        RouterFlags.SHARD_CA,
        default=_env(RouterFlags.SHARD_CA),
        help="PEM CA that shard certificates must chain to; needed for https:// shard URLs.",
    )
    parser.add_argument(
        RouterFlags.SHARD_TLS_NAME,
        default=_env(RouterFlags.SHARD_TLS_NAME),
        help="Name shard certificates must hold (default: each shard URL's host). The operator "
        "sets one name per cluster, since the CA is the cluster's own.",
    )
    parser.add_argument(
        RouterFlags.BATCHES_IN_FLIGHT_PER_REPLICA,
        type=int,
        default=int(
            _env(RouterFlags.BATCHES_IN_FLIGHT_PER_REPLICA) or Tuning.max_batches_in_flight_per_replica
        ),
        help="Coalescing: batched requests per shard replica on the wire at once (default %(default)s).",
    )
    parser.add_argument(
        RouterFlags.LOOP,
        default=_env(RouterFlags.LOOP) or "auto",
        choices=["auto", "uvloop", "asyncio"],
        help="Event loop (auto: uvloop when installed).",
    )
    parser.add_argument(
        RouterFlags.WORKERS,
        type=int,
        default=int(_env(RouterFlags.WORKERS) or 0) or None,
        help="Worker processes serving the port (default: the CPUs this process may use, its "
        "cgroup CPU quota included); docs/router.md#workers.",
    )
    parser.add_argument(
        RouterFlags.WORKER_SOCKETS,
        default=_env(RouterFlags.WORKER_SOCKETS) or "reuseport",
        choices=list(WORKER_SOCKETS),
        help="How workers share the port: a SO_REUSEPORT socket each (default), or one shared socket.",
    )
    parser.add_argument(
        RouterFlags.ZONE,
        default=_env(RouterFlags.ZONE) or None,
        help="This router's zone (on Kubernetes from the pod's topology.kubernetes.io/zone label): "
        "replicas the topology places in it are preferred.",
    )
    parser.add_argument(
        RouterFlags.LOG_LEVEL,
        default=_env(RouterFlags.LOG_LEVEL) or "warning",
        choices=["debug", "info", "warning", "error"],
    )
    return parser


def reporter_from_args(args: argparse.Namespace) -> PodAnnotationReporter | None:
    if not args.pod_name and not args.pod_namespace:
        return None
    if not args.pod_name or not args.pod_namespace:
        raise UsageError("--pod-name and --pod-namespace go together (the operator sets both)")
    return PodAnnotationReporter(args.pod_namespace, args.pod_name)


def settings_from_args(args: argparse.Namespace) -> tuple[RouterSettings, TopologySource, int]:
    if bool(args.topology_file) == bool(args.topology_configmap):
        raise UsageError("give exactly one of --topology-file and --topology-configmap")
    if args.port is None:
        raise UsageError("--port is required")
    try:
        port = int(args.port)
    except ValueError:
        raise UsageError(f"--port: not a number: {args.port!r}") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--port: must be within 0..65535, got {port}")
    source: TopologySource
    if args.topology_file:
        source = FileTopologySource(Path(args.topology_file))
    else:
        namespace, sep, name = str(args.topology_configmap).partition("/")
        if not sep or not namespace or not name:
            raise UsageError(
                f"--topology-configmap: expected NAMESPACE/NAME, got {args.topology_configmap!r}"
            )
        source = ConfigMapTopologySource(namespace, name)
    try:
        config = load_router_config(Path(args.router_config)) if args.router_config else RouterConfig()
        keys = load_api_keys(Path(args.api_keys_file)) if args.api_keys_file else OPEN
    except (RouterConfigError, ApiKeysError) as exc:
        raise UsageError(str(exc)) from None
    if config.auth.api_keys_secret_ref is not None and not keys.required:
        raise UsageError(
            "--api-keys-file: required because auth.apiKeysSecretRef is set (mount the Secret and pass it)"
        )
    if args.batches_in_flight_per_replica < 1:
        raise UsageError(
            f"--batches-in-flight-per-replica: must be at least 1, got {args.batches_in_flight_per_replica}"
        )
    tuning = Tuning(max_batches_in_flight_per_replica=args.batches_in_flight_per_replica)
    settings = RouterSettings(
        config=config,
        api_keys=keys,
        tuning=tuning,
        shard_token=_shard_token(args),
        shard_tls=_shard_tls(args),
        shard_tls_name=args.shard_tls_name or None,
        zone=args.zone or None,
    )
    return settings, source, port


def _shard_token(args: argparse.Namespace) -> str | TokenFile | None:
    if args.shard_token and args.shard_token_file:
        raise UsageError("--shard-token and --shard-token-file are exclusive")
    if args.shard_token_file:
        try:
            return TokenFile(Path(args.shard_token_file))
        except TokenFileError as exc:
            raise UsageError(f"--shard-token-file: {exc}") from None
    return str(args.shard_token) if args.shard_token else None


def _shard_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.shard_ca:
        return None
    try:
        return client_context(Path(args.shard_ca))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--shard-ca: cannot load {args.shard_ca}: {exc}") from None


def server_config(app: ASGIApp, *, loop: str, log_level: str) -> uvicorn.Config:
    """How a router worker's uvicorn serves `app` (also what benchmarks/http_floor.py measures
    an empty app under): header size/count, header and body read timeouts, idle timeout
    (serving/http_limits.py), no access log and no generated headers."""
    import uvicorn

    return uvicorn.Config(
        app,
        loop=loop,
        http=guarded_protocol(HTTP_LIMITS),
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        log_level=log_level,
        backlog=LISTEN_BACKLOG,
        timeout_keep_alive=int(HTTP_LIMITS.keep_alive_s),
        timeout_graceful_shutdown=10,
    )


def _loop(choice: str) -> str:
    if choice != "auto":
        return choice
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    return f"{PROG}: error: --host/--port: cannot listen on {host}:{port}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, source, port = settings_from_args(args)
        reporter = reporter_from_args(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"{PROG}: error: --workers: must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = WorkerEnv.from_environ()
    workers = worker_count(args.workers, usable_cpus())
    if worker is None and workers > 1:
        try:
            supervisor = Supervisor(
                sys.argv[1:] if argv is None else list(argv),
                host=args.host,
                port=port,
                count=workers,
                sockets=args.worker_sockets,
                backlog=LISTEN_BACKLOG,
                prog=PROG,
            )
        except OSError as exc:
            print(
                f"{PROG}: error: --host/--port: cannot listen on {args.host}:{port}: {exc}", file=sys.stderr
            )
            return 1
        return supervisor.run()
    served: ServingReporter | None = reporter
    if worker is not None:
        die_with_parent(worker.parent)
        served = WorkerReporter(ServingBoard(worker.run_dir, worker.index, worker.count), inner=reporter)
    import uvicorn

    from shardrec.serving.router.app import create_app

    try:
        sock = (
            bound_tcp_socket(args.host, port, no_delay=True)
            if worker is None
            else worker_socket(worker, args.host, port)
        )
    except OSError as exc:
        print(f"{PROG}: error: --host/--port: cannot listen on {args.host}:{port}: {exc}", file=sys.stderr)
        return 1
    # Listen before saying so: callers connect as soon as they read the line.
    sock.listen(LISTEN_BACKLOG)
    # `--port 0` picks a free port; this first stdout line says which (tests and the local runtime).
    print(f"{PROG} listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    app = create_app(settings, source, reporter=served)
    config = server_config(app, loop=_loop(args.loop), log_level=args.log_level)
    settle_heap()  # the import-time heap is built: freeze it (serving/heap.py)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
