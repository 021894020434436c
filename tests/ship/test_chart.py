"""The Helm chart, checked by helm itself: lint, template, schema errors, and what it renders."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.ship.rules import ALERTS_FILE
from tests.ship.tools import CHART, ROOT, find_tool, helm_template, of_kind, run

MONITORING_API = ("monitoring.coreos.com/v1",)


def test_helm_lint_strict_in_both_rbac_modes() -> None:
    helm = find_tool("helm")
    run([helm, "lint", "--strict", CHART])
    run([helm, "lint", "--strict", CHART, "--set", "watch.namespaces={team-a,team-b}"])


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("slo.availability.objective=0.999", "/slo/availability/objective"),  # a string
        ("slo.latency.thresholdSeconds=0.3", "/slo/latency/thresholdSeconds"),
        ("watch.namespaces={Team_A}", "/watch/namespaces/0"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("monitoring.serviceMonitor.intervall=30s", "intervall"),
        ("image.digest=sha256:abc", "/image/digest"),
    ],
)
def test_bad_values_fail_at_install_time_naming_the_field(flag: str, message: str) -> None:
    proc = run([find_tool("helm"), "template", "rel", CHART, "--set", flag], check=False)
    assert proc.returncode != 0, f"--set {flag} was accepted"
    assert message in proc.stderr, proc.stderr


def test_crd_in_the_chart_is_the_generated_one() -> None:
    chart_crd = CHART / "crds" / "recommenderclusters.shardrec.io.yaml"
    assert chart_crd.read_bytes() == (ROOT / "crds" / "recommenderclusters.shardrec.io.yaml").read_bytes(), (
        "charts/shardrec-operator/crds/ is stale: run `make crds`"
    )


def test_operator_runs_two_replicas_with_leader_election_by_default() -> None:
    (deployment,) = of_kind(helm_template(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    rolling = {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": rolling}
    (container,) = spec["template"]["spec"]["containers"]
    assert "--leader-election" in container["args"]
    assert "--leader-election-id=rel-shardrec-operator" in container["args"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_without_leader_election_one_replica_and_more_is_refused() -> None:
    proc = run(
        [find_tool("helm"), "template", "rel", CHART, "--set", "leaderElection.enabled=false"], check=False
    )
    assert proc.returncode != 0 and "needs leaderElection.enabled" in proc.stderr


def test_operator_deployment_is_single_recreate_live_and_restricted() -> None:
    docs = helm_template("--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    (deployment,) = of_kind(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert not of_kind(docs, "Role")  # no Lease permissions without an election
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert not any(a.startswith("--namespace") for a in container["args"]), "cluster-wide by default"


def test_namespaced_mode_passes_the_namespaces_to_the_operator() -> None:
    (deployment,) = of_kind(helm_template("--set", "watch.namespaces={team-a,team-b}"), "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_monitoring_objects_need_the_prometheus_operator_api_and_the_switch() -> None:
    kinds = {"ServiceMonitor", "PrometheusRule"}
    without_api = {d["kind"] for d in helm_template()}
    assert not kinds & without_api
    assert not [d for d in of_kind(helm_template(), "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    with_api = helm_template(api_versions=MONITORING_API)
    assert kinds <= {d["kind"] for d in with_api}
    assert [d for d in of_kind(with_api, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    switched_off = helm_template("--set", "monitoring.enabled=false", api_versions=MONITORING_API)
    assert not kinds & {d["kind"] for d in switched_off}


def test_dashboard_configmap_holds_the_generated_dashboard() -> None:
    docs = helm_template(api_versions=MONITORING_API)
    (configmap,) = [d for d in of_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(configmap["data"]["shardrec.json"])
    assert shipped == json.loads((ROOT / "monitoring" / "dashboards" / "shardrec.json").read_text())


def _rule_groups(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = of_kind(docs, "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def test_prometheus_rule_with_default_values_is_the_tested_rules_file() -> None:
    rendered = _rule_groups(helm_template(api_versions=MONITORING_API))
    source = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    assert rendered == source


def test_prometheus_rule_takes_slos_thresholds_and_runbooks_from_values(tmp_path: Any) -> None:
    docs = helm_template(
        # --set turns 0.995 into a string; --set-json (or a values file) keeps numbers numbers.
        "--set-json", "slo.availability.objective=0.995",
        "--set", "slo.latency.thresholdSeconds=0.1",
        "--set-json", "alerts.hedgeRatio=0.08",
        "--set", "monitoring.runbookBaseUrl=https://wiki.example.com/shardrec",
        api_versions=MONITORING_API,
    )  # fmt: skip
    groups = _rule_groups(docs)
    config = {
        r["record"]: r["expr"] for g in groups if g["name"] == "shardrec-slo-config" for r in g["rules"]
    }
    assert config["shardrec:slo:availability_objective"] == "vector(0.995)"
    assert config["shardrec:threshold:hedge_ratio"] == "vector(0.08)"
    exprs = "\n".join(r["expr"] for g in groups for r in g["rules"])
    assert 'le="0.1"' in exprs and 'le="0.25"' not in exprs
    urls = [r["annotations"]["runbook_url"] for g in groups for r in g["rules"] if "alert" in r]
    assert urls and all(u.startswith("https://wiki.example.com/shardrec#shardrec") for u in urls)
    # What ships must still be a valid rules file for Prometheus.
    rendered = tmp_path / "rendered-rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": groups}))
    run([find_tool("promtool"), "check", "rules", rendered])


def test_api_keys_are_required_by_default_with_an_explicit_opt_out() -> None:
    docs = helm_template()
    (policy,) = of_kind(docs, "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert "apiKeysSecretRef" in variables["hasKeys"]
    assert "variables.hasKeys" in policy["spec"]["validations"][0]["expression"]
    assert of_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert not of_kind(helm_template("--set", "security.requireApiKeys=false"), "ValidatingAdmissionPolicy")
