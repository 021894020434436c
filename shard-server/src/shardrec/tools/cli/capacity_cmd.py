"""`recctl capacity`: a capacity plan for a target load, from the measured coefficients.

    recctl capacity --peak-qps 36000 --items 10000000 --dimension 64 --users 100000000 \
        --k 10 --recall 0.95 --availability 99.95 --zones 3 [--coefficients FILE] [--json | --markdown]

The coefficients default to `benchmarks/coefficients.json` (written by `make bench`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shardrec.tools.capacity.coefficients import (
    COEFFICIENTS_RELATIVE,
    CoefficientsError,
    default_coefficients_path,
    load_coefficients,
)
from shardrec.tools.capacity.planner import TARGET_FIELDS, PlanError, Target, flag, make_plan
from shardrec.tools.capacity.report import markdown, plan_rows, provenance_lines, render, scale_lines
from shardrec.tools.cli.main import CliError

_HELP: dict[str, str] = {
    "peak_qps": "peak client requests per second",
    "items": "items in the index",
    "dimension": "embedding dimension",
    "users": "users with an embedding",
    "k": "results per request",
    "recall": "recall@k target, 0..1 (measured 0.90-0.98)",
    "exclude": "seen items excluded per request (shards fetch k + the ones they hold)",
    "availability": "availability target, percent",
    "zones": "availability zones the pods spread over",
    "m": "HNSW M (graph degree)",
    "spike_factor": "traffic spike to report headroom for",
    "shard_pod_memory_gib": "memory budget of a shard pod, GiB",
    "shard_pod_cores": "cores of a shard pod",
    "router_pod_memory_gib": "memory budget of a router pod, GiB",
    "router_pod_cores": "cores of a router pod",
    "cpu_utilisation": "CPU share to plan for at peak, 0..1",
    "memory_fill": "share of a pod's memory the data may take, 0..1",
    "pod_availability": "ASSUMED availability of one pod, percent (not measured)",
    "build_cores": "cores of the index-build Job",
    "keep_previous_layouts": "old layouts kept for rollback (rollout.keepPreviousLayouts)",
    "rollback_window_seconds": "how long a kept layout runs (rollout.rollbackWindowSeconds)",
    "max_shards": "refuse plans with more shards than this (p99 of the fan-out: docs/design.md)",
    "node_provision_seconds": "ASSUMED seconds until a new node takes pods (spike pods that must run before)",
    "spike_ramp_seconds": "ASSUMED seconds a spike climbs from peak to its height, linearly (0: a step)",
    "user_store_copies": "copies of the user store when users leave the router (0: one per zone)",
}
_REQUIRED = ("peak_qps", "items", "dimension", "users")


def _number(name: str, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'an integer' if kind is int else 'a number'} is required, got {text!r}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"a finite number is required, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "capacity",
        help="plan shards, replicas, cores, memory and rollout costs for a target load",
        description=(
            "Size a cluster for a target from the coefficients measured by `make bench`: shards by "
            "memory, replicas by CPU and zone loss, routers, totals, spike headroom, rollout and "
            "blue/green cost, storage and bandwidth."
        ),
    )
    defaults = Target(peak_qps=1, items=1, dimension=1, users=0)
    for field in dataclasses.fields(Target):
        name = field.name
        default = getattr(defaults, name)
        kind: Callable[[str], Any] = int if field.type in (int, "int") else float
        required = name in _REQUIRED
        parser.add_argument(
            flag(name),
            dest=name,
            type=_number(name, kind),
            required=required,
            default=None if required else default,
            help=_HELP[name] + ("" if required else f" (default {default:g})"),
        )
    parser.add_argument(
        "--coefficients",
        type=Path,
        default=None,
        help=f"coefficients file (default: ./{COEFFICIENTS_RELATIVE}, else the repository's copy)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan as JSON")
    output.add_argument("--markdown", action="store_true", help="print the plan's rows as a Markdown table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.coefficients or default_coefficients_path()
    target = Target(**{name: getattr(args, name) for name in TARGET_FIELDS})
    try:
        coefficients = load_coefficients(path)
        plan = make_plan(target, coefficients)
    except (PlanError, CoefficientsError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        document = dataclasses.asdict(plan)
        document["coefficients"] = str(path)
        print(json.dumps(document, indent=2))
        return 0
    if args.markdown:
        print(markdown(plan_rows(plan)), end="")
        return 0
    header = "\n".join(
        [
            f"capacity plan: {target.peak_qps:g} req/s peak, {target.items:,} items x {target.dimension} "
            f"dims, {target.users:,} users, k={target.k}, recall>={target.recall:g}, "
            f"{target.availability:g}% over {target.zones} zones",
            *provenance_lines(coefficients, str(path)),
            *scale_lines(),
        ]
    )
    print(render(plan_rows(plan), header), end="")
    return 0
