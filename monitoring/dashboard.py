#!/usr/bin/env python3
"""Generate the shardrec Grafana dashboard with grafana-foundation-sdk.

    python monitoring/dashboard.py            # write monitoring/dashboards/shardrec.json + the chart copy
    python monitoring/dashboard.py --check    # exit 1 if either file differs from what this generates

The dashboard is code so that every query lives in one reviewed place and tests/ship can check that
each metric it names is one the router, shard server or operator registers (or a recording rule of
monitoring/alerts.yaml). Needs the dev extra (grafana-foundation-sdk).

Each row is one pure function returning its panels; `build` lays them out in order. Panel options are
written out explicitly with Grafana's own defaults: the SDK's model defaults differ (a hidden legend,
no reducer for stat panels), and a panel without options cannot be read back by the SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Panel,
    VariableModel,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = (
    ROOT / "monitoring" / "dashboards" / "shardrec.json",
    ROOT / "charts" / "shardrec-operator" / "files" / "dashboards" / "shardrec.json",
)
UID = "shardrec-overview"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every series is filtered by the two dashboard variables; router and shard series get the labels
# from the scrape, operator series carry them (docs/operations.md).
SEL = 'namespace=~"$namespace", cluster=~"$cluster"'
RATE = "$__rate_interval"
# The operator's own pass metrics describe the operator, not one cluster: no variable filter.
OPERATOR = 'job="shardrec-operator"'
BURN_WINDOWS = ("5m", "1h", "6h", "1d")

Panels = list[Builder[Panel]]


def query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def legend() -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .display_mode(LegendDisplayMode.LIST)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs([])
    )


def tooltip() -> common.VizTooltipOptions:
    return common.VizTooltipOptions().mode(TooltipDisplayMode.SINGLE).sort(SortOrder.NONE)


def graph(title: str, description: str, unit: str, *targets: prometheus.Dataquery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .legend(legend())
        .tooltip(tooltip())
    )
    for ref, target in zip("ABCDEFGH", targets, strict=False):
        panel = panel.with_target(target.ref_id(ref))
    return panel.span(12).height(8)


def quantiles(metric: str, by: str, title: str, description: str, selector: str = SEL) -> timeseries.Panel:
    targets = [
        query(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]
    return graph(title, description, "s", *targets)


def variables() -> list[Builder[VariableModel]]:
    def label_values(name: str, metric: str, selector: str) -> dashboard.QueryVariable:
        series = f"{metric}{{{selector}}}" if selector else metric
        return (
            dashboard.QueryVariable(name)
            .label(name)
            .datasource(DATASOURCE)
            .query(f"label_values({series}, {name})")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )

    return [
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        label_values("namespace", "shardrec_router_requests_total", ""),
        label_values("cluster", "shardrec_router_requests_total", 'namespace=~"$namespace"'),
    ]


def slo_panels() -> Panels:
    def burn(title: str, ratio: str, objective: str) -> timeseries.Panel:
        return graph(
            title,
            "Error-budget burn rate: 1 spends the 30-day budget in exactly 30 days; 14.4 in 2 days.",
            "none",
            *(
                query(
                    f"shardrec:{ratio}:ratio_rate{w}{{{SEL}}}"
                    f" / on() group_left() (1 - shardrec:slo:{objective})",
                    f"{w} {{{{cluster}}}}",
                )
                for w in BURN_WINDOWS
            ),
        )

    return [
        burn("Availability budget burn", "router_availability_errors", "availability_objective"),
        burn("Latency budget burn", "router_latency_slow", "latency_objective"),
    ]


def router_panels() -> Panels:
    requests = f"shardrec_router_requests_total{{{SEL}}}"
    return [
        graph(
            "Request rate by route",
            "Client requests per second, by route and status code.",
            "reqps",
            query(f"sum by (route, code) (rate({requests}[{RATE}]))", "{{route}} {{code}}"),
        ),
        graph(
            "Error ratio by route",
            "Share of requests answered with a 5xx (the availability SLI).",
            "percentunit",
            query(
                f'sum by (route) (rate(shardrec_router_requests_total{{{SEL}, code=~"5.."}}[{RATE}]))'
                f" / sum by (route) (rate({requests}[{RATE}]))",
                "{{route}}",
            ),
        ),
        quantiles(
            "shardrec_router_request_duration_seconds",
            "route",
            "Latency by route",
            "p50, p95 and p99 of client request latency.",
        ),
        graph(
            "Refused requests",
            "Load shedding (503, max_in_flight reached) and rate limiting (429) per second.",
            "reqps",
            query(f"sum(rate(shardrec_router_shed_requests_total{{{SEL}}}[{RATE}]))", "shed"),
            query(f"sum(rate(shardrec_router_rate_limited_requests_total{{{SEL}}}[{RATE}]))", "rate limited"),
            query(f"sum(shardrec_router_in_flight_requests{{{SEL}}})", "in flight"),
        ),
    ]


def shard_panels() -> Panels:
    shard_requests = f"shardrec_router_shard_request_duration_seconds_count{{{SEL}}}"

    def per_shard_share(counter: str) -> str:
        return (
            f"sum by (shard) (rate({counter}{{{SEL}}}[{RATE}]))"
            f" / sum by (shard) (rate({shard_requests}[{RATE}]))"
        )

    return [
        quantiles(
            "shardrec_router_shard_request_duration_seconds",
            "shard",
            "Shard latency (router view)",
            "Latency of batched requests from the routers to each shard.",
        ),
        quantiles(
            "shardrec_shard_request_seconds",
            "instance",
            "Shard server latency",
            "Time each shard server spends on a request, per replica.",
        ),
        graph(
            "Partial answers",
            "Share of successful responses that miss a shard (consistency: available).",
            "percentunit",
            query(
                f"sum(rate(shardrec_router_partial_answers_total{{{SEL}}}[{RATE}]))"
                f' / sum(rate(shardrec_router_requests_total{{{SEL}, code=~"2.."}}[{RATE}]))',
                "partial",
            ),
        ),
        graph(
            "Hedges and retries by shard",
            "Share of each shard's requests that were hedged (slow) or retried (failed).",
            "percentunit",
            query(per_shard_share("shardrec_router_hedges_total"), "hedged {{shard}}"),
            query(per_shard_share("shardrec_router_retries_total"), "retried {{shard}}"),
        ),
        graph(
            "Replicas ready per shard",
            "Replicas in rotation (fewest over the routers) and ready pods against the spec.",
            "short",
            query(f"min by (shard) (shardrec_router_live_replicas{{{SEL}}})", "in rotation {{shard}}"),
            query(
                f"max by (shard) (shardrec_operator_cluster_shard_ready_replicas{{{SEL}}})", "ready {{shard}}"
            ),
            query(f"max by (shard) (shardrec_operator_cluster_shard_replicas{{{SEL}}})", "spec {{shard}}"),
        ),
    ]


def rollout_panels() -> Panels:
    return [
        stat.Panel()
        .title("Active version per router")
        .description("The index version (and layout) each router replica serves.")
        .datasource(DATASOURCE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .with_target(
            query(
                f"max by (instance, version, layout) (shardrec_router_active_version_info{{{SEL}}})",
                "{{instance}}: {{version}} ({{layout}})",
            )
            .instant()
            .ref_id("A")
        )
        .span(12)
        .height(6),
        statetimeline.Panel()
        .title("Rollout phase")
        .description("Phase of each RecommenderCluster over time.")
        .datasource(DATASOURCE)
        .legend(legend())
        .tooltip(tooltip())
        .with_target(
            query(
                f"max by (cluster, phase) (shardrec_operator_cluster_phase{{{SEL}}}) == 1", "{{phase}}"
            ).ref_id("A")
        )
        .span(12)
        .height(6),
        graph(
            "Layouts by state",
            "Index layouts of each cluster by state (Building, Starting, Ready, Serving, ...).",
            "short",
            query(f"sum by (state) (shardrec_operator_cluster_layouts{{{SEL}}})", "{{state}}"),
        ),
        graph(
            "Topology updates",
            "Topology documents the routers applied, found stale, or rejected, per second.",
            "ops",
            query(
                f"sum by (result) (rate(shardrec_router_topology_updates_total{{{SEL}}}[{RATE}]))",
                "{{result}}",
            ),
        ),
    ]


def operator_panels() -> Panels:
    return [
        graph(
            "Reconciles",
            "Reconcile passes per second by outcome (ok, invalid, conflict, error).",
            "ops",
            query(
                f"sum by (outcome) (rate(shardrec_operator_reconciles_total{{{OPERATOR}}}[{RATE}]))",
                "{{outcome}}",
            ),
        ),
        quantiles(
            "shardrec_operator_reconcile_duration_seconds",
            "trigger",
            "Reconcile duration",
            "Time one reconcile pass takes, by what triggered it.",
            OPERATOR,
        ),
    ]


ROWS: tuple[tuple[str, Callable[[], Panels]], ...] = (
    ("SLO", slo_panels),
    ("Router", router_panels),
    ("Shards", shard_panels),
    ("Versions and rollouts", rollout_panels),
    ("Operator", operator_panels),
)


def build() -> dict[str, object]:
    builder = (
        dashboard.Dashboard("shardrec")
        .uid(UID)
        .description("Sharded, replicated HNSW recommendation serving: router, shards, rollouts, operator.")
        .tags(["shardrec"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .variables(variables())
    )
    # Expanded rows: Grafana wants their panels after the row at top level, not inside it.
    for title, panels in ROWS:
        builder = builder.with_row(dashboard.Row(title))
        for panel in panels():
            builder = builder.with_panel(panel)
    model = builder.build()
    # Grafana keys panel links (viewPanel=N) and edits by id; the SDK leaves ids to the caller.
    for number, built in enumerate(model.panels or [], start=1):
        built.id_val = number
    encoded: dict[str, object] = json.loads(json.dumps(model, cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the generated files are stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        stale = [str(p.relative_to(ROOT)) for p in OUTPUTS if not p.exists() or p.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}: run `python monitoring/dashboard.py`", file=sys.stderr)
            return 1
        return 0
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
