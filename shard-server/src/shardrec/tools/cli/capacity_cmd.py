"""`recctl capacity`: a capacity plan for a target load, from the measured coefficients.

    recctl capacity --peak-qps 36000 --items 10000000 --dimension 64 --users 100000000 \
        --k 10 --recall 0.95 --availability 99.95 --zones 3 [--coefficients FILE] [--json | --markdown]
    recctl capacity ... --pipeline [--events-per-user-day 10 ...] [--json | --markdown]

With `--pipeline` it prints the pipeline around that plan instead (events, training, freshness,
caching, ranking, A/B, regions, cost per 1k requests; shardrec/tools/capacity/pipeline.py).

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
from shardrec.tools.capacity.pipeline import (
    PIPELINE_FIELDS,
    PipelineError,
    PipelineTarget,
    make_pipeline,
    pipeline_flag,
)
from shardrec.tools.capacity.planner import TARGET_FIELDS, PlanError, Target, flag, make_plan
from shardrec.tools.capacity.report import (
    markdown,
    pipeline_rows,
    plan_rows,
    provenance_lines,
    render,
    scale_lines,
)
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
_PIPELINE_HELP: dict[str, str] = {
    "daily_active_users": "daily active users",
    "requests_per_user_day": "recommendation requests per active user a day",
    "events_per_user_day": "ASSUMED interaction events per active user a day",
    "event_bytes": "ASSUMED bytes of one event in the log (uncompressed)",
    "event_peak_factor": "ASSUMED peak / mean of events and item writes",
    "partition_mib_per_second": "ASSUMED write rate one log partition is planned for, MiB/s",
    "partition_events_per_second": "ASSUMED events/s one consumer of a log partition processes",
    "log_replication": "copies of the log (its replication factor)",
    "log_retention_days": "days the log keeps events",
    "training_interactions_per_user": "ASSUMED distinct items per user in the training window (ALS nonzeros)",
    "training_iterations": "ALS iterations per training (recctl train's default)",
    "train_every_hours": "hours between trainings (item freshness)",
    "training_deadline_hours": "hours a training may take",
    "item_writes_per_day": "ASSUMED item upserts and deletes a day (catalogue churn)",
    "foldin_share": "share of requests folding a user in from recent clicks, 0..1",
    "ranking_candidates": "candidates a ranking stage scores (retrieval k)",
    "ranking_us_per_candidate": "ASSUMED ranking CPU per candidate, microseconds",
    "ab_share": "share of users in the B arm of an A/B test, 0..1",
    "regions": "regions, each running the whole plan",
    "core_hour_usd": "ASSUMED price of a core-hour, USD",
    "gib_hour_usd": "ASSUMED price of a GiB-hour of memory, USD",
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
    pipeline_defaults = PipelineTarget()
    group = parser.add_argument_group("pipeline (with --pipeline)")
    for field in dataclasses.fields(PipelineTarget):
        default = getattr(pipeline_defaults, field.name)
        kind = int if field.type in (int, "int") else float
        group.add_argument(
            pipeline_flag(field.name),
            dest=field.name,
            type=_number(field.name, kind),
            default=default,
            help=f"{_PIPELINE_HELP[field.name]} (default {default:g})",
        )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="print the pipeline around the plan: events, training, freshness, caching, ranking, A/B, "
        "regions, cost per 1k requests",
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
    if args.pipeline:
        return _print_pipeline(args, target, coefficients, plan, str(path))
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


def _print_pipeline(args: argparse.Namespace, target: Target, coefficients: Any, plan: Any, path: str) -> int:
    assumptions = PipelineTarget(**{name: getattr(args, name) for name in PIPELINE_FIELDS})
    try:
        ranking_plan = make_plan(dataclasses.replace(target, k=assumptions.ranking_candidates), coefficients)
        pipeline = make_pipeline(assumptions, plan, ranking_plan)
    except (PlanError, PipelineError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        document = dataclasses.asdict(pipeline)
        document.pop("plan")
        document["coefficients"] = path
        print(json.dumps(document, indent=2))
        return 0
    if args.markdown:
        print(markdown(pipeline_rows(pipeline)), end="")
        return 0
    header = (
        f"pipeline around the plan: {assumptions.daily_active_users:,} daily users, {target.peak_qps:g} "
        f"req/s peak, {target.items:,} items x {target.dimension} dims ({path})"
    )
    print(render(pipeline_rows(pipeline), header), end="")
    return 0
