"""Metric names: the ones a PromQL expression reads, and the ones the code registers.

Both sides are computed, not listed by hand, so the dashboard and alert checks follow the code.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from types import ModuleType

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

# The modules that define the product's metrics, per component.
METRIC_MODULES = {
    "router": "shardrec.serving.router.metrics",
    "shard": "shardrec.serving.shard.metrics",
    "operator": "shardrec_operator.metrics",
}
# Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"^label_values\((?P<series>.+),\s*\w+\)$")


def promql_metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (functions, keywords, labels and numbers excluded)."""
    match = _LABEL_VALUES.match(expr.strip())  # Grafana's templating function, not PromQL
    if match:
        expr = match["series"]
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("1", text)
    text = _BRACES.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for ident, call in _IDENT.findall(text):
        if call or ident in _KEYWORDS or ident in ("inf", "nan", "Inf", "NaN"):
            continue
        names.add(ident)
    return names


def _exposed(family_name: str, family_type: str) -> set[str]:
    """Sample names a metric family appears under on /metrics (what PromQL selects)."""
    if family_type == "counter":
        return {f"{family_name}_total", f"{family_name}_created"}
    if family_type == "histogram":
        return {f"{family_name}_{suffix}" for suffix in ("bucket", "count", "sum", "created")}
    if family_type == "summary":
        return {family_name, f"{family_name}_count", f"{family_name}_sum", f"{family_name}_created"}
    if family_type == "info":
        return {f"{family_name}_info"}
    return {family_name}


def _registries_of(module: ModuleType) -> Iterable[CollectorRegistry]:
    """Registries a metrics module fills: module-level ones, and the `.registry` of any class in it
    that builds its metrics in its constructor without arguments (one registry per app)."""
    for value in vars(module).values():
        if isinstance(value, CollectorRegistry):
            yield value
        elif isinstance(value, type) and value.__module__ == module.__name__:
            try:
                instance = value()
            except TypeError:
                continue
            registry = getattr(instance, "registry", None)
            if isinstance(registry, CollectorRegistry):
                yield registry


def registered_names(module_name: str) -> set[str]:
    """Every sample name the module's metrics expose."""
    module = importlib.import_module(module_name)
    names: set[str] = set()
    for registry in _registries_of(module):
        for family in registry.collect():
            names |= _exposed(family.name, family.type)
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= _exposed(family.name, family.type)
    return names
