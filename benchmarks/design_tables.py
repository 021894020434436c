"""The capacity tables of docs/design.md, written by `recctl capacity` itself.

    python benchmarks/design_tables.py            # rewrite the marked tables in docs/design.md
    python benchmarks/design_tables.py --check    # exit 1 (and say which) when the doc drifted

Each table sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` and holds the exact command
that produced it. The planner is deterministic on the committed `benchmarks/coefficients.json`, so
the check compares text, not shapes: after `make bench` rewrites the coefficients, this command
rewrites the design's numbers (tests/ship/test_design_tables.py fails until it is run).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardrec.tools.capacity import scale
from shardrec.tools.cli.main import main as recctl

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
COEFFICIENTS = Path("benchmarks") / "coefficients.json"

# The seed's sizing: 36k QPS peak, 10M items x 64 dims, 100M users, 99.95% over 3 zones.
SIZING = (
    "--peak-qps 36000 --items 10000000 --dimension 64 --users 100000000 "
    "--k 10 --recall 0.95 --availability 99.95 --zones 3"
)


@dataclass(frozen=True)
class Variant:
    name: str
    extra: str  # flags added to SIZING


VARIANTS = (
    Variant("as planned (16 GiB / 2-core shard pods)", ""),
    Variant("small shard pods (4 GiB)", "--shard-pod-memory-gib 4"),
    Variant("256 dimensions", "--dimension 256"),
    Variant("100 seen items excluded per request", "--exclude 100"),
    Variant("recall@10 0.90", "--recall 0.90"),
)


def run_recctl(arguments: str) -> str:
    """`recctl capacity <arguments>` on the committed coefficients, its stdout as text."""
    argv = ["capacity", *shlex.split(arguments), "--coefficients", str(ROOT / COEFFICIENTS)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = recctl(argv)
    if code != 0:
        raise SystemExit(f"recctl {' '.join(argv)} exited {code}")
    return out.getvalue()


@functools.cache
def plan_of(arguments: str) -> dict[str, Any]:
    """`recctl capacity <arguments> --json`, parsed; once per arguments (several blocks read the
    seed's plan and its variants)."""
    plan: dict[str, Any] = json.loads(run_recctl(f"{arguments} --json"))
    return plan


def _variant_arguments(variant: Variant) -> str:
    if not variant.extra:
        return SIZING
    # A later flag wins in argparse, so a variant may override a flag of SIZING.
    return f"{SIZING} {variant.extra}"


def _variant_plan(extra: str) -> dict[str, Any]:
    """The plan of the variants-table row with these flags (KeyError if no row has them: the prose
    must read the row the table shows)."""
    by_extra = {variant.extra: variant for variant in VARIANTS}
    return plan_of(_variant_arguments(by_extra[extra]))


def plan_table() -> str:
    command = f"recctl capacity {SIZING} --markdown"
    return f"`{command}`:\n\n{run_recctl(f'{SIZING} --markdown')}"


def _extrapolated(warnings: list[str]) -> str:
    """The plan's warnings without their prefix and consequence: what lies outside the measured points."""
    return "; ".join(w.removeprefix("WARNING: ").split(": ")[0] for w in warnings) or "no"


def variants_table() -> str:
    lines = [
        "| variant | flags | shards | items/shard | efSearch | replicas/shard | shard CPU/request "
        "| router CPU/request | pods | cores | after a zone loss | extrapolated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        plan = plan_of(_variant_arguments(variant))
        flags = f"`{variant.extra}`" if variant.extra else "(the sizing above)"
        lines.append(
            f"| {variant.name} | {flags} | {plan['shards']} | {plan['items_per_shard']:,.0f} "
            f"| {plan['ef_search']} | {plan['replicas']} "
            f"| {plan['shards']} x {plan['shard_cpu_ms']:.3f} ms | {plan['router_cpu_ms']:.3f} ms "
            f"| {plan['pods']} | {plan['cores']:g} "
            f"| {plan['zone_loss_capacity_qps']:,.0f} req/s | {_extrapolated(plan['warnings'])} |"
        )
    command = "recctl capacity <the sizing> [flags] --json"
    return f"`{command}`, one row per variant:\n\n" + "\n".join(lines) + "\n"


OLD_PLANNER = {
    "ef_search": 24,
    "shard_cpu_ms": 0.088,
    "replicas": 5,
    "pods": 13,
    "cores": 26,
    "build_s": 104,
    "spike_pods": 102,
}
"""The seed's plan by the planner before the scale tables (fixed ef 24 scaled by log n, one build
rate): the figures issue #20 quoted, kept here as the baseline the sentence below compares with."""


def readings() -> str:
    """The numbers the design's prose reads off the plan and its variants, written by the tool so
    they cannot drift from the tables above them."""
    plan = plan_of(SIZING)
    small = _variant_plan("--shard-pod-memory-gib 4")
    excluded = _variant_plan("--exclude 100")
    old = OLD_PLANNER
    return (
        f"- Splitting (the small-pods row): {small['shards']} shards of "
        f"{small['items_per_shard'] / 1e6:.1f}M cost {small['shards']} x {small['shard_cpu_ms']:.3f} ms "
        f"of shard CPU per request against {plan['shard_cpu_ms']:.3f} ms for one shard of "
        f"{plan['items_per_shard'] / 1e6:.0f}M, and the router's fan-out costs "
        f"{small['router_cpu_ms']:.3f} against {plan['router_cpu_ms']:.3f} ms.\n"
        f"- Excluding 100 seen items per request: "
        f"{100 * (excluded['shard_cpu_ms'] / plan['shard_cpu_ms'] - 1):+.0f}% shard CPU per request "
        f"({excluded['shard_cpu_ms']:.3f} against {plan['shard_cpu_ms']:.3f} ms).\n"
        f"- Against the planner before the scale tables: efSearch {old['ef_search']} -> {plan['ef_search']}, "
        f"shard CPU per request {old['shard_cpu_ms']} -> {plan['shard_cpu_ms']:.3f} ms, replicas per shard "
        f"{old['replicas']} -> {plan['replicas']} (CPU needs {plan['replicas_cpu']}; "
        f"{plan['replicas_zone']} survive a zone loss), pods {old['pods']} -> {plan['pods']}, cores "
        f"{old['cores']} -> {plan['cores']:g}, "
        f"build {old['build_s']} s -> {plan['build_seconds'] / 60:.1f} min; "
        f"the spike needs +{plan['spike_extra_pods']} pods instead of +{old['spike_pods']}.\n"
    )


def scale_fit() -> str:
    """The planner's fitted search and build cost (`scale.MODEL`), with how far each fit is from
    the points it was fitted to and what it gives at the seed's shard size."""
    model, points = scale.MODEL, scale.MEASURED
    e0, e_n, e_s, e_d, e_r, e_nn, e_dr = model.ef
    c0, c_ef, c_n, c_d = model.cpu
    _, b_n, b_d = model.build
    cpu_errors = [
        abs(model.search_us(ef, p.items, p.dimension) / us - 1)
        for p in points
        for ef, us in ((p.planner_ef, p.cpu_us_planner_ef), (p.ef_single[1], p.cpu_us))
    ]
    build_errors = [
        abs(
            model.build_items_per_core_second(p.items, p.dimension) * p.build_cores / p.build_items_per_second
            - 1
        )
        for p in points
    ]
    per_excluded = [model.per_excluded_us(p.items, p.dimension) for p in points]
    plan = plan_of(SIZING)
    n, d = plan["items_per_shard"], plan["target"]["dimension"]
    return (
        f"- efSearch: `log ef = {e0:.2f} {e_n:+.2f} n {e_s:+.2f} log(shards merged) {e_d:+.2f} d "
        f"{e_r:+.2f} r {e_nn:+.3f} (n - log 1M)^2 {e_dr:+.2f} d r` over {len(points)} points; "
        f"ef for 0.95 at {n / 1e6:.0f}M x {d}: {model.ef_for(0.95, n, 1, d):,}, "
        f"at 100M x {d}: {model.ef_for(0.95, 1e8, 1, d):,}.\n"
        f"- CPU per search: `us = {math.exp(c0):.4f} x ef^{c_ef:.2f} x (items per shard)^{c_n:.2f} "
        f"x dimension^{c_d:.2f}`, within {100 * max(cpu_errors):.0f}% of each of the "
        f"{len(cpu_errors)} measurements; 10x the items costs "
        f"{model.search_us(100, 1e7, d) / model.search_us(100, 1e6, d):.1f}x at the same ef.\n"
        f"- Per excluded item: {min(per_excluded):.1f}-{max(per_excluded):.1f} µs at the measured points.\n"
        f"- Build rate per core: `~ (items per shard)^{b_n:.2f} x dimension^{b_d:.2f}`, within "
        f"{100 * max(build_errors):.0f}% of each of the {len(build_errors)} measured rates; "
        f"{model.build_items_per_core_second(n, d):.0f} items/s per core at {n / 1e6:.0f}M x {d}, so "
        f"a version of the seed's plan builds in {plan['build_seconds'] / 60:.1f} minutes "
        "on 16 build cores.\n"
    )


def pipeline_table() -> str:
    """The pipeline around the seed's plan, every assumption at its default (printed in the table)."""
    command = f"recctl capacity {SIZING} --pipeline --markdown"
    return f"`{command}`:\n\n{run_recctl(f'{SIZING} --pipeline --markdown')}"


TABLES = {
    "capacity-plan": plan_table,
    "capacity-variants": variants_table,
    "capacity-readings": readings,
    "scale-fit": scale_fit,
    "capacity-pipeline": pipeline_table,
}


def _block(name: str, body: str) -> str:
    return f"<!-- {name}:begin (python benchmarks/design_tables.py) -->\n{body}<!-- {name}:end -->"


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- {name}:begin.*?-->.*?<!-- {name}:end -->", re.S)


def rendered(doc: str) -> str:
    """`doc` with every marked table regenerated; a table missing its markers is an error."""
    for name, make in TABLES.items():
        pattern = _pattern(name)
        if not pattern.search(doc):
            raise SystemExit(f"docs/design.md has no <!-- {name}:begin --> ... <!-- {name}:end -->")
        match = pattern.search(doc)
        assert match is not None
        doc = doc[: match.start()] + _block(name, make()) + doc[match.end() :]
    return doc


def drifted(doc: str) -> list[str]:
    """Names of the marked tables whose text differs from what the tool prints now."""
    fresh = rendered(doc)

    def block(text: str, name: str) -> str:
        match = _pattern(name).search(text)
        return match.group(0) if match else ""

    return [name for name in TABLES if block(doc, name) != block(fresh, name)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/design.md drifted")
    args = parser.parse_args(argv)
    doc = DESIGN.read_text(encoding="utf-8")
    if args.check:
        stale = drifted(doc)
        if stale:
            print(f"docs/design.md drifted from recctl capacity: {', '.join(stale)}", file=sys.stderr)
            print("run: python benchmarks/design_tables.py", file=sys.stderr)
            return 1
        return 0
    DESIGN.write_text(rendered(doc), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
