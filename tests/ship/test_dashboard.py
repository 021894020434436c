"""The Grafana dashboard: generated from code, parses, and every panel is well formed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

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


def test_dashboard_parses_and_has_the_panels_sres_need() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "shardrec-overview"
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert {p["title"] for p in panels} >= REQUIRED_PANELS
    for panel in panels:
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs) and all(refs), f"{panel['title']}: refIds {refs}"
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "namespace", "cluster"} <= variables


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
