"""Scenario 11: `kubectl scale recc` and a HorizontalPodAutoscaler through the scale subresource;
pod templates reaching the pods; a conflicting template rejected with a condition that names it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardrec.api import v1alpha1 as api
from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHARD_CPU = {"shard": {"requests": {"cpu": "100m"}}}


def _replicas_per_shard(scenario: Any, layout: str) -> list[int]:
    return sorted(
        int(s["spec"]["replicas"])
        for s in scenario.children(kinds.STATEFUL_SET, f"shardrec.io/layout={layout}")
    )


def test_kubectl_scale_and_an_hpa_drive_replicas_per_shard(scenario: Any, kube: Any, harness: Any) -> None:
    ns, name = scenario.namespace, scenario.name
    seen: dict[str, Any] = {}

    def ready_with_scale_status() -> None:
        status = scenario.wait_ready("v1")
        seen["layout"] = status["activeLayout"]
        status = scenario.wait_status(
            "replicasPerShard in the status", lambda s: s.get("replicasPerShard") == 2
        )
        selected = kube.list(kinds.POD, ns, status["selector"])
        assert len(selected) == 4, (
            f"selector {status['selector']!r} picks {len(selected)} pods, not 2 shards x 2"
        )
        assert {pod["metadata"]["labels"]["shardrec.io/layout"] for pod in selected} == {seen["layout"]}

    def kubectl_scale() -> None:
        kube.kubectl("-n", ns, "scale", "recc", name, "--replicas=3")
        assert scenario.body()["spec"]["replicasPerShard"] == 3
        scenario.wait_status(
            "3 ready replicas per shard",
            lambda s: s.get("replicasPerShard") == 3 and s.get("readyReplicas") == 6,
        )
        assert _replicas_per_shard(scenario, seen["layout"]) == [3, 3]
        raw = kube.kubectl(
            "get", "--raw", f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{ns}/{api.PLURAL}/{name}/scale"
        )
        scale = json.loads(raw.stdout)
        assert (
            scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
        )
        assert scale["status"]["selector"] == scenario.status()["selector"]

    def hpa_reads_and_sets_the_scale() -> None:
        hpa = copy.deepcopy(yaml.safe_load((EXAMPLES / "shard-autoscaling.yaml").read_text(encoding="utf-8")))
        hpa["metadata"] = {"name": f"{name}-shards", "namespace": ns}
        hpa["spec"]["scaleTargetRef"]["name"] = name
        hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"] = 4, 5
        text = yaml.safe_dump(hpa)
        dry = kube.kubectl("apply", "--dry-run=server", "-f", "-", stdin=text)
        assert "(server dry run)" in dry.stdout
        kube.kubectl("apply", "-f", "-", stdin=text)

        def able_to_scale() -> Any:
            found = kube.get(kinds.HPA.path(ns, f"{name}-shards")) or {}
            conditions = {c["type"]: c for c in found.get("status", {}).get("conditions", [])}
            return conditions.get("AbleToScale", {}).get("status") == "True" and found

        # The HPA controller reads the scale subresource, and raises replicas to minReplicas (no
        # metrics pipeline here, so it cannot judge CPU: minReplicas is all it can enforce).
        harness.wait_for("the HPA to read the scale subresource", able_to_scale, timeout=90)
        scenario.wait_status(
            "the HPA's minimum of 4 replicas per shard",
            lambda s: s.get("replicasPerShard") == 4 and s.get("readyReplicas") == 8,
        )
        assert scenario.body()["spec"]["replicasPerShard"] == 4
        kube.kubectl("-n", ns, "delete", "hpa", f"{name}-shards")

    scenario.create(resources=SHARD_CPU)
    scenario.run(
        [
            (
                "Ready; status.replicasPerShard and status.selector for the scale subresource",
                ready_with_scale_status,
            ),
            ("kubectl scale recc --replicas=3", kubectl_scale),
            ("the HPA example, aimed at this cluster, scales it", hpa_reads_and_sets_the_scale),
        ]
    )


TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "recs"}, "annotations": {"example.com/owner": "recs"}},
    "tolerations": [{"key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "env": [{"name": "MALLOC_ARENA_MAX", "value": "2"}],
    "volumes": [{"name": "extra", "emptyDir": {"sizeLimit": "16Mi"}}],
    "volumeMounts": [{"name": "extra", "mountPath": "/extra"}],
}


def test_pod_templates_reach_the_pods_and_a_conflict_is_rejected(scenario: Any, kube: Any) -> None:
    ns = scenario.namespace

    def pods_carry_the_templates() -> None:
        scenario.wait_ready("v1")
        shard_pods = scenario.children(kinds.POD, "app.kubernetes.io/component=shard")
        router_pods = scenario.children(kinds.POD, "app.kubernetes.io/component=router")
        assert shard_pods and router_pods
        for pod in shard_pods + router_pods:
            assert pod["metadata"]["labels"]["team"] == "recs"
            assert pod["metadata"]["annotations"]["example.com/owner"] == "recs"
            container = pod["spec"]["containers"][0]
            assert {"name": "MALLOC_ARENA_MAX", "value": "2"} in container["env"]
            assert {"name": "extra", "mountPath": "/extra"} in [
                {k: m[k] for k in ("name", "mountPath")} for m in container["volumeMounts"]
            ]
            assert pod["spec"]["terminationGracePeriodSeconds"] > 1 + 10
        shard = shard_pods[0]["spec"]
        assert shard["containers"][0]["lifecycle"]["preStop"]["httpGet"]["path"] == "/prestop"
        assert [c["whenUnsatisfiable"] for c in shard["topologySpreadConstraints"]] == ["DoNotSchedule"]
        router = router_pods[0]["spec"]
        assert router["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": 1}}
        pdbs = scenario.names(kinds.PDB, "app.kubernetes.io/component=router")
        assert pdbs == [f"{scenario.name}-router"], pdbs

    def a_conflict_is_rejected_naming_the_field() -> None:
        clash = {**TEMPLATE, "volumes": [{"name": "tmp", "emptyDir": {}}], "volumeMounts": []}
        scenario.patch_spec({"podTemplates": {"router": clash}})
        status = scenario.wait_status(
            "Ready=False InvalidSpec",
            lambda s: any(c.get("reason") == "InvalidSpec" for c in s.get("conditions", [])),
        )
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert "spec.podTemplates.router.volumes[tmp]" in ready["message"], ready
        deployment = kube.get(kinds.DEPLOYMENT.path(ns, f"{scenario.name}-router"))
        assert deployment is not None
        volumes = [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]]
        assert volumes.count("tmp") == 1, "nothing of the rejected spec was applied"

    scenario.create(podTemplates={"shard": {**TEMPLATE, "zoneSpread": "Hard"}, "router": TEMPLATE})
    scenario.run(
        [
            (
                "labels, annotations, env, volumes and placement reach shard and router pods",
                pods_carry_the_templates,
            ),
            (
                "a template that takes an operator volume: InvalidSpec naming the field",
                a_conflict_is_rejected_naming_the_field,
            ),
        ]
    )
