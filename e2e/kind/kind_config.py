#!/usr/bin/env python3
"""Check e2e/kind/kind-config.yaml and render it for one run with that run's store directory.

    python e2e/kind/kind_config.py --store-host-dir /tmp/x/store --out /tmp/x/kind-config.yaml

The committed file mounts a fixed host path at /shardrec-store on every worker; run.sh gives each
run its own directory instead. The check refuses a config the e2e run cannot use: no single
control plane, fewer than two workers, workers not spread over two zones, or a worker without the
store mount (its pods would see an empty store).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "kind-config.yaml"
STORE_NODE_DIR = "/shardrec-store"
ZONE_LABEL = "topology.kubernetes.io/zone"


class KindConfigError(ValueError):
    """The kind config is not one the e2e run can use; the message names the node and field."""


def _store_mounts(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in node.get("extraMounts") or [] if m.get("containerPath") == STORE_NODE_DIR]


def check(config: dict[str, Any], source: str = "kind config") -> None:
    nodes = config.get("nodes") or []
    roles = [node.get("role") for node in nodes]
    if roles.count("control-plane") != 1:
        raise KindConfigError(f"{source}: nodes: expected exactly one control-plane, got roles {roles}")
    workers = [(i, node) for i, node in enumerate(nodes) if node.get("role") == "worker"]
    if len(workers) < 2:
        raise KindConfigError(f"{source}: nodes: expected at least two workers, got {len(workers)}")
    zones = set()
    for index, worker in workers:
        zone = (worker.get("labels") or {}).get(ZONE_LABEL)
        if not zone:
            raise KindConfigError(f"{source}: nodes[{index}].labels: missing {ZONE_LABEL}")
        zones.add(zone)
        if len(_store_mounts(worker)) != 1:
            raise KindConfigError(
                f"{source}: nodes[{index}].extraMounts: needs one mount with containerPath {STORE_NODE_DIR}"
            )
    if len(zones) < 2:
        raise KindConfigError(f"{source}: workers span {sorted(zones)}; the e2e run needs two zones")


def render(config: dict[str, Any], store_host_dir: Path) -> dict[str, Any]:
    """A copy of `config` whose store mounts all point at `store_host_dir` (absolute)."""
    if not store_host_dir.is_absolute():
        raise KindConfigError(f"--store-host-dir {store_host_dir}: must be an absolute path")
    rendered = copy.deepcopy(config)
    for node in rendered.get("nodes") or []:
        for mount in _store_mounts(node):
            mount["hostPath"] = str(store_host_dir)
    return rendered


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=CONFIG, help="kind config to check and render")
    parser.add_argument("--store-host-dir", type=Path, required=True, help="host directory of the store")
    parser.add_argument("--out", type=Path, required=True, help="where to write the rendered config")
    args = parser.parse_args(argv)
    try:
        config = yaml.safe_load(args.config.read_text())
        if not isinstance(config, dict):
            raise KindConfigError(f"{args.config}: not a mapping")
        check(config, str(args.config))
        args.out.write_text(yaml.safe_dump(render(config, args.store_host_dir), sort_keys=False))
    except (OSError, yaml.YAMLError, KindConfigError) as error:
        print(f"kind_config.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
