"""`shardrec-operator`: run the kopf operator with a liveness endpoint and Prometheus metrics.

Exactly one replica reconciles at a time. With `--leader-election` (the chart's default, with 2
replicas) every replica campaigns for a coordination.k8s.io Lease (`leader`); the one holding it
runs kopf, the others wait (answering their liveness probe) and take over within the lease
duration when it dies. Without it the process runs standalone: then run a single replica with
`strategy: Recreate`. `--peering NAME` (kopf's KopfPeering CRDs) remains for setups that want
kopf's priority scheme; it is no election (equal priorities freeze every replica).

Bind addresses default to 127.0.0.1; in a pod pass `--liveness http://0.0.0.0:8080/healthz` and
`--metrics-address 0.0.0.0` so the kubelet and Prometheus can reach them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kopf
from prometheus_client import start_http_server

from shardrec_operator.config import ConfigError
from shardrec_operator.leader import (
    LEASE_DURATION_SECONDS,
    RENEW_DEADLINE_SECONDS,
    RETRY_SECONDS,
    LeaseElector,
)
from shardrec_operator.reconcile.kubernetes_api import KubernetesClusterApi, load_api_client
from shardrec_operator.runtime import Runtime


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shardrec-operator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); all namespaces when absent",
    )
    parser.add_argument(
        "--liveness",
        default="http://127.0.0.1:8080/healthz",
        help="kopf liveness endpoint URL (default %(default)s)",
    )
    parser.add_argument("--metrics-address", default="127.0.0.1", help="metrics bind address")
    parser.add_argument("--metrics-port", type=int, default=9090, help="metrics port; 0 turns them off")
    parser.add_argument("--peering", default=None, help="kopf peering name; standalone when absent")
    parser.add_argument(
        "--leader-election",
        action="store_true",
        help="campaign for a Lease and reconcile only while holding it (run 2+ replicas)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of the Lease (default: $POD_NAMESPACE, else the first --namespace)",
    )
    parser.add_argument("--leader-election-id", default="shardrec-operator", help="Lease name")
    parser.add_argument("--lease-duration-seconds", type=int, default=LEASE_DURATION_SECONDS)
    parser.add_argument("--renew-deadline-seconds", type=float, default=RENEW_DEADLINE_SECONDS)
    parser.add_argument("--retry-period-seconds", type=float, default=RETRY_SECONDS)
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig path (default: in-cluster, then $KUBECONFIG)"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every successful timer tick and the liveness server every probe at INFO.
        for noisy in ("kopf.objects", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        # Importing the handlers registers them with kopf (and reads the environment once).
        from shardrec_operator import handlers

        runtime = Runtime(api=KubernetesClusterApi(load_api_client(args.kubeconfig)), config=handlers.CONFIG)
    except ConfigError as error:
        logging.getLogger("shardrec_operator").error("%s", error)
        return 2
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address, registry=runtime.metrics.registry)
    elector = _elect(args) if args.leader_election else None
    try:
        _run_kopf(args, runtime)
    finally:
        if elector is not None:
            elector.release()
    return 0


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "waiting for leadership"}')

    def log_message(self, format: str, *args: object) -> None:
        return


def _elect(args: argparse.Namespace) -> LeaseElector:
    """Wait for the Lease (answering liveness probes meanwhile), then keep renewing it; losing it
    ends the process so it never reconciles on a lease another replica may hold."""
    namespace = args.leader_election_namespace or os.environ.get("POD_NAMESPACE")
    namespace = namespace or (args.namespace[0] if args.namespace else "default")
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    elector = LeaseElector(
        load_api_client(args.kubeconfig),
        namespace=namespace,
        name=args.leader_election_id,
        identity=identity,
        lease_duration_s=args.lease_duration_seconds,
        renew_deadline_s=args.renew_deadline_seconds,
        retry_s=args.retry_period_seconds,
    )
    url = urllib.parse.urlsplit(args.liveness)
    health = ThreadingHTTPServer((url.hostname or "127.0.0.1", url.port or 80), _Healthy)
    threading.Thread(target=health.serve_forever, name="standby-liveness", daemon=True).start()
    # A standby holds nothing, so SIGTERM ends it at once. It must say so itself: in a pod it is
    # PID 1, and the kernel drops a signal PID 1 has no handler for, so without this the kubelet
    # waits out the grace period and SIGKILLs it (kopf handles SIGTERM, but only once it runs).
    previous = signal.signal(signal.SIGTERM, _stop_waiting)
    try:
        elector.acquire()
    finally:
        signal.signal(signal.SIGTERM, previous)
        health.shutdown()
        health.server_close()  # kopf's liveness server binds the same address next

    def lost() -> None:
        logging.getLogger("shardrec_operator").error("lost leadership: exiting")
        os._exit(70)  # like controller-runtime: a restart makes this replica a candidate again

    elector.keep_renewing(lost)
    return elector


def _stop_waiting(signum: int, frame: object) -> None:
    logging.getLogger("shardrec_operator").info("SIGTERM while waiting for the Lease: exiting")
    raise SystemExit(0)


def _run_kopf(args: argparse.Namespace, runtime: Runtime) -> None:
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.peering is None,
        peering_name=args.peering,
        memo=kopf.Memo(runtime=runtime, namespaced=bool(args.namespace)),
    )
