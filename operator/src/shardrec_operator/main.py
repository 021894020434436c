"""`shardrec-operator`: run the kopf operator with a liveness endpoint and Prometheus metrics.

Run exactly one active replica. By default the operator runs standalone (no peering): deploy it
as a Deployment with `replicas: 1` and `strategy: Recreate`, so an upgrade never runs two at
once. With `--peering NAME` (needs kopf's KopfPeering CRDs) several replicas may run and kopf
pauses all but the highest-priority one.

Bind addresses default to 127.0.0.1; in a pod pass `--liveness http://0.0.0.0:8080/healthz` and
`--metrics-address 0.0.0.0` so the kubelet and Prometheus can reach them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

from shardrec_operator.config import ConfigError
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
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.peering is None,
        peering_name=args.peering,
        memo=kopf.Memo(runtime=runtime, namespaced=bool(args.namespace)),
    )
    return 0
