"""The PromQL name extractor the dashboard and alert checks rely on."""

from __future__ import annotations

import pytest

from tests.ship.metric_names import promql_metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.99, sum by (le, route) "
            '(rate(a_seconds_bucket{namespace=~"$ns"}[$__rate_interval])))',
            {"a_seconds_bucket"},
        ),
        (
            "shardrec:x:ratio_rate1h > on() group_left() (14.4 * (1 - shardrec:slo:objective))",
            {"shardrec:x:ratio_rate1h", "shardrec:slo:objective"},
        ),
        ('max by (job) (up{job="op"}) == 0 or absent(up{job="op"})', {"up"}),
        ('label_values(req_total{namespace=~"$namespace"}, cluster)', {"req_total"}),
        (
            "time() - start_seconds > timeout_seconds and start_seconds > 0",
            {"start_seconds", "timeout_seconds"},
        ),
        (
            "group by (namespace, version) (a_info == 1)"
            " unless on (namespace, version) group by (version) (b)",
            {"a_info", "b"},
        ),
        ('sum(rate(x_total{code=~"5..", route="by"}[5m] offset 1h)) / 1e3', {"x_total"}),
    ],
)
def test_extracts_exactly_the_selected_series(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names
