#!/usr/bin/env python3
"""Generate the shardrec Grafana dashboard with grafana-foundation-sdk.

    python monitoring/dashboard.py            # write monitoring/dashboards/shardrec.json + the chart copy
    python monitoring/dashboard.py --check    # exit 1 if either file differs from what this generates

The dashboard is code so that every query lives in one reviewed place and tests/ship can check that
each metric it names is one the router, shard server or operator registers (or a recording rule of
monitoring/alerts.yaml). Needs the dev extra (grafana-foundation-sdk).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

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


def query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def graph(title: str, description: str, unit: str, *targets: prometheus.Dataquery) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
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


def variables() -> list[dashboard.DatasourceVariable | dashboard.QueryVariable]:
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


def slo_row(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    burn = "Error-budget burn rate: 1 spends the 30-day budget in exactly 30 days; 14.4 in 2 days."
    return (
        builder.with_row(dashboard.Row("SLO"))
        .with_panel(
            graph(
                "Availability budget burn",
                burn,
                "none",
                *(
                    query(
                        f"shardrec:router_availability_errors:ratio_rate{w}{{{SEL}}}"
                        " / on() group_left() (1 - shardrec:slo:availability_objective)",
                        f"{w} {{{{cluster}}}}",
                    )
                    for w in ("5m", "1h", "6h", "1d")
                ),
            )
        )
        .with_panel(
            graph(
                "Latency budget burn",
                burn,
                "none",
                *(
                    query(
                        f"shardrec:router_latency_slow:ratio_rate{w}{{{SEL}}}"
                        " / on() group_left() (1 - shardrec:slo:latency_objective)",
                        f"{w} {{{{cluster}}}}",
                    )
                    for w in ("5m", "1h", "6h", "1d")
                ),
            )
        )
    )


def router_row(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    requests = f"shardrec_router_requests_total{{{SEL}}}"
    return (
        builder.with_row(dashboard.Row("Router"))
        .with_panel(
            graph(
                "Request rate by route",
                "Client requests per second, by route and status code.",
                "reqps",
                query(f"sum by (route, code) (rate({requests}[{RATE}]))", "{{route}} {{code}}"),
            )
        )
        .with_panel(
            graph(
                "Error ratio by route",
                "Share of requests answered with a 5xx (the availability SLI).",
                "percentunit",
                query(
                    f'sum by (route) (rate(shardrec_router_requests_total{{{SEL}, code=~"5.."}}[{RATE}]))'
                    f" / sum by (route) (rate({requests}[{RATE}]))",
                    "{{route}}",
                ),
            )
        )
        .with_panel(
            quantiles(
                "shardrec_router_request_duration_seconds",
                "route",
                "Latency by route",
                "p50, p95 and p99 of client request latency.",
            )
        )
        .with_panel(
            graph(
                "Refused requests",
                "Load shedding (503, max_in_flight reached) and rate limiting (429) per second.",
                "reqps",
                query(f"sum(rate(shardrec_router_shed_requests_total{{{SEL}}}[{RATE}]))", "shed"),
                query(
                    f"sum(rate(shardrec_router_rate_limited_requests_total{{{SEL}}}[{RATE}]))", "rate limited"
                ),
                query(f"sum(shardrec_router_in_flight_requests{{{SEL}}})", "in flight"),
            )
        )
    )


def shards_row(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    shard_requests = f"shardrec_router_shard_request_duration_seconds_count{{{SEL}}}"
    return (
        builder.with_row(dashboard.Row("Shards"))
        .with_panel(
            quantiles(
                "shardrec_router_shard_request_duration_seconds",
                "shard",
                "Shard latency (router view)",
                "Latency of batched requests from the routers to each shard.",
            )
        )
        .with_panel(
            quantiles(
                "shardrec_shard_request_seconds",
                "instance",
                "Shard server latency",
                "Time each shard server spends on a request, per replica.",
            )
        )
        .with_panel(
            graph(
                "Partial answers",
                "Share of successful responses that miss a shard (consistency: available).",
                "percentunit",
                query(
                    f"sum(rate(shardrec_router_partial_answers_total{{{SEL}}}[{RATE}]))"
                    f' / sum(rate(shardrec_router_requests_total{{{SEL}, code=~"2.."}}[{RATE}]))',
                    "partial",
                ),
            )
        )
        .with_panel(
            graph(
                "Hedges and retries by shard",
                "Share of each shard's requests that were hedged (slow) or retried (failed).",
                "percentunit",
                query(
                    f"sum by (shard) (rate(shardrec_router_hedges_total{{{SEL}}}[{RATE}]))"
                    f" / sum by (shard) (rate({shard_requests}[{RATE}]))",
                    "hedged {{shard}}",
                ),
                query(
                    f"sum by (shard) (rate(shardrec_router_retries_total{{{SEL}}}[{RATE}]))"
                    f" / sum by (shard) (rate({shard_requests}[{RATE}]))",
                    "retried {{shard}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Replicas ready per shard",
                "Replicas in rotation (fewest over the routers) and ready pods against the spec.",
                "short",
                query(f"min by (shard) (shardrec_router_live_replicas{{{SEL}}})", "in rotation {{shard}}"),
                query(
                    f"max by (shard) (shardrec_operator_cluster_shard_ready_replicas{{{SEL}}})",
                    "ready {{shard}}",
                ),
                query(
                    f"max by (shard) (shardrec_operator_cluster_shard_replicas{{{SEL}}})", "spec {{shard}}"
                ),
            )
        )
    )


def rollout_row(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        builder.with_row(dashboard.Row("Versions and rollouts"))
        .with_panel(
            stat.Panel()
            .title("Active version per router")
            .description("The index version (and layout) each router replica serves.")
            .datasource(DATASOURCE)
            .with_target(
                query(
                    f"max by (instance, version, layout) (shardrec_router_active_version_info{{{SEL}}})",
                    "{{instance}}: {{version}} ({{layout}})",
                )
                .instant()
                .ref_id("A")
            )
            .span(12)
            .height(6)
        )
        .with_panel(
            statetimeline.Panel()
            .title("Rollout phase")
            .description("Phase of each RecommenderCluster over time.")
            .datasource(DATASOURCE)
            .with_target(
                query(
                    f"max by (cluster, phase) (shardrec_operator_cluster_phase{{{SEL}}}) == 1", "{{phase}}"
                ).ref_id("A")
            )
            .span(12)
            .height(6)
        )
        .with_panel(
            graph(
                "Layouts by state",
                "Index layouts of each cluster by state (Building, Starting, Ready, Serving, ...).",
                "short",
                query(f"sum by (state) (shardrec_operator_cluster_layouts{{{SEL}}})", "{{state}}"),
            )
        )
        .with_panel(
            graph(
                "Topology updates",
                "Topology documents the routers applied, found stale, or rejected, per second.",
                "ops",
                query(
                    f"sum by (result) (rate(shardrec_router_topology_updates_total{{{SEL}}}[{RATE}]))",
                    "{{result}}",
                ),
            )
        )
    )


def operator_row(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        builder.with_row(dashboard.Row("Operator"))
        .with_panel(
            graph(
                "Reconciles",
                "Reconcile passes per second by outcome (ok, invalid, conflict, error).",
                "ops",
                query(
                    f"sum by (outcome) (rate(shardrec_operator_reconciles_total{{{OPERATOR}}}[{RATE}]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            quantiles(
                "shardrec_operator_reconcile_duration_seconds",
                "trigger",
                "Reconcile duration",
                "Time one reconcile pass takes, by what triggered it.",
                OPERATOR,
            )
        )
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
        .variables(list(variables()))
    )
    for row in (slo_row, router_row, shards_row, rollout_row, operator_row):
        builder = row(builder)
    encoded: dict[str, object] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
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
