"""The Grafana dashboard: generated from code, loads as Grafana JSON, and every panel is well formed.

No Grafana runs here: "loads" is checked by Grafana's layout rules (unique panel ids, a 24-column grid,
no overlapping panels) and by decoding the file with grafana-foundation-sdk's typed models, which drop
any field they do not know.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from itertools import combinations
from typing import Any

import pytest

from tests.ship.tools import CHART, ROOT

DASHBOARD = ROOT / "monitoring" / "dashboards" / "shardrec.json"
REQUIRED_PANELS = {
    "Request rate by route",
    "Error ratio by route",
    "Latency by route",
    "Shard latency (router view)",
    "Partial answers",
    "Hedges and retries by shard",
    "Replicas ready per shard",
    "Active version per router",
    "Rollout phase",
    "Reconciles",
    "Availability budget burn",
    "Latency budget burn",
}
GRID_COLUMNS = 24
# The dashboard schema version grafana-foundation-sdk models; Grafana migrates older ones on load.
MIN_SCHEMA_VERSION = 36
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_parses_and_has_the_panels_sres_need() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "shardrec-overview"
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert {p["title"] for p in panels} >= REQUIRED_PANELS
    for panel in panels:
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs) and all(refs), f"{panel['title']}: refIds {refs}"
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "namespace", "cluster"} <= variables


def test_every_query_reads_the_data_source_the_viewer_picks() -> None:
    """No uid of one Grafana instance: panels, their queries and the query variables use ${datasource}."""
    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    for panel in doc["panels"]:
        for target in panel.get("targets") or []:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]


def layout_problems(panels: list[dict[str, Any]]) -> list[str]:
    """What Grafana would reject or silently rearrange: missing or repeated ids, panels outside the
    24-column grid, panels on top of each other."""
    problems = []
    ids = [p.get("id") for p in panels]
    if not all(isinstance(i, int) and i > 0 for i in ids) or len(set(ids)) != len(ids):
        problems.append(f"panel ids must be distinct positive integers: {ids}")
    for p in panels:
        g = p["gridPos"]
        if not (
            g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1 and g["x"] + g["w"] <= GRID_COLUMNS
        ):
            problems.append(f"{p['title']!r} is outside the grid: {g}")
    for a, b in combinations(panels, 2):
        ga, gb = a["gridPos"], b["gridPos"]
        if (
            ga["x"] < gb["x"] + gb["w"]
            and gb["x"] < ga["x"] + ga["w"]
            and ga["y"] < gb["y"] + gb["h"]
            and gb["y"] < ga["y"] + ga["h"]
        ):
            problems.append(f"{a['title']!r} {ga} overlaps {b['title']!r} {gb}")
    return problems


def test_dashboard_layout_is_one_grafana_accepts() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert all(not p.get("panels") for p in doc["panels"] if p["type"] == "row"), "collapsed rows hide panels"
    assert layout_problems(doc["panels"]) == []


@pytest.mark.parametrize(
    ("grid", "ids", "problem"),
    [
        ([(0, 0, 12, 8), (12, 0, 12, 8)], [1, 1], "distinct"),
        ([(0, 0, 12, 8), (18, 0, 12, 8)], [1, 2], "outside"),
        ([(0, 0, 12, 8), (6, 4, 12, 8)], [1, 2], "overlaps"),
        ([(0, 0, 12, 8), (12, 0, 12, 8)], [1, None], "distinct"),
    ],
)
def test_layout_check_finds_what_grafana_would_rearrange(
    grid: list[tuple[int, int, int, int]], ids: list[int | None], problem: str
) -> None:
    panels = [
        {"id": i, "title": f"p{n}", "gridPos": {"x": x, "y": y, "w": w, "h": h}}
        for n, (i, (x, y, w, h)) in enumerate(zip(ids, grid, strict=True))
    ]
    assert layout_problems(panels[:1]) == []
    assert any(problem in p for p in layout_problems(panels))


def contained(small: Any, big: Any) -> bool:
    """Whether every field of `small` is in `big` with the same value (`big` may add defaults)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contained(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(contained, small, big))
    return bool(small == big)


def test_the_sdk_reads_every_field_of_the_dashboard_back() -> None:
    """Decoding with the SDK's typed models keeps every field: nothing is misspelled or out of the
    schema, each panel's options are its plugin's, and each query is a Prometheus query."""
    pytest.importorskip(
        "grafana_foundation_sdk", reason="grafana-foundation-sdk is not installed (dev extra)"
    )
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import prometheus, stat, statetimeline, timeseries
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel

    register_default_plugins()
    doc = json.loads(DASHBOARD.read_text())
    model = Dashboard.from_json(doc)
    options = {
        "timeseries": timeseries.Options,
        "stat": stat.Options,
        "state-timeline": statetimeline.Options,
    }
    for panel in model.panels or []:
        if isinstance(panel, Panel):
            assert isinstance(panel.options, options[panel.type_val]), panel.title
            assert all(isinstance(t, prometheus.Dataquery) for t in panel.targets or []), panel.title
    assert contained(doc, json.loads(json.dumps(model, cls=JSONEncoder)))


def test_committed_dashboard_is_what_the_generator_writes() -> None:
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        pytest.skip("grafana-foundation-sdk is not installed (dev extra)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "monitoring" / "dashboard.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (CHART / "files" / "dashboards" / "shardrec.json").read_bytes() == DASHBOARD.read_bytes()
