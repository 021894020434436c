"""`recctl plan`: what applying a RecommenderCluster would do, before it happens.

    recctl plan -f cluster.yaml [--status FILE | --state-dir DIR] [--items N]
                [--coefficients FILE] [--json]

The current state comes from, in this order: `--status FILE` (a whole object as `kubectl get recc
NAME -o yaml` prints it, whose spec is then the spec last applied, or a bare status), `--state-dir`
or the local runtime's state folder of the cluster (`.shardrec/<name>`: its cluster.yaml and
status.json), else nothing deployed. The item count comes from `--items`, else from the header of
`items.npy` when `spec.index.source` is a folder on this machine. The measured rates default to
`benchmarks/coefficients.json` (the capacity planner's file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shardrec.api.errors import describe_errors
from shardrec.api.v1alpha1 import RecommenderCluster, RecommenderClusterSpec, RecommenderClusterStatus
from shardrec.planning.preview import NOTHING_DEPLOYED, Deployed, Rates, deployed_from_status, preview
from shardrec.planning.preview_format import render_text, to_json
from shardrec.tools.capacity.coefficients import CoefficientsError, default_coefficients_path
from shardrec.tools.cli.local_cmd import DEFAULT_STATE_ROOT, read_cluster
from shardrec.tools.cli.main import CliError
from shardrec.tools.local.plan_preview import item_count, measured_rates
from shardrec.tools.local.state import StateDir


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show what applying a RecommenderCluster would do (builds, pods, peak resources, risks)",
        description=(
            "Preview a change before applying it: layouts to build, pods added, removed and replaced, "
            "the extra requests the scheduler must place at the peak (blue/green runs both layouts), "
            "the expected duration from measured build and load rates, and availability risks."
        ),
    )
    parser.add_argument(
        "-f", "--filename", type=Path, required=True, help="the RecommenderCluster YAML to apply"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--status",
        type=Path,
        help="current object or status (YAML/JSON, e.g. `kubectl get recc NAME -o yaml`)",
    )
    where.add_argument("--state-dir", type=Path, help="local runtime state folder (default .shardrec/<name>)")
    where.add_argument("--nothing-deployed", action="store_true", help="plan as if nothing ran yet")
    parser.add_argument(
        "--items", type=_positive_int, help="items in the index (default: read from a local source)"
    )
    parser.add_argument(
        "--coefficients",
        type=Path,
        default=None,
        help="measured coefficients (default benchmarks/coefficients.json)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer is required, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def read_current(path: Path) -> Deployed:
    """`--status FILE`: a whole object (its spec is the spec last applied) or a bare status."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"--status {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CliError(f"--status {path}: not valid YAML or JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CliError(f"--status {path}: expected a mapping (an object or its status)")
    whole = "spec" in data or "kind" in data
    try:
        status = RecommenderClusterStatus.model_validate(data.get("status") or {} if whole else data)
        applied = RecommenderClusterSpec.model_validate(data["spec"]) if whole and "spec" in data else None
    except ValidationError as exc:
        raise CliError(f"--status {path}: invalid: {describe_errors(exc.errors())}") from exc
    return deployed_from_status(status, applied)


def read_local_state(state: StateDir, flag: str) -> Deployed:
    """The local runtime's state folder: cluster.yaml (spec last applied) and status.json."""
    if not state.spec_file.exists():
        if flag:
            raise CliError(f"{flag} {state.root}: no cluster.yaml (not a local runtime state folder)")
        return NOTHING_DEPLOYED
    try:
        applied = RecommenderCluster.model_validate(
            yaml.safe_load(state.spec_file.read_text(encoding="utf-8"))
        ).spec
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise CliError(f"{state.spec_file}: unreadable spec: {exc}") from exc
    if not state.status_file.exists():
        return NOTHING_DEPLOYED
    try:
        status = RecommenderClusterStatus.model_validate_json(state.status_file.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise CliError(f"{state.status_file}: unreadable status: {exc}") from exc
    return deployed_from_status(status, applied)


def load_rates(path: Path | None, spec: RecommenderClusterSpec) -> Rates | None:
    """The measured rates; None when the default file is absent (an installed recctl)."""
    if path is None and not default_coefficients_path().exists():
        return None
    try:
        return measured_rates(spec.index.dimension, spec.index.hnsw.m, path)
    except CoefficientsError as exc:
        raise CliError(f"--coefficients {exc}" if path is not None else str(exc)) from None


def run(args: argparse.Namespace) -> int:
    cluster = read_cluster(args.filename)
    if args.nothing_deployed:
        deployed = NOTHING_DEPLOYED
    elif args.status is not None:
        deployed = read_current(args.status)
    elif args.state_dir is not None:
        deployed = read_local_state(StateDir(args.state_dir.resolve()), "--state-dir")
    else:
        deployed = read_local_state(StateDir((DEFAULT_STATE_ROOT / cluster.metadata.name).resolve()), "")
    items = args.items if args.items is not None else item_count(cluster.spec.index.source)
    rates = load_rates(args.coefficients, cluster.spec)
    # A status file (--status) describes a cluster the operator runs, which carries logged writes
    # into a new layout through a carrier (and back into a kept one); a local state folder's
    # supervisor carries them into any layout by itself.
    carries = args.status is None and not args.nothing_deployed
    the_plan = preview(
        cluster.metadata.name,
        cluster.spec,
        deployed,
        rates,
        items,
        carries_writes=carries,
        runs_carriers=args.status is not None,
    )
    if args.json:
        print(json.dumps(to_json(the_plan), indent=2))
    else:
        print(render_text(the_plan), end="")
    return 0
