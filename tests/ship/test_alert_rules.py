"""The Prometheus rules: valid (promtool check), behaving as specified (promtool unit tests), every
alert tested both ways, documented in a runbook, and shipped unchanged in the Helm chart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ship.rules import ALERTS_FILE, UNIT_TESTS, alerts, load_rules, unit_test_cases
from tests.ship.tools import CHART, ROOT, find_tool, run

RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/shardrec/shardrec/blob/main/docs/runbooks.md#"
ALERT_NAMES = [a["alert"] for a in alerts()]


def test_promtool_check_rules() -> None:
    proc = run([find_tool("promtool"), "check", "rules", ALERTS_FILE])
    assert f"SUCCESS: {len(load_rules())} rules found" in proc.stdout, proc.stdout


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "monitoring/tests/ has no promtool unit tests"
    proc = run([find_tool("promtool"), "test", "rules", *UNIT_TESTS])
    assert proc.stdout.count("SUCCESS") == len(UNIT_TESTS), proc.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A unit test expecting the wrong outcome must fail: the suite really evaluates the rules."""
    promtool = find_tool("promtool")
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(
        f"rule_files: [{ALERTS_FILE}]\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    input_series:\n"
        '      - series: \'shardrec_router_live_replicas{namespace="a", cluster="b", shard="0"}\'\n'
        "        values: '0x10'\n"
        "    alert_rule_test:\n"
        "      - eval_time: 5m\n"
        "        alertname: ShardrecShardNoReadyReplica\n"
        "        exp_alerts: []\n"
    )
    proc = run([promtool, "test", "rules", broken], check=False)
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_is_tested_firing_and_quiet(name: str) -> None:
    cases = [c for c in unit_test_cases() if c["alertname"] == name]
    fires = [c for c in cases if c.get("exp_alerts")]
    quiet = [c for c in cases if not c.get("exp_alerts")]
    assert fires, f"{name}: no promtool unit test where it fires (monitoring/tests/)"
    assert quiet, f"{name}: no promtool unit test where it stays quiet (monitoring/tests/)"


def _github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub derives from headings: lower-cased, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match[1].lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_has_a_runbook_section(name: str) -> None:
    alert = next(a for a in alerts() if a["alert"] == name)
    annotations = alert.get("annotations", {})
    assert {"summary", "description", "runbook_url"} <= annotations.keys(), f"{name}: {annotations}"
    assert alert.get("labels", {}).get("severity") in ("critical", "warning"), name
    url = annotations["runbook_url"]
    assert url == RUNBOOK_BASE + name.lower(), f"{name}: runbook_url {url}"
    assert name.lower() in _github_anchors(RUNBOOKS.read_text()), f"docs/runbooks.md has no '## {name}'"


def test_runbooks_document_no_alert_that_does_not_exist() -> None:
    documented = set(re.findall(r"^## (Shardrec\w+)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE))
    assert documented == set(ALERT_NAMES)


def test_chart_ships_the_tested_rules_unchanged() -> None:
    copy = CHART / "files" / "alerts.yaml"
    assert copy.read_bytes() == ALERTS_FILE.read_bytes(), (
        "charts/shardrec-operator/files/alerts.yaml differs from monitoring/alerts.yaml: "
        "run `make monitoring` (or cp monitoring/alerts.yaml charts/shardrec-operator/files/)"
    )
