"""Plots and tables of the tail-latency simulation (`shardrec.tools.capacity.tailsim`) on the
costs of `benchmarks/coefficients.json`, and its check against `benchmarks/tail_check.json`.

    python benchmarks/tail_plots.py [--coefficients FILE] [--check FILE] [--out docs/img]
        [--requests 110000] [--seeds 10] [--contention-requests 20000] [--contention-seeds 10]
        [--write-doc docs/design.md]
    python benchmarks/tail_plots.py --tables-only --write-doc docs/design.md   # tables from tailsim.json
    python benchmarks/tail_plots.py --contention-only --write-doc docs/design.md  # only the shared-core check

Writes docs/img/tail-vs-shards.png, tail-vs-hedging.png, tail-vs-load.png, tail-vs-replicas.png,
tail-slow-replica.png and docs/img/tailsim.json (every number behind them: mean and 95% interval
over the seeds, the sample counts, the derived defaults, the slow-replica scenario, and the
simulated-vs-measured check, per-process cores and shared cores). With --write-doc it rewrites the
marked tables `tail-summary`, `tail-check` and `tail-contention` of that document
(tests/capacity/test_tail_plots.py fails when they drift). --contention-only redoes only the
shared-core check (a minute, not the sweeps' 20) and keeps the rest of tailsim.json.
Seeded: the same inputs give the same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from common import write_marked_section

from shardrec.tools.capacity.coefficients import Coefficients, load_coefficients
from shardrec.tools.capacity.tailsim import (
    Costs,
    Interval,
    Scenario,
    ServiceTime,
    SharedCores,
    SlowReplica,
    Summary,
    arrival_rate_per_ms,
    simulate_seeds,
    utilisation_at,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARDS = (1, 2, 4, 8, 16, 32, 64, 128)
LOADS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9)
HEDGE_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
SLOW_FACTORS = (2.0, 3.0, 4.0, 6.0)  # at 30% CPU load: the slow replica at 60, 90, 120, 180%
SLOW_BUDGETS = (0.1, 0.5)
P99_GOAL_MS = 10.0  # issue 3: single-query p99 <= 10 ms at half the saturating load
BUDGET = 0.1  # router.hedging.budgetPercent default
SPEC_HEDGE_AFTER_MS = 20.0  # router.hedging.afterMs default
SPEC_TIMEOUT_MS = 1000.0  # router.timeoutMs default
ROUTER_TARGET = 0.5  # the router tier is sized to run at most at this CPU load
RECALL = 0.95
BASE_SHARDS, BASE_REPLICAS, BASE_LOAD = 16, 2, 0.3
# The shared-core check is an event simulation (about 1 s per 20,000 requests): 20,000 requests a
# seed is still 6x each measured run's 3,000.
CONTENTION_REQUESTS = 20_000
CONTENTION_SEEDS = 10


def costs_from(c: Coefficients, shards: int) -> Costs:
    """Shard CPU = hnswlib search at the cheapest efSearch with recall >= RECALL + per-query
    overhead; the rest of the measured unloaded shard latency occupies nothing."""
    point = next((p for p in c.search if p.recall_at_k >= RECALL), c.search[-1])
    wall = ServiceTime(tuple(c.shard_latency_ms.quantiles), tuple(c.shard_latency_ms.ms))
    return Costs.split(wall, point.search_ms + c.shard_overhead_cpu_ms, c.router_cpu_ms_per_request(shards))


def sized_router(costs: Costs, scenario: Scenario) -> Costs:
    """Enough router workers that the router tier runs at most at ROUTER_TARGET CPU load."""
    load = arrival_rate_per_ms(costs, scenario) * costs.router_cpu_ms
    return replace(costs, router_workers=max(1, math.ceil(load / ROUTER_TARGET)))


def interval(i: Interval) -> list[float]:
    return [round(i.low, 3), round(i.high, 3)]


def row(summary: Summary, **extra: Any) -> dict[str, Any]:
    out = {
        **extra,
        "p50_ms": round(summary.p50_ms.mean, 3),
        "p50_ci": interval(summary.p50_ms),
        "p99_ms": round(summary.p99_ms.mean, 3),
        "p99_ci": interval(summary.p99_ms),
        "p999_ms": round(summary.p999_ms.mean, 3),
        "p999_ci": interval(summary.p999_ms),
        "hedge_rate": round(summary.hedge_rate, 4),
        "extra_load": round(summary.extra_load, 4),
        "seeds": summary.seeds,
        "counted_per_seed": summary.counted_per_seed,
        "p999_tail_samples_per_seed": summary.p999_tail_samples,
    }
    if summary.window_p99_ms is not None and summary.window_p50_ms is not None:
        out["window_p50_ms"] = round(summary.window_p50_ms.mean, 3)
        out["window_p99_ms"] = round(summary.window_p99_ms.mean, 3)
        out["window_p99_ci"] = interval(summary.window_p99_ms)
    return out


class Runner:
    """Simulates a scenario over the seeds, on costs for its shard count and a sized router tier."""

    def __init__(self, c: Coefficients, requests: int, seeds: int, seed: int) -> None:
        self.c, self.requests, self.seeds, self.seed = c, requests, seeds, seed

    def base(self) -> Scenario:
        return Scenario(
            shards=BASE_SHARDS,
            replicas=BASE_REPLICAS,
            utilisation=BASE_LOAD,
            requests=self.requests,
            seed=self.seed,
        )

    def costs(self, scenario: Scenario) -> Costs:
        return sized_router(costs_from(self.c, scenario.shards), scenario)

    def __call__(self, scenario: Scenario) -> Summary:
        return simulate_seeds(self.costs(scenario), scenario, self.seeds)


def sweeps(run: Runner) -> dict[str, Any]:
    base = run.base()
    costs = run.costs(base)
    hedge_best = _best_hedge(run, base, costs)
    hedge_ms = hedge_best["hedge_after_ms"]
    out: dict[str, Any] = {
        "shard_cpu_ms": round(costs.shard_cpu.mean_ms, 4),
        "shard_rest_p50_ms": round(costs.shard_rest.quantile_ms(0.5), 4),
        "service_p50_ms": round(costs.unloaded_ms(0.5), 4),
        "service_p99_ms": round(costs.unloaded_ms(0.99), 4),
        "router_cpu_ms_at_16_shards": round(costs.router_cpu_ms, 4),
        "base_rate_per_replica_qps": round(arrival_rate_per_ms(costs, base) * 1000.0 / base.replicas, 1),
        "base_router_workers": costs.router_workers,
    }
    out["hedging"] = hedge_best["sweep"]
    out["recommended_hedge_after_ms"] = hedge_ms
    out["shards"] = [
        row(run(replace(base, shards=s, hedge_after_ms=h)), shards=s, hedged=h is not None)
        for s in SHARDS
        for h in (None, hedge_ms)
    ]
    out["load"] = [
        row(run(replace(base, utilisation=u, hedge_after_ms=h)), utilisation=u, hedged=h is not None)
        for u in LOADS
        for h in (None, hedge_ms)
    ]
    # Replicas at a FIXED request rate: one replica at 60% CPU load, spread over more replicas.
    out["replicas"] = [
        row(
            run(replace(base, replicas=r, utilisation=0.6 / r, hedge_after_ms=h)),
            replicas=r,
            hedged=h is not None,
        )
        for r in (1, 2, 3, 4)
        for h in (None, hedge_ms)
    ]
    out["slow_replica"] = slow_replica(run, base, hedge_ms)
    unhedged = {r["shards"]: r["p99_ms"] for r in out["shards"] if not r["hedged"]}
    hedged = {r["shards"]: r["p99_ms"] for r in out["shards"] if r["hedged"]}
    out["max_shards_within_p99_goal"] = {
        "goal_ms": P99_GOAL_MS,
        "utilisation": base.utilisation,
        "unhedged": max((s for s, p in unhedged.items() if p <= P99_GOAL_MS), default=0),
        "hedged": max((s for s, p in hedged.items() if p <= P99_GOAL_MS), default=0),
    }
    worst = run(replace(base, shards=SHARDS[-1], utilisation=LOADS[-1], hedge_after_ms=hedge_ms))
    out["deadline"] = {
        "router_timeout_ms": SPEC_TIMEOUT_MS,
        "p999_ms_at_128_shards_90pct_load": round(worst.p999_ms.mean, 3),
        "headroom": round(SPEC_TIMEOUT_MS / worst.p999_ms.mean, 1),
    }
    spec = run(replace(base, hedge_after_ms=SPEC_HEDGE_AFTER_MS, hedge_budget=BUDGET))
    out["spec_default_hedging"] = row(spec, hedge_after_ms=SPEC_HEDGE_AFTER_MS)
    out["no_hedging"] = row(run(base))
    return out


def slow_replica(run: Runner, base: Scenario, hedge_ms: float) -> list[dict[str, Any]]:
    """Replica 0 of shard 0 runs `factor` x slower for 20% of the run: unhedged, and hedged with
    the default 10% budget and with 50%."""
    rows = []
    for factor in SLOW_FACTORS:
        scenario = replace(base, slow=SlowReplica(factor))
        rows.append(row(run(scenario), factor=factor, hedge_after_ms=None, hedge_budget=0.0))
        for budget in SLOW_BUDGETS:
            hedged = replace(scenario, hedge_after_ms=hedge_ms, hedge_budget=budget)
            rows.append(row(run(hedged), factor=factor, hedge_after_ms=hedge_ms, hedge_budget=budget))
    return rows


def _best_hedge(run: Runner, base: Scenario, costs: Costs) -> dict[str, Any]:
    """Sweep the hedging delay over quantiles of the unloaded shard latency; pick the lowest p99."""
    sweep = []
    for q in HEDGE_QUANTILES:
        delay = round(costs.unloaded_ms(q), 3)
        summary = run(replace(base, hedge_after_ms=delay, hedge_budget=BUDGET))
        sweep.append(row(summary, quantile=q, hedge_after_ms=delay))
    best = min(sweep, key=lambda r: (r["p99_ms"], r["extra_load"]))
    return {"sweep": sweep, "hedge_after_ms": best["hedge_after_ms"]}


def _measured_wall(measured: dict[str, Any]) -> ServiceTime:
    """The unloaded shard latency, measured sequentially."""
    return ServiceTime(
        tuple(measured["unloaded_shard_ms"]["quantiles"]), tuple(measured["unloaded_shard_ms"]["ms"])
    )


def _measured_rest(measured: dict[str, Any]) -> ServiceTime:
    """The unloaded shard latency (measured sequentially) minus the CPU measured with it."""
    return Costs.split(_measured_wall(measured), measured["unloaded_shard_cpu_ms"]).shard_rest


def _scenario_of(
    measured: dict[str, Any], run: dict[str, Any], rest: ServiceTime, requests: int, seed: int
) -> tuple[Costs, Scenario]:
    """One measured run's costs (the shard and router CPU per request measured in it, `rest` for
    what occupies nothing) and the measured fleet's scenario. The utilisation is a placeholder
    (a closed loop has no rate to set): each check sets it, and how the loop runs, its own way."""
    costs = Costs(
        ServiceTime.constant(run["shard_cpu_ms"]),
        rest,
        router_cpu_ms=run["router_cpu_ms"],
        router_workers=measured["router_workers"],
    )
    scenario = Scenario(
        shards=measured["shards"],
        replicas=measured["replicas"],
        threads=measured["search_threads"],
        utilisation=0.5,
        requests=requests,
        seed=seed,
    )
    return costs, scenario


def check_against_measurement(
    measured: dict[str, Any], requests: int, seeds: int, seed: int
) -> dict[str, Any]:
    """Each measured run, simulated at its own rate with the CPU per request measured in it.

    Occupancy: the shard and router CPU per request of that run (from /proc). What occupies
    nothing: the unloaded shard latency (measured sequentially) minus the CPU measured with it.
    Closed loop of one client: `sequential`; of more clients: Poisson at the achieved rate (the
    model has no closed loop); open loop: Poisson at the offered rate."""
    wall = _measured_wall(measured)
    rest = _measured_rest(measured)
    rows = []
    for run in measured["runs"]:
        costs, scenario = _scenario_of(measured, run, rest, requests, seed)
        scenario = replace(scenario, sequential=run["loop"] == "closed" and run["clients"] == 1)
        rate = run["offered_qps"] if run["loop"] == "open" else run["achieved_qps"]
        scenario = replace(scenario, utilisation=min(max(utilisation_at(costs, scenario, rate), 1e-6), 0.99))
        summary = simulate_seeds(costs, scenario, seeds)
        rows.append(
            {
                **run,
                "simulated": row(summary, utilisation=round(scenario.utilisation, 4)),
                "router_utilisation": round(summary.router_utilisation, 4),
                "p50_ratio": round(run["p50_ms"] / summary.p50_ms.mean, 2),
                "p99_ratio": round(run["p99_ms"] / summary.p99_ms.mean, 2),
            }
        )
    return {
        "measured_by": measured["command"],
        "date": measured["date"],
        "host": measured["host"],
        "unloaded_shard_p50_ms": wall.quantile_ms(0.5),
        "unloaded_shard_p99_ms": wall.quantile_ms(0.99),
        "unloaded_shard_cpu_ms": measured["unloaded_shard_cpu_ms"],
        "rows": rows,
    }


def host_cores(measured: dict[str, Any]) -> int:
    """The measuring machine's cores, from tail_check.json's `host` ("2 cores, load average ...")."""
    found = re.match(r"(\d+) cores", measured["host"])
    if found is None:
        raise ValueError(f"tail_check.json: no core count in host {measured['host']!r}")
    return int(found.group(1))


def fleet_cpu_ms(run: dict[str, Any], shards: int) -> float:
    """CPU per request of every process on the machine: router, each shard, load generator."""
    return float(run["router_cpu_ms"] + shards * run["shard_cpu_ms"] + run["loadgen_cpu_ms"])


def background_estimate(measured: dict[str, Any]) -> dict[str, Any]:
    """Cores other work took, estimated from the closed loop with the most clients: it always has
    requests in flight, so it ran on whatever cores it got; the rest of the machine was taken."""
    closed = max((r for r in measured["runs"] if r["loop"] == "closed"), key=lambda r: r["clients"])
    used = closed["achieved_qps"] * fleet_cpu_ms(closed, measured["shards"]) / 1000.0
    return {
        "from_clients": closed["clients"],
        "fleet_cores_used": round(used, 3),
        "background_cores": round(max(0.0, host_cores(measured) - used), 2),
    }


def contention_check(
    measured: dict[str, Any],
    requests: int,
    seeds: int,
    seed: int,
    *,
    runs: slice = slice(None),
    with_background: bool = True,
) -> dict[str, Any]:
    """Each measured run on the machine's shared cores (`tailsim.simulate_shared_cores`).

    Occupancy is the CPU per request measured in that run (router, each shard, load generator),
    not the batched coefficient: at 50-400 req/s a shard spends 0.27-0.62 ms per query, 4-10x the
    0.065 ms measured at 16 concurrent clients, and it is this run's CPU that took the cores.
    Closed loops run as closed loops of their clients; open loops as Poisson at the offered rate.
    Two variants: the fleet alone on the cores, and with background work of `background_estimate`."""
    rest = _measured_rest(measured)
    cores = host_cores(measured)
    background = background_estimate(measured)
    rows = []
    for run in measured["runs"][runs]:
        costs, scenario = _scenario_of(measured, run, rest, requests, seed)
        if run["loop"] == "closed":
            scenario = replace(scenario, clients=run["clients"])
        else:
            load = utilisation_at(costs, scenario, run["offered_qps"])
            scenario = replace(scenario, utilisation=min(max(load, 1e-6), 0.99))
        out: dict[str, Any] = {
            key: run[key]
            for key in (
                "loop",
                "clients",
                "offered_qps",
                "achieved_qps",
                "p50_ms",
                "p99_ms",
                "load_average_1m",
            )
            if key in run
        }
        out["fleet_cpu_ms"] = round(fleet_cpu_ms(run, measured["shards"]), 4)
        variants = [("alone", 0.0)] + (
            [("background", background["background_cores"])] if with_background else []
        )
        for name, background_cores in variants:
            shared = SharedCores(
                cores, loadgen_cpu_ms=run["loadgen_cpu_ms"], background_cores=background_cores
            )
            summary = simulate_seeds(costs, replace(scenario, cores=shared), seeds)
            assert summary.achieved_per_s is not None and summary.core_utilisation is not None
            out[name] = {
                **row(summary),
                "achieved_qps": round(summary.achieved_per_s.mean, 1),
                "core_utilisation": round(summary.core_utilisation, 3),
                "p50_ratio": round(run["p50_ms"] / summary.p50_ms.mean, 2),
                "p99_ratio": round(run["p99_ms"] / summary.p99_ms.mean, 2),
            }
        rows.append(out)
    model = SharedCores(cores)
    return {
        "measured_by": measured["command"],
        "date": measured["date"],
        "host": measured["host"],
        "shards": measured["shards"],
        "cores": cores,
        "quantum_ms": model.quantum_ms,
        "router_before_fanout": model.router_before_fanout,
        "background": background,
        "requests": requests,
        "seeds": seeds,
        "seed": seed,
        "rows": rows,
    }


def _ci(r: dict[str, Any], key: str) -> str:
    low, high = r[f"{key}_ci"]
    return f"{r[f'{key}_ms']:.2f} [{low:.2f}, {high:.2f}]"


def summary_table(results: dict[str, Any]) -> str:
    """The simulation's headline rows: mean [95% interval] over the seeds."""
    inputs = results["inputs"]
    lines = [
        f"<!-- tail-summary:begin (generated by `{inputs['command']}`; do not edit) -->",
        f"{inputs['seeds']} seeds x {inputs['requests']:,} requests each; percentiles over the "
        f"{results['no_hedging']['counted_per_seed']:,} requests after the warm-up, so p99.9 rests on "
        f"{results['no_hedging']['p999_tail_samples_per_seed']} tail samples per seed. "
        f"Mean [95% interval] in ms; {BASE_REPLICAS} replicas per shard, {BASE_LOAD:.0%} CPU load, "
        f"hedged after {results['recommended_hedge_after_ms']:g} ms with a {BUDGET:.0%} budget.",
        "",
        "| scenario | p50 | p99 | p99.9 | hedges | extra CPU |",
        "|---|---|---|---|---|---|",
    ]

    def add(name: str, r: dict[str, Any]) -> None:
        lines.append(
            f"| {name} | {_ci(r, 'p50')} | {_ci(r, 'p99')} | {_ci(r, 'p999')} | "
            f"{r['hedge_rate']:.1%} | {r['extra_load']:.1%} |"
        )

    for r in results["shards"]:
        if r["shards"] in (1, 16, 128):
            add(f"{r['shards']} shard{'s' if r['shards'] > 1 else ''}{', hedged' if r['hedged'] else ''}", r)
    for r in results["load"]:
        if r["utilisation"] in (0.5, 0.9):
            add(f"16 shards, {r['utilisation']:.0%} load{', hedged' if r['hedged'] else ''}", r)
    add(f"16 shards, spec default hedging ({SPEC_HEDGE_AFTER_MS:g} ms)", results["spec_default_hedging"])
    lines += [
        "",
        "One replica of one shard slow (CPU time x factor) for 20% of the run; p50 and p99 of the "
        "requests inside that window, and p99 over the whole run:",
        "",
        "| slow factor | hedging | window p50 | window p99 | whole-run p99 | hedges |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["slow_replica"]:
        hedging = (
            "none"
            if r["hedge_after_ms"] is None
            else f"after {r['hedge_after_ms']:g} ms, budget {r['hedge_budget']:.0%}"
        )
        low, high = r["window_p99_ci"]
        lines.append(
            f"| {r['factor']:g}x | {hedging} | {r['window_p50_ms']:.2f} | {r['window_p99_ms']:.2f} "
            f"[{low:.2f}, {high:.2f}] | {_ci(r, 'p99')} | {r['hedge_rate']:.1%} |"
        )
    lines.append("<!-- tail-summary:end -->")
    return "\n".join(lines)


def check_table(results: dict[str, Any]) -> str:
    """Simulated against measured, one row per measured run."""
    inputs, check = results["inputs"], results["check"]
    measured_n = min(r["requests"] for r in check["rows"])
    lines = [
        f"<!-- tail-check:begin (generated by `{inputs['command']}` from `{check['measured_by']}`, "
        f"measured {check['date']}; do not edit) -->",
        f"4 shards x 1 replica (one search thread each), a router with its workers and the load generator "
        f"on one machine ({check['host']}); measured: {measured_n:,} requests per run, so p99 rests on "
        f"{measured_n // 100} samples. Simulated: mean [95% interval] over {inputs['check_seeds']} seeds "
        f"x {inputs['check_requests']:,} requests, at the run's rate and with the CPU per request "
        "measured in that run. Ratio = measured / simulated.",
        "",
        "| run | req/s | CPU ms/req router, shard | measured p50 / p99 | simulated p50 | simulated p99 "
        "| ratio p50, p99 | send lag p99 | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in check["rows"]:
        s = r["simulated"]
        name = (
            f"closed, {r['clients']} client{'s' if r['clients'] > 1 else ''}"
            if r["loop"] == "closed"
            else (f"open, {r['offered_qps']:g} req/s")
        )
        failed = sum(r.get("failed_by_status", {}).values())
        if failed:
            name += f" ({failed} non-200)"
        lag = f"{r['send_lag_p99_ms']:.1f} ms" if "send_lag_p99_ms" in r else "-"
        lines.append(
            f"| {name} | {r['achieved_qps']:g} | {r['router_cpu_ms']:.2f}, {r['shard_cpu_ms']:.2f} | "
            f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {_ci(s, 'p50')} | {_ci(s, 'p99')} | "
            f"{r['p50_ratio']:g}x, {r['p99_ratio']:g}x | {lag} | {r['load_average_1m']:g} |"
        )
    lines.append("<!-- tail-check:end -->")
    return "\n".join(lines)


def contention_table(results: dict[str, Any]) -> str:
    """Measured against per-process cores (the tail-check table) and against shared cores."""
    inputs, check = results["inputs"], results["contention"]
    before = {_run_name(r): r["simulated"] for r in results.get("check", {}).get("rows", [])}
    background = check["background"]
    lines = [
        f"<!-- tail-contention:begin (generated by `{inputs['contention_command']}` from "
        f"`{check['measured_by']}`, measured {check['date']}; do not edit) -->",
        f"The runs of the table above on {check['cores']} shared cores: router workers, shards and "
        f"the load generator in one FIFO run queue, a job holding a core for at most "
        f"{check['quantum_ms']:g} ms, {check['router_before_fanout']:.0%} of the router's CPU before "
        f"the fan-out; each run's own CPU per request (router + {check['shards']} shards + generator "
        "in the second column). Simulated: mean [95% interval] over "
        f'{check["seeds"]} seeds x {check["requests"]:,} requests. "alone": nothing else on the '
        f'cores; "+ background": {background["background_cores"]:g} cores of other work '
        f"({check['cores']} minus the {background['fleet_cores_used']:g} cores the closed loop of "
        f"{background['from_clients']} clients used).",
        "",
        "| run | CPU ms/req | measured req/s, p50 / p99 | own cores p50 / p99 | alone: p50 | alone: p99 "
        "| alone: req/s, cores busy | + background: p50 | + background: p99 | + background: req/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in check["rows"]:
        name = _run_name(r)
        old = before.get(name)
        own = f"{old['p50_ms']:.2f} / {old['p99_ms']:.2f}" if old else "-"
        alone = r["alone"]
        cells = [
            name,
            f"{r['fleet_cpu_ms']:.2f}",
            f"{r['achieved_qps']:g}, {r['p50_ms']:.2f} / {r['p99_ms']:.2f}",
            own,
            _ci(alone, "p50"),
            _ci(alone, "p99"),
            f"{alone['achieved_qps']:g}, {alone['core_utilisation']:.0%}",
        ]
        if "background" in r:
            b = r["background"]
            cells += [_ci(b, "p50"), _ci(b, "p99"), f"{b['achieved_qps']:g}"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("<!-- tail-contention:end -->")
    return "\n".join(lines)


def _run_name(r: dict[str, Any]) -> str:
    if r["loop"] == "closed":
        return f"closed, {r['clients']} client{'s' if r['clients'] > 1 else ''}"
    return f"open, {r['offered_qps']:g} req/s"


def tables(results: dict[str, Any]) -> list[str]:
    return [
        summary_table(results),
        *([check_table(results)] if "check" in results else []),
        *([contention_table(results)] if "contention" in results else []),
    ]


def drifted(doc: str, results: dict[str, Any]) -> list[str]:
    """Names of the marked tables whose text in `doc` differs from what `results` renders."""
    out = []
    for table in tables(results):
        name = table.split(":begin", 1)[0].removeprefix("<!-- ")
        found = re.search(rf"<!-- {name}:begin.*?<!-- {name}:end -->", doc, re.S)
        if found is None or found.group(0) != table:
            out.append(name)
    return out


def _series(rows: list[dict[str, Any]], key: str, hedged: bool, value: str) -> tuple[list[Any], list[Any]]:
    chosen = [r for r in rows if r["hedged"] == hedged]
    return [r[key] for r in chosen], [r[value] for r in chosen]


def _errors(rows: list[dict[str, Any]], hedged: bool, value: str) -> list[list[float]]:
    """Error bars (below, above the mean) from the 95% intervals."""
    chosen = [r for r in rows if r["hedged"] == hedged]
    key = value.removesuffix("_ms")
    return [
        [max(r[value] - r[f"{key}_ci"][0], 0.0) for r in chosen],
        [max(r[f"{key}_ci"][1] - r[value], 0.0) for r in chosen],
    ]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_shards(results: dict[str, Any], path: Path) -> Path:
    h = results["recommended_hedge_after_ms"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for hedged, style in ((False, "-"), (True, "--")):
        label = f"hedged after {h:g} ms" if hedged else "no hedging"
        for value, marker in (("p50_ms", "o"), ("p99_ms", "s")):
            xs, ys = _series(results["shards"], "shards", hedged, value)
            yerr = _errors(results["shards"], hedged, value)
            ax.errorbar(xs, ys, yerr=yerr, fmt=style, marker=marker, capsize=2, label=f"{value[:3]}, {label}")
    ax.axhline(P99_GOAL_MS, color="grey", linewidth=0.8, linestyle=":", label=f"{P99_GOAL_MS:g} ms goal")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shards (fan-out), 2 replicas each, 30% CPU load")
    ax.set_ylabel("request latency (ms)")
    ax.set_title("Scatter-gather tail grows with fan-out")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_hedging(results: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sweep = results["hedging"]
    xs = [r["hedge_after_ms"] for r in sweep]
    ax.errorbar(
        xs,
        [r["p99_ms"] for r in sweep],
        yerr=[[r["p99_ms"] - r["p99_ci"][0] for r in sweep], [r["p99_ci"][1] - r["p99_ms"] for r in sweep]],
        marker="s",
        capsize=2,
        label="p99 with hedging",
    )
    ax.axhline(results["no_hedging"]["p99_ms"], color="grey", linestyle=":", label="p99 without hedging")
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = [f"p{100 * r['quantile']:g}\n{r['hedge_after_ms']:.2g}" for r in sweep]
    ax.set_xticks(xs, ticks, fontsize=7)
    ax.set_xlabel("hedge after: unloaded per-shard latency quantile and ms")
    ax.set_ylabel("p99 (ms)")
    twin = ax.twinx()
    twin.plot(xs, [100 * r["extra_load"] for r in sweep], color="tab:red", marker="o", label="extra load (%)")
    twin.set_ylabel("extra shard load from hedges (%)")
    ax.set_title(f"Hedging: 16 shards x 2 replicas, 30% CPU load, budget {BUDGET:.0%}")
    lines, labels = ax.get_legend_handles_labels()
    more_lines, more_labels = twin.get_legend_handles_labels()
    ax.legend(lines + more_lines, labels + more_labels, fontsize=8)
    return _save(fig, path)


def plot_p99(rows: list[dict[str, Any]], field: str, path: Path, *, xlabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    scale = 100 if field == "utilisation" else 1
    for hedged, style in ((False, "-"), (True, "--")):
        xs, ys = _series(rows, field, hedged, "p99_ms")
        ax.errorbar(
            [scale * x for x in xs],
            ys,
            yerr=_errors(rows, hedged, "p99_ms"),
            fmt=style,
            marker="s",
            capsize=2,
            label="hedged" if hedged else "no hedging",
        )
    if field == "replicas":
        ax.set_xticks(sorted({r["replicas"] for r in rows}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("p99 (ms)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_slow(results: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = results["slow_replica"]
    factors = sorted({r["factor"] for r in rows})
    variants = [(None, 0.0), *((results["recommended_hedge_after_ms"], b) for b in SLOW_BUDGETS)]
    width = 0.8 / len(variants)
    for i, (after, budget) in enumerate(variants):
        chosen = [next(r for r in rows if r["factor"] == f and r["hedge_budget"] == budget) for f in factors]
        label = "no hedging" if after is None else f"hedged after {after:g} ms, budget {budget:.0%}"
        ax.bar(
            [j + i * width for j in range(len(factors))],
            [r["window_p99_ms"] for r in chosen],
            width,
            yerr=[[r["window_p99_ms"] - r["window_p99_ci"][0] for r in chosen],
                  [r["window_p99_ci"][1] - r["window_p99_ms"] for r in chosen]],
            capsize=2,
            label=label,
        )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks([j + width for j in range(len(factors))], [f"{f:g}x" for f in factors])
    ax.set_xlabel("one replica of one shard slower by (CPU time x factor), for 20% of the run")
    ax.set_ylabel("p99 inside the slow window (ms)")
    ax.set_title("Correlated slowness: 16 shards x 2 replicas, 30% CPU load")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    return [
        plot_shards(results, out / "tail-vs-shards.png"),
        plot_hedging(results, out / "tail-vs-hedging.png"),
        plot_p99(
            results["load"],
            "utilisation",
            out / "tail-vs-load.png",
            xlabel="CPU load of each replica's search thread (%)",
            title="p99 against load: 16 shards x 2 replicas",
        ),
        plot_p99(
            results["replicas"],
            "replicas",
            out / "tail-vs-replicas.png",
            xlabel="replicas per shard (same request rate: 60% CPU load of one replica)",
            title="Replicas buy tail latency: 16 shards",
        ),
        plot_slow(results, out / "tail-slow-replica.png"),
    ]


def _add_contention(results: dict[str, Any], args: argparse.Namespace, command: str) -> None:
    if not args.check.exists():
        return
    measured = json.loads(args.check.read_text())
    results["contention"] = contention_check(
        measured, args.contention_requests, args.contention_seeds, args.seed
    )
    results["inputs"]["contention_command"] = command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/tail_plots.py", description=__doc__.split("\n")[0])
    parser.add_argument("--coefficients", type=Path, default=HERE / "coefficients.json")
    parser.add_argument("--check", type=Path, default=HERE / "tail_check.json")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    # 110,000 requests: 104,500 counted after the warm-up, 104 samples beyond the p99.9.
    parser.add_argument("--requests", type=int, default=110_000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write-doc", type=Path, default=None)
    parser.add_argument("--contention-requests", type=int, default=CONTENTION_REQUESTS)
    parser.add_argument("--contention-seeds", type=int, default=CONTENTION_SEEDS)
    parser.add_argument(
        "--contention-only",
        action="store_true",
        help="only the shared-core check: rewrite its part of the tailsim.json in --out (and the tables)",
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="no simulation: rewrite the --write-doc tables from the tailsim.json already in --out",
    )
    args = parser.parse_args(argv)
    if args.tables_only:
        if args.write_doc is None:
            parser.error("--tables-only needs --write-doc")
        for table in tables(json.loads((args.out / "tailsim.json").read_text())):
            write_marked_section(args.write_doc, table)
        print(f"wrote the tail-summary and tail-check tables of {args.write_doc}")
        return 0
    command = " ".join(["python benchmarks/tail_plots.py", *(sys.argv[1:] if argv is None else argv)])
    if args.contention_only:
        results = json.loads((args.out / "tailsim.json").read_text())
        _add_contention(results, args, command)
        (args.out / "tailsim.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote the shared-core check into {args.out / 'tailsim.json'}")
        if args.write_doc is not None:
            for table in tables(results):
                write_marked_section(args.write_doc, table)
            print(f"wrote the tail tables of {args.write_doc}")
        return 0
    c = load_coefficients(args.coefficients)
    results = sweeps(Runner(c, args.requests, args.seeds, args.seed))
    results["inputs"] = {
        "coefficients": os.path.relpath(args.coefficients.resolve(), REPO),
        "shard_latency_from": c.source_of("shard_latency_ms").command,
        "requests": args.requests,
        "seeds": args.seeds,
        "seed": args.seed,
        "check_requests": args.requests,
        "check_seeds": args.seeds,
        "command": command,
    }
    if args.check.exists():
        results["check"] = check_against_measurement(
            json.loads(args.check.read_text()), args.requests, args.seeds, args.seed
        )
        _add_contention(results, args, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tailsim.json").write_text(json.dumps(results, indent=2) + "\n")
    for path in plot(results, args.out):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'tailsim.json'}")
    if args.write_doc is not None:
        for table in tables(results):
            write_marked_section(args.write_doc, table)
        print(f"wrote the tail tables of {args.write_doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
