"""`python -m shardrec.serving.carry --config carry.json`: the Kubernetes carrier (carrier.py).

Reads its `CarrierConfig` (the operator's ConfigMap, mounted), the shard send token (the first
line of `token_file`, re-read when the Secret changes), POD_NAME/POD_NAMESPACE (downward API) for
its report, and SHARDREC_S3_* plus AWS_* for an s3:// carry store (as the routers get them).
SIGTERM or SIGINT end it between steps (exit 0); a config it cannot use exits 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from shardrec.api.carry import CarrierConfig
from shardrec.serving.carry.carrier import Carrier, config_problems, shard_client
from shardrec.serving.carry.forwarding import ShardCalls
from shardrec.serving.carry.kube import CarrierKube, InClusterKube
from shardrec.serving.carry.store import CarryStore
from shardrec.serving.credentials import TokenFile, TokenFileError
from shardrec.serving.storage.stores import settings_from_env
from shardrec.serving.storage.urls import LocationError

EXIT_BAD_CONFIG = 2
log = logging.getLogger("shardrec.carrier")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shardrec.serving.carry",
        description="Carry the item writes of a serving layout into a new layout (Kubernetes).",
    )
    parser.add_argument("--config", type=Path, required=True, help="the CarrierConfig JSON (carry.json)")
    return parser


def main(argv: list[str] | None = None, *, kube: CarrierKube | None = None) -> int:
    """`kube`: the Kubernetes edge (tests pass a fake; default the API server, in-cluster)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = CarrierConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
        token = TokenFile(Path(config.token_file))
        store = CarryStore(config.carry_store, settings_from_env())
    except (OSError, ValidationError, TokenFileError, LocationError) as exc:
        print(f"carrier: cannot start: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    problems = config_problems(config)
    if problems:
        print(f"carrier: cannot start: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if kube is None:
        namespace, pod = os.environ.get("POD_NAMESPACE", ""), os.environ.get("POD_NAME", "")
        if not namespace or not pod:
            print("carrier: POD_NAMESPACE and POD_NAME must be set (downward API)", file=sys.stderr)
            return EXIT_BAD_CONFIG
        kube = InClusterKube(namespace, pod, config.deployment)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current step", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with shard_client(config.ca_file) as client:
        calls = ShardCalls(client, token.first(), tls_name=config.tls_name)
        carrier = Carrier(config, store, calls, kube, token=token.first)
        log.info(
            "carrier of %s: %d old leaders of %s -> %d shards, store %s",
            config.to_layout,
            config.from_shards,
            config.from_layout,
            config.to_shards,
            store.describe(),
        )
        carrier.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
