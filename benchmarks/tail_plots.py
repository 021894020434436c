"""Plots of the tail-latency simulation (`shardrec.tools.capacity.tailsim`), on the measured per-shard
latency distribution of `benchmarks/coefficients.json`.

    python benchmarks/tail_plots.py [--coefficients FILE] [--out docs/img] [--requests 20000]

Writes docs/img/tail-vs-shards.png, tail-vs-hedging.png, tail-vs-load.png, tail-vs-replicas.png
and docs/img/tailsim.json (every number behind the plots, the derived defaults, and the check of
the model against the real router measured by `benchmarks/coefficients.py measure`).
Seeded: the same coefficients give the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from shardrec.tools.capacity.coefficients import load_coefficients
from shardrec.tools.capacity.tailsim import Outcome, Scenario, ServiceTime, simulate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARDS = (1, 2, 4, 8, 16, 32, 64, 128)
LOADS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
HEDGE_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
P99_GOAL_MS = 10.0  # issue 3: single-query p99 <= 10 ms at half the saturating load
BUDGET = 0.1  # router.hedging.budgetPercent default
SPEC_HEDGE_AFTER_MS = 20.0  # router.hedging.afterMs default
SPEC_TIMEOUT_MS = 1000.0  # router.timeoutMs default


def row(outcome: Outcome, **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "p50_ms": round(outcome.p50_ms, 3),
        "p99_ms": round(outcome.p99_ms, 3),
        "p999_ms": round(outcome.p999_ms, 3),
        "hedge_rate": round(outcome.hedge_rate, 4),
        "extra_load": round(outcome.extra_load, 4),
    }


def sweeps(service: ServiceTime, requests: int, seed: int) -> dict[str, Any]:
    base = Scenario(shards=16, replicas=2, utilisation=0.3, requests=requests, seed=seed)
    hedge_best = _best_hedge(service, base)
    hedge_ms = hedge_best["hedge_after_ms"]
    out: dict[str, Any] = {"service_p50_ms": service.quantile_ms(0.5), "service_mean_ms": service.mean_ms}
    out["service_p95_ms"] = service.quantile_ms(0.95)
    out["service_p99_ms"] = service.quantile_ms(0.99)
    out["hedging"] = hedge_best["sweep"]
    out["recommended_hedge_after_ms"] = hedge_ms
    out["shards"] = [
        row(simulate(service, replace(base, shards=s, hedge_after_ms=h)), shards=s, hedged=h is not None)
        for s in SHARDS
        for h in (None, hedge_ms)
    ]
    out["load"] = [
        row(
            simulate(service, replace(base, utilisation=u, hedge_after_ms=h)),
            utilisation=u,
            hedged=h is not None,
        )
        for u in LOADS
        for h in (None, hedge_ms)
    ]
    # Replicas at a FIXED request rate: one replica at 60% load, spread over more replicas.
    out["replicas"] = [
        row(
            simulate(service, replace(base, replicas=r, utilisation=0.6 / r, hedge_after_ms=h)),
            replicas=r,
            hedged=h is not None,
        )
        for r in (1, 2, 3, 4)
        for h in (None, hedge_ms)
    ]
    unhedged = {r["shards"]: r["p99_ms"] for r in out["shards"] if not r["hedged"]}
    hedged = {r["shards"]: r["p99_ms"] for r in out["shards"] if r["hedged"]}
    out["max_shards_within_p99_goal"] = {
        "goal_ms": P99_GOAL_MS,
        "utilisation": base.utilisation,
        "unhedged": max((s for s, p in unhedged.items() if p <= P99_GOAL_MS), default=0),
        "hedged": max((s for s, p in hedged.items() if p <= P99_GOAL_MS), default=0),
    }
    worst = simulate(
        service, replace(base, shards=SHARDS[-1], utilisation=LOADS[-1], hedge_after_ms=hedge_ms)
    )
    out["deadline"] = {
        "router_timeout_ms": SPEC_TIMEOUT_MS,
        "p999_ms_at_128_shards_80pct_load": round(worst.p999_ms, 3),
        "headroom": round(SPEC_TIMEOUT_MS / worst.p999_ms, 1),
    }
    spec = simulate(service, replace(base, hedge_after_ms=SPEC_HEDGE_AFTER_MS, hedge_budget=BUDGET))
    out["spec_default_hedging"] = row(spec, hedge_after_ms=SPEC_HEDGE_AFTER_MS)
    out["no_hedging"] = row(simulate(service, base))
    return out


def _best_hedge(service: ServiceTime, base: Scenario) -> dict[str, Any]:
    """Sweep the hedging delay over quantiles of the per-shard latency; pick the lowest p99."""
    sweep = []
    for q in HEDGE_QUANTILES:
        delay = round(service.quantile_ms(q), 3)
        outcome = simulate(service, replace(base, hedge_after_ms=delay, hedge_budget=BUDGET))
        sweep.append(row(outcome, quantile=q, hedge_after_ms=delay))
    best = min(sweep, key=lambda r: (r["p99_ms"], r["extra_load"]))
    return {"sweep": sweep, "hedge_after_ms": best["hedge_after_ms"]}


def check_against_measurement(
    service: ServiceTime, checks: list[dict[str, Any]], seed: int
) -> list[dict[str, Any]]:
    """The model at the sizes this machine ran for real (shards x 1 replica, measured rates)."""
    compared = []
    for check in checks:
        utilisation = min(max(check["utilisation"], 0.001), 0.95)
        outcome = simulate(
            service,
            Scenario(
                shards=check["shards"],
                replicas=check["replicas"],
                utilisation=utilisation,
                requests=max(check["requests"], 1000),
                seed=seed,
                router_ms=check["router_cpu_ms"],
            ),
        )
        compared.append(
            {
                **check,
                "simulated_p50_ms": round(outcome.p50_ms, 3),
                "simulated_p99_ms": round(outcome.p99_ms, 3),
            }
        )
    return compared


def _series(rows: list[dict[str, Any]], key: str, hedged: bool, value: str) -> tuple[list[Any], list[Any]]:
    chosen = [r for r in rows if r["hedged"] == hedged]
    return [r[key] for r in chosen], [r[value] for r in chosen]


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
            ax.plot(xs, ys, style, marker=marker, label=f"{value[:3]}, {label}")
    ax.axhline(P99_GOAL_MS, color="grey", linewidth=0.8, linestyle=":", label=f"{P99_GOAL_MS:g} ms goal")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shards (fan-out), 2 replicas each, 30% load")
    ax.set_ylabel("request latency (ms)")
    ax.set_title("Scatter-gather tail grows with fan-out")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_hedging(results: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sweep = results["hedging"]
    xs = [r["hedge_after_ms"] for r in sweep]
    ax.plot(xs, [r["p99_ms"] for r in sweep], marker="s", label="p99 with hedging")
    ax.axhline(results["no_hedging"]["p99_ms"], color="grey", linestyle=":", label="p99 without hedging")
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = [f"p{100 * r['quantile']:g}\n{r['hedge_after_ms']:.2g}" for r in sweep]
    ax.set_xticks(xs, ticks, fontsize=7)
    ax.set_xlabel("hedge after: per-shard latency quantile and ms")
    ax.set_ylabel("p99 (ms)")
    twin = ax.twinx()
    twin.plot(xs, [100 * r["extra_load"] for r in sweep], color="tab:red", marker="o", label="extra load (%)")
    twin.set_ylabel("extra shard load from hedges (%)")
    ax.set_title(f"Hedging: 16 shards x 2 replicas, 30% load, budget {BUDGET:.0%}")
    lines, labels = ax.get_legend_handles_labels()
    more_lines, more_labels = twin.get_legend_handles_labels()
    ax.legend(lines + more_lines, labels + more_labels, fontsize=8)
    return _save(fig, path)


def plot_p99(rows: list[dict[str, Any]], field: str, path: Path, *, xlabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    scale = 100 if field == "utilisation" else 1
    for hedged, style in ((False, "-"), (True, "--")):
        xs, ys = _series(rows, field, hedged, "p99_ms")
        ax.plot([scale * x for x in xs], ys, style, marker="s", label="hedged" if hedged else "no hedging")
    if field == "replicas":
        ax.set_xticks(sorted({r["replicas"] for r in rows}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("p99 (ms)")
    ax.set_title(title)
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
            xlabel="load per replica (%)",
            title="p99 against load: 16 shards x 2 replicas",
        ),
        plot_p99(
            results["replicas"],
            "replicas",
            out / "tail-vs-replicas.png",
            xlabel="replicas per shard (same request rate: 60% of one replica)",
            title="Replicas buy tail latency: 16 shards",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/tail_plots.py", description=__doc__.split("\n")[0])
    parser.add_argument("--coefficients", type=Path, default=HERE / "coefficients.json")
    parser.add_argument("--check", type=Path, default=HERE / "tailsim_check.json")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    c = load_coefficients(args.coefficients)
    service = ServiceTime(tuple(c.shard_latency_ms.quantiles), tuple(c.shard_latency_ms.ms))
    results = sweeps(service, args.requests, args.seed)
    if args.check.exists():
        results["check"] = check_against_measurement(service, json.loads(args.check.read_text()), args.seed)
    results["inputs"] = {
        "coefficients": os.path.relpath(args.coefficients.resolve(), REPO),
        "shard_latency_from": c.source_of("shard_latency_ms").command,
        "requests": args.requests,
        "seed": args.seed,
        "command": " ".join(["python benchmarks/tail_plots.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tailsim.json").write_text(json.dumps(results, indent=2) + "\n")
    for path in plot(results, args.out):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'tailsim.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
