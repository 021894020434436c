"""Read monitoring/alerts.yaml and the promtool unit tests (shared by the rule and metric checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.ship.tools import MONITORING

ALERTS_FILE = MONITORING / "alerts.yaml"
UNIT_TESTS = sorted((MONITORING / "tests").glob("*.yaml"))


def load_rules(path: Path = ALERTS_FILE) -> list[dict[str, Any]]:
    """Every rule of every group, each with its group name under `_group`."""
    doc = yaml.safe_load(path.read_text())
    return [{**rule, "_group": group["name"]} for group in doc["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "alert" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in load_rules() if "record" in r}


def unit_test_cases() -> list[dict[str, Any]]:
    """Every alert_rule_test entry of every promtool unit-test file."""
    cases: list[dict[str, Any]] = []
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases
