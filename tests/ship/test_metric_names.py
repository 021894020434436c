"""Every metric the alerts and the dashboard query is one the code registers (or a recording rule).

The registered names come from importing the router, shard-server and operator metric modules and
collecting their registries, so renaming a metric in code without updating its queries fails here.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from tests.ship.metric_names import METRIC_MODULES, PROMETHEUS_SERIES, promql_metric_names, registered_names
from tests.ship.rules import load_rules, recorded_names
from tests.ship.tools import MONITORING

DASHBOARD = MONITORING / "dashboards" / "shardrec.json"
# Which component must register a metric, by name prefix.
OWNERS = {
    "shardrec_router_": "router",
    "shardrec_shard_": "shard",
    "shardrec_operator_": "operator",
}


def dashboard_queries() -> dict[str, str]:
    """Every PromQL text of the dashboard (panel targets and templating queries), by where it is."""
    doc = json.loads(DASHBOARD.read_text())
    queries = {}
    for panel in doc["panels"]:
        for target in panel.get("targets") or []:
            queries[f"panel {panel['title']!r} {target.get('refId')}"] = target["expr"]
    for variable in doc["templating"]["list"]:
        if variable.get("type") == "query":
            queries[f"variable {variable['name']}"] = variable["query"]
    return queries


def rule_queries() -> dict[str, str]:
    return {f"rule {r.get('alert') or r.get('record')}": r["expr"] for r in load_rules()}


def used_names() -> dict[str, set[str]]:
    """metric name -> where it is queried."""
    used: dict[str, set[str]] = {}
    for where, expr in {**dashboard_queries(), **rule_queries()}.items():
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def owner_of(name: str) -> str | None:
    return next((owner for prefix, owner in OWNERS.items() if name.startswith(prefix)), None)


def test_every_queried_name_belongs_to_a_component_or_a_rule() -> None:
    known = recorded_names() | PROMETHEUS_SERIES
    strays = {n: sorted(w) for n, w in used_names().items() if n not in known and owner_of(n) is None}
    assert not strays, f"queried names that no component owns and no rule records: {strays}"


@pytest.mark.parametrize("component", sorted(METRIC_MODULES))
def test_queried_metrics_are_registered_by_the_code(component: str) -> None:
    module = METRIC_MODULES[component]
    if (
        importlib.util.find_spec(module.rpartition(".")[0]) is None
        or importlib.util.find_spec(module) is None
    ):
        pytest.skip(f"{module} does not exist yet: the {component} metrics cannot be checked")
    registered = registered_names(module)
    assert registered, f"{module} registers no metric"
    wanted = {n: w for n, w in used_names().items() if owner_of(n) == component}
    unknown = {n: sorted(w) for n, w in wanted.items() if n not in registered}
    print(f"{component}: {len(wanted)} queried names, all registered by {module}" if not unknown else "")
    assert not unknown, (
        f"queried but not registered by {module}:\n"
        + "\n".join(f"  {n}  (used by {', '.join(w)})" for n, w in sorted(unknown.items()))
        + f"\nregistered: {sorted(registered)}"
    )


def test_dashboard_queries_something_of_every_component() -> None:
    owners = {owner_of(n) for n in promql_metric_names(" ".join(dashboard_queries().values()))}
    assert {"router", "shard", "operator"} <= owners


@pytest.mark.parametrize("component", sorted(METRIC_MODULES))
def test_every_registered_metric_is_documented(component: str) -> None:
    module = METRIC_MODULES[component]
    if (
        importlib.util.find_spec(module.rpartition(".")[0]) is None
        or importlib.util.find_spec(module) is None
    ):
        pytest.skip(f"{module} does not exist yet")
    operations = (MONITORING.parent / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(shardrec_\w+)` \|", operations, flags=re.MULTILINE))
    # One name per family, as documented: counters with _total, others as declared.
    families = {
        name for name in registered_names(module)
        if not name.endswith(("_created", "_bucket", "_count", "_sum"))
    } | {
        name.removesuffix("_bucket") for name in registered_names(module) if name.endswith("_bucket")
    }  # fmt: skip
    missing = sorted(families - documented)
    assert not missing, f"docs/operations.md does not document: {missing}"
